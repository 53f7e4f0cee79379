"""The audit log: an append-only record of every cross-agent access decision and every policy change.

Entries live in the Redis stream ``aios:audit`` (XADD). The kernel never edits or deletes an entry; the only
thing that removes one is the approximate length cap (:data:`MAX_ENTRIES`), which drops the oldest, so the log
cannot grow without bound on a long-lived kernel. Each entry is a flat record of strings:

``ts``          Unix time of the decision
``actor``       the agent that asked (``operator:<user>`` for a policy change made with the CLI)
``owner``       the agent whose data it was
``resource``    ``memory`` or ``files``
``op``          the syscall op (``get``, ``put``, ``read``, ...) or the change (``grant``, ``revoke``, ``group-add``...)
``target``      the memory key or file path; for a change, the grantee or group
``decision``    ``allow``, ``deny``, or ``change`` for a policy change
``reason``      why, in words (which grant or group allowed it; which grant was missing)
``syscall_id``  the syscall that asked, to match against worker logs and replies

Accesses of an agent to its own data are not recorded: they are not a decision (always allowed, see
:mod:`aios.policy.access`) and recording them would put a Redis write on every memory and file syscall.
"""

from __future__ import annotations

import time
from typing import Any, cast

import redis

from aios.state import keys

MAX_ENTRIES = 1_000_000
"""Approximate cap on the stream (``MAXLEN ~``): about 200 MB of Redis at the most; the oldest go first."""
DECISIONS = ("allow", "deny", "change")
_BATCH = 500  # entries per XREVRANGE when filtering: one round trip for most queries, bounded memory for all
_LAST_SEQ = 2**64 - 1  # the largest sequence number of a stream id


class AuditLog:
    """Append to and query ``aios:audit``. ``client`` is the kernel's state Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def record(self, *, actor: str, owner: str, resource: str, op: str, decision: str, reason: str,
               target: str = "", syscall_id: str = "", pipe: Any = None) -> None:
        """Append one entry. With ``pipe`` (a redis pipeline in MULTI) it commits with the change it records."""
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
        entry: dict[Any, Any] = {"ts": repr(time.time()), "actor": actor, "owner": owner, "resource": resource, "op": op,
                 "target": target, "decision": decision, "reason": reason, "syscall_id": syscall_id}
        (pipe if pipe is not None else self.redis).xadd(keys.AUDIT, entry, maxlen=MAX_ENTRIES, approximate=True)

    def query(self, agent: str | None = None, decision: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Entries newest first; ``agent`` matches the actor, the owner or the target (a grantee or member)."""
        if decision is not None and decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
        if limit <= 0:
            return []
        found: list[dict[str, Any]] = []
        upper: str | None = "+"
        while upper is not None and len(found) < limit:
            batch = cast(list[tuple[bytes, dict[bytes, bytes]]],
                         self.redis.xrevrange(keys.AUDIT, max=upper, min="-", count=_BATCH))
            for stream_id, fields in batch:
                entry = _decode(stream_id, fields)
                if decision is not None and entry["decision"] != decision:
                    continue
                if agent is not None and agent not in (entry["actor"], entry["owner"], entry["target"]):
                    continue
                found.append(entry)
                if len(found) == limit:
                    break
            if len(batch) < _BATCH:
                break
            upper = _before(batch[-1][0])
        return found

    def __len__(self) -> int:
        return int(self.redis.xlen(keys.AUDIT))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(stream_id: bytes | str, fields: dict[Any, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {_text(k): _text(v) for k, v in fields.items()}
    entry["id"] = _text(stream_id)
    entry["ts"] = float(entry.get("ts") or 0)
    for name in ("actor", "owner", "resource", "op", "target", "decision", "reason", "syscall_id"):
        entry.setdefault(name, "")
    return entry


def _before(stream_id: bytes | str) -> str | None:
    """The id just below ``stream_id``: XREVRANGE bounds are inclusive (the ``(`` prefix needs Redis 6.2)."""
    ms, seq = (int(p) for p in _text(stream_id).split("-"))
    if seq > 0:
        return f"{ms}-{seq - 1}"
    return f"{ms - 1}-{_LAST_SEQ}" if ms > 0 else None
