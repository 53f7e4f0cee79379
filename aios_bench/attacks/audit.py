"""Attacks on the audit log: an agent that gets at the kernel's Redis tries to hide or rewrite what it did.

Each first leaves a trace: the attacker reads the victim's file without a grant, which the kernel records as a
``deny`` entry naming the attacker. Then it tampers with ``aios:audit`` using the state Redis its own settings
reach (``arena.attacker_settings``). The defence is two-fold: an agent cannot write the kernel's Redis at all
(then the tampering fails: refused), and where it still can, the log's hash chain shows it: ``aios audit
verify`` (:meth:`aios.policy.audit.AuditLog.verify`) must report a break at the entry it touched.

What the chain cannot show: a writer who also rewrites the chain's state (``aios:audit:chain``) and recomputes
every later link, or who appends through the kernel's own script, leaves a consistent log. Only keeping agents
out of the kernel's Redis stops that.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, cast

import redis

from aios.policy.audit import AuditLog, Break, chain_hash
from aios.state import keys
from aios.state.connections import state_client
from aios.wire.errors import AccessDenied, AIOSError
from aios_bench.attacks import Arena, Outcome, attack
from aios_bench.attacks.arena import ATTACKER, VICTIM

Entry = tuple[bytes, dict[bytes, bytes]]


def _trace(arena: Arena) -> str:
    """Leave an audited trace (a denied read of the victim's file); returns its target path."""
    path = f"diary-{uuid.uuid4().hex[:8]}.txt"
    arena.victim.write_file(path, "dear diary")
    try:
        arena.attacker.read_file(path, owner=VICTIM)
    except AccessDenied:
        pass
    return path


def _find(raw: redis.Redis, target: str) -> Entry:
    for stream_id, fields in cast("list[Entry]", raw.xrevrange(keys.AUDIT, count=200)):
        if fields.get(b"target") == target.encode() and fields.get(b"actor") == ATTACKER.encode():
            return stream_id, fields
    raise LookupError(f"no audit entry of {ATTACKER} on {target}: the trace was not recorded")


def _position(fields: dict[bytes, bytes]) -> int:
    return int(fields.get(b"n", b"0"))


def _breaks(arena: Arena) -> list[Break]:
    """What `aios audit verify` finds (run as the operator)."""
    client = state_client(arena.operator)
    try:
        return AuditLog(client).verify().breaks
    finally:
        client.close()


def _tamper(arena: Arena, what: str, act: Callable[[redis.Redis, Entry], Any],
            covers: Callable[[Break, Entry, Any], bool]) -> Outcome:
    """Leave a trace, then ``act(raw, entry)`` with the attacker's own state connection; refused if that fails,
    or if verification reports a break that ``covers`` the tampering."""
    target = _trace(arena)
    try:
        raw = state_client(arena.attacker_settings)
        try:
            entry = _find(raw, target)
            done = act(raw, entry)
        finally:
            raw.close()
    except (redis.RedisError, AIOSError) as exc:
        return Outcome(True, f"could not {what}: {exc}")
    found = [b for b in _breaks(arena) if covers(b, entry, done)]
    if found:
        return Outcome(True, f"{what}: done, and `aios audit verify` reports it: {found[0].detail}")
    return Outcome(False, f"{what}: done, and `aios audit verify` found nothing")


def _covers_position(b: Break, entry: Entry, done: Any) -> bool:
    n = _position(entry[1])
    return b.first <= n <= b.last


@attack("audit-delete-entry", area="audit",
        claim="an entry deleted from the audit log (XDEL) is detected by `aios audit verify`")
def delete_entry(arena: Arena) -> Outcome:
    def act(raw: redis.Redis, entry: Entry) -> None:
        raw.xdel(keys.AUDIT, entry[0])

    return _tamper(arena, "delete its own deny entry", act,
                   lambda b, e, _: b.kind == "missing" and _covers_position(b, e, _))


@attack("audit-alter-entry", area="audit",
        claim="an audit entry rewritten in place (the stream rebuilt with the same ids, one entry changed) is "
              "detected by `aios audit verify`")
def alter_entry(arena: Arena) -> Outcome:
    def act(raw: redis.Redis, entry: Entry) -> None:
        everything = cast("list[Entry]", raw.xrange(keys.AUDIT))
        pipe = raw.pipeline(transaction=True)
        pipe.delete(keys.AUDIT)
        for stream_id, fields in everything:
            if stream_id == entry[0]:
                fields = {**fields, b"decision": b"allow", b"reason": b"read granted by its owner"}
            pipe.xadd(keys.AUDIT, cast("dict[Any, Any]", fields), id=stream_id)
        pipe.execute()

    return _tamper(arena, "turn its deny entry into an allow", act,
                   lambda b, e, _: b.kind == "altered" and _covers_position(b, e, _))


@attack("audit-forge-entry", area="audit",
        claim="an entry appended to the audit log past the kernel's own appends (XADD, made to look chained) is "
              "detected by `aios audit verify`")
def forge_entry(arena: Arena) -> Outcome:
    def act(raw: redis.Redis, entry: Entry) -> tuple[str, int]:
        last = cast("list[Entry]", raw.xrevrange(keys.AUDIT, count=1))[0][1]
        n = _position(last) + 1
        fields = {"ts": last.get(b"ts", b"0").decode(), "actor": "operator:root", "owner": VICTIM,
                  "resource": "files", "op": "grant", "target": ATTACKER, "decision": "change",
                  "reason": f"write granted to '{ATTACKER}'", "syscall_id": ""}
        prev = last.get(b"hash", b"").decode()
        forged = {**fields, "n": str(n), "prev": prev, "hash": chain_hash(prev, n, fields)}
        return cast(bytes, raw.xadd(keys.AUDIT, cast("dict[Any, Any]", forged))).decode(), n

    return _tamper(arena, "forge a grant to itself", act,
                   lambda b, e, forged: b.entry == forged[0] or (b.kind == "forged" and b.first <= forged[1] <= b.last))
