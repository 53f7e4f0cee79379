"""The audit log: an append-only, hash-chained record of every cross-agent access decision and every policy change.

Entries live in the Redis stream ``aios:audit``. The kernel never edits or deletes an entry; the only thing that
removes one is the approximate length cap (:data:`MAX_ENTRIES`), which drops the oldest, so the log cannot grow
without bound on a long-lived kernel. Each entry is a flat record of strings:

``ts``          Unix time of the decision
``actor``       the agent that asked (``operator:<user>`` for a policy change made with the CLI)
``owner``       the agent whose data it was
``resource``    ``memory`` or ``files``
``op``          the syscall op (``get``, ``put``, ``read``, ...) or the change (``grant``, ``revoke``, ``group-add``...)
``target``      the memory key or file path; for a change, the grantee or group
``decision``    ``allow``, ``deny``, or ``change`` for a policy change
``reason``      why, in words (which grant or group allowed it; which grant was missing)
``syscall_id``  the syscall that asked, to match against worker logs and replies

and its link in the **hash chain**: ``n`` (its position, from 1), ``prev`` (the previous entry's hash; 64 zeros
for the first) and ``hash`` = SHA-256 of ``prev`` followed by netstrings (``<bytes>:<text>,``) of ``n``, its
value, and each field above with its value, in that order (:func:`chain_hash`). One Lua script
(``audit_append.lua``) appends an entry and moves the chain's state (``aios:audit:chain``: ``n``, ``head`` and
``trimmed``, how many entries the cap removed), so entries are chained in the order Redis applied them, also
from inside a MULTI. :meth:`AuditLog.verify` (``aios audit verify``) walks the log and reports every break: an
entry deleted (a gap in ``n``, or fewer entries at the end than the chain state counts), altered (its hash, or
the next link, does not match), or added past the kernel's appends. Trimming breaks nothing: the first entry kept
must be at position ``trimmed + 1`` and its ``prev`` is taken as the anchor.

Without a secret the chain is evidence against clumsy tampering, not proof: whoever can write the kernel's Redis
can also rewrite the chain state and recompute the links. Keep agents out of it; an operator who copies the
``head`` that ``aios audit verify`` prints elsewhere can later check that the log still extends it.

Accesses of an agent to its own data are not recorded: they are not a decision (always allowed, see
:mod:`aios.policy.access`) and recording them would put a Redis write on every memory and file syscall.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from aios.state import keys, scripts

MAX_ENTRIES = 1_000_000
"""Approximate cap on the stream (``MAXLEN ~``): about 300 MB of Redis at the most; the oldest go first."""
DECISIONS = ("allow", "deny", "change")
CHAINED = ("ts", "actor", "owner", "resource", "op", "target", "decision", "reason", "syscall_id")
"""The fields of an entry, in the order its hash covers them (after its position ``n``)."""
GENESIS = "0" * 64
"""The ``prev`` of the first entry ever written."""
MAX_BREAKS = 100
"""Verification stops listing breaks after this many (a log rewritten wholesale would list every entry)."""
_BATCH = 500  # entries per XREVRANGE when filtering: one round trip for most queries, bounded memory for all
_LAST_SEQ = 2**64 - 1  # the largest sequence number of a stream id


def chain_hash(prev: str, n: int, fields: Mapping[str, str]) -> str:
    """The hash of the entry at position ``n`` with ``fields``, following the entry whose hash is ``prev``."""
    parts = [("n", str(n)), *((name, fields.get(name, "")) for name in CHAINED)]
    body = b"".join(_netstring(name) + _netstring(value) for name, value in parts)
    return hashlib.sha256(prev.encode() + body).hexdigest()


def _netstring(text: str) -> bytes:
    data = text.encode()
    return b"%d:%s," % (len(data), data)


@dataclass(frozen=True)
class Break:
    """Where the chain does not hold: entries ``first``..``last`` (positions) are missing, altered or forged."""

    kind: str
    """``missing`` (deleted, not trimmed), ``altered`` (content or link changed) or ``forged`` (not the kernel's)."""
    entry: str
    """The stream id where it shows ("" for the end of the log)."""
    first: int
    last: int
    detail: str


@dataclass(frozen=True)
class Verification:
    checked: int
    """Chained entries read."""
    first: int
    """The position of the first entry kept (1 unless the cap trimmed the log)."""
    anchor: str
    """Its ``prev``: what the kept log hangs from."""
    n: int
    """The kernel's count of entries ever appended (the chain state)."""
    head: str
    """The hash of the last entry the kernel appended (the chain state)."""
    unchained: int
    """Entries at the start written before the log was chained (an older kernel)."""
    breaks: list[Break] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaks


class AuditLog:
    """Append to, query and verify ``aios:audit``. ``client`` is the kernel's state Redis."""

    def __init__(self, client: redis.Redis, *, max_entries: int = MAX_ENTRIES) -> None:
        self.redis = client
        self.max_entries = max_entries
        self._append = scripts.register(client, "audit_append")

    def record(self, *, actor: str, owner: str, resource: str, op: str, decision: str, reason: str,
               target: str = "", syscall_id: str = "", pipe: Any = None) -> None:
        """Append one entry. With ``pipe`` (a redis pipeline in MULTI) it commits with the change it records."""
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
        entry = {"ts": repr(time.time()), "actor": actor, "owner": owner, "resource": resource, "op": op,
                 "target": target, "decision": decision, "reason": reason, "syscall_id": syscall_id}
        args: list[Any] = [self.max_entries]
        for name in CHAINED:
            args += [name, entry[name]]
        self._append(keys=[keys.AUDIT, keys.AUDIT_CHAIN], args=args, client=pipe if pipe is not None else self.redis)

    def verify(self) -> Verification:
        """Walk the whole log against its chain state; every break found (up to :data:`MAX_BREAKS`)."""
        pipe = self.redis.pipeline(transaction=True)  # the chain state and the last entry it counts, together
        pipe.hgetall(keys.AUDIT_CHAIN)
        pipe.xrevrange(keys.AUDIT, count=1)
        state_raw, tail = pipe.execute()
        state = {_text(k): _text(v) for k, v in state_raw.items()}
        n, head, trimmed = int(state.get("n", 0)), state.get("head", GENESIS), int(state.get("trimmed", 0))
        breaks: list[Break] = []
        first, anchor, checked, unchained = 0, "", 0, 0
        last_n, last_hash = trimmed, ""  # the position and hash of the last genuine-looking entry

        def broke(kind: str, entry: str, lo: int, hi: int, detail: str) -> None:
            if len(breaks) < MAX_BREAKS:
                breaks.append(Break(kind, entry, lo, hi, detail))

        upto = _text(tail[0][0]) if tail else None
        for stream_id, fields in self._entries(upto):
            if "hash" not in fields or "n" not in fields or "prev" not in fields:
                if checked == 0 and not breaks:
                    unchained += 1
                else:
                    broke("forged", stream_id, last_n + 1, last_n + 1,
                          f"entry {stream_id} carries no chain fields: it was not appended by the kernel")
                continue
            try:
                pos = int(fields["n"])
            except ValueError:
                broke("forged", stream_id, last_n + 1, last_n + 1, f"entry {stream_id} has no valid position")
                continue
            checked += 1
            if checked == 1:
                first, anchor = pos, fields["prev"]
            if pos > n:
                broke("forged", stream_id, pos, pos, f"entry {stream_id} claims position {pos}, past the "
                      f"{n} entries the kernel appended")
                continue
            if pos <= last_n:
                broke("forged", stream_id, pos, pos, f"entry {stream_id} repeats position {pos} (one of them was "
                      "not appended by the kernel)" if checked > 1 else
                      f"entry {stream_id} is at position {pos}, but the log was trimmed up to {trimmed}")
                continue
            if pos > last_n + 1:
                where = "at the start of the log (deleted, not trimmed)" if checked == 1 else f"before {stream_id}"
                broke("missing", stream_id, last_n + 1, pos - 1, f"{_span(last_n + 1, pos - 1)} missing {where}")
            elif checked > 1 and fields["prev"] != last_hash:
                broke("altered", stream_id, pos - 1, pos, f"entry {stream_id} (position {pos}) does not link to the "
                      f"entry before it: one of the two was altered")
            elif pos == 1 and fields["prev"] != GENESIS:
                broke("altered", stream_id, 1, 1, f"the first entry {stream_id} does not start the chain")
            if chain_hash(fields["prev"], pos, fields) != fields["hash"]:
                broke("altered", stream_id, pos, pos, f"entry {stream_id} (position {pos}) was altered: its "
                      "content does not match its hash")
            last_n, last_hash = pos, fields["hash"]
        if last_n < n:
            broke("missing", "", last_n + 1, n, f"{_span(last_n + 1, n)} missing at the end of the log (the "
                  f"kernel appended {n})")
        elif n and last_hash != head:
            broke("altered", "", n, n, "the last entry is not the one the kernel appended last (its hash is not the "
                  "chain's head)")
        return Verification(checked, first, anchor, n, head, unchained, breaks)

    def _entries(self, upto: str | None) -> Iterator[tuple[str, dict[str, str]]]:
        """Every entry up to stream id ``upto``, oldest first, in batches."""
        if upto is None:
            return
        lower = "-"
        while True:
            batch = cast(list[tuple[bytes, dict[bytes, bytes]]],
                         self.redis.xrange(keys.AUDIT, min=lower, max=upto, count=_BATCH))
            for stream_id, fields in batch:
                yield _text(stream_id), {_text(k): _text(v) for k, v in fields.items()}
            if len(batch) < _BATCH:
                return
            lower = _after(batch[-1][0])

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


def _span(first: int, last: int) -> str:
    return f"entry {first} is" if first == last else f"entries {first}..{last} are"


def _after(stream_id: bytes | str) -> str:
    """The id just above ``stream_id`` (XRANGE bounds are inclusive)."""
    ms, seq = (int(p) for p in _text(stream_id).split("-"))
    return f"{ms}-{seq + 1}" if seq < _LAST_SEQ else f"{ms + 1}-0"
