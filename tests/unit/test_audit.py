"""The audit log's hash chain (aios.policy.audit): the Lua append against hashlib, and verification finding every
kind of tampering (a deleted, altered, forged entry) while the length cap's trimming breaks nothing."""

from __future__ import annotations

from typing import Any, cast

import pytest
import redis

from aios.policy.audit import GENESIS, AuditLog, chain_hash
from aios.state import keys
from aios.testing import EmbeddedRedis


@pytest.fixture
def log(server: EmbeddedRedis) -> AuditLog:
    return AuditLog(server.client)


def _fill(log: AuditLog, count: int, **fields: str) -> None:
    for i in range(count):
        log.record(actor="mallory", owner="alice", resource="files", op="read", target=f"f{i}.txt",
                   decision="deny", reason=fields.get("reason", f"no grant {i}"))


def _ids(log: AuditLog) -> list[bytes]:
    return [i for i, _ in cast("list[tuple[bytes, Any]]", log.redis.xrange(keys.AUDIT))]


def test_the_kernels_appends_chain_and_hash_as_hashlib_does(log: AuditLog) -> None:
    for size in range(130):  # every padding case of SHA-256's 64-byte blocks, and multi-byte text
        log.record(actor="a", owner="b", resource="memory", op="get", decision="allow", reason="r" * size)
    log.record(actor="ünïcødé ✓ 😀", owner="b", resource="", op="grant", decision="change", reason="é" * 40)
    entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", log.redis.xrange(keys.AUDIT))
    prev = GENESIS
    for n, (_, raw) in enumerate(entries, start=1):
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        assert (fields["n"], fields["prev"]) == (str(n), prev)
        assert fields["hash"] == chain_hash(prev, n, fields)
        prev = fields["hash"]
    result = log.verify()
    assert result.ok and (result.checked, result.first, result.n, result.head) == (131, 1, 131, prev)
    assert result.anchor == GENESIS and log.query(limit=1)[0]["actor"] == "ünïcødé ✓ 😀"


def test_appends_inside_a_transaction_chain_too(log: AuditLog) -> None:
    pipe = log.redis.pipeline(transaction=True)
    pipe.set("something", 1)
    log.record(actor="operator:root", owner="alice", resource="files", op="grant", target="bob",
               decision="change", reason="read granted to 'bob'", pipe=pipe)
    pipe.execute()
    _fill(log, 2)
    assert log.verify().ok and len(log) == 3


@pytest.mark.parametrize("which", [0, 2, -1])
def test_a_deleted_entry_is_found(log: AuditLog, which: int) -> None:
    _fill(log, 5)
    log.redis.xdel(keys.AUDIT, _ids(log)[which])
    [b] = log.verify().breaks
    position = [1, 3, 5][[0, 2, -1].index(which)]
    assert b.kind == "missing" and b.first == b.last == position


def test_an_entry_rewritten_in_place_is_found(log: AuditLog) -> None:
    _fill(log, 4)
    entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", log.redis.xrange(keys.AUDIT))
    pipe = log.redis.pipeline(transaction=True)
    pipe.delete(keys.AUDIT)
    for i, (stream_id, fields) in enumerate(entries):
        pipe.xadd(keys.AUDIT, cast("dict[Any, Any]", {**fields, b"decision": b"allow"} if i == 1 else fields),
                  id=stream_id)
    pipe.execute()
    [b] = log.verify().breaks
    assert (b.kind, b.entry, b.first, b.last) == ("altered", entries[1][0].decode(), 2, 2)


def test_a_relinked_entry_breaks_the_next_link(log: AuditLog) -> None:
    _fill(log, 3)
    last = cast("list[tuple[bytes, dict[bytes, bytes]]]", log.redis.xrevrange(keys.AUDIT, count=1))[0][1]
    log.redis.xdel(keys.AUDIT, _ids(log)[-1])  # replaced by a copy that says something else, hash recomputed
    fields = {k.decode(): v.decode() for k, v in last.items()} | {"decision": "allow"}
    fields["hash"] = chain_hash(fields["prev"], 3, fields)
    log.redis.xadd(keys.AUDIT, cast("dict[Any, Any]", fields))
    _fill(log, 1)  # the kernel goes on appending from its own head
    kinds = {(b.kind, b.first, b.last) for b in log.verify().breaks}
    assert ("altered", 3, 4) in kinds


def test_entries_added_past_the_kernels_appends_are_found(log: AuditLog) -> None:
    _fill(log, 2)
    last = cast("list[tuple[bytes, dict[bytes, bytes]]]", log.redis.xrevrange(keys.AUDIT, count=1))[0][1]
    fields = {"ts": "1", "actor": "operator:root", "owner": "alice", "resource": "files", "op": "grant",
              "target": "mallory", "decision": "change", "reason": "write granted", "syscall_id": ""}
    prev = last[b"hash"].decode()
    forged = cast(bytes, log.redis.xadd(keys.AUDIT, cast("dict[Any, Any]", {
        **fields, "n": "3", "prev": prev, "hash": chain_hash(prev, 3, fields)})))
    log.redis.xadd(keys.AUDIT, {"actor": "mallory", "decision": "allow"})  # and one that does not even try
    breaks = log.verify().breaks
    assert [(b.kind, b.entry) for b in breaks][0] == ("forged", forged.decode()) and len(breaks) == 2
    assert all(b.kind == "forged" for b in breaks)


def test_the_length_cap_trims_without_breaking_the_chain(server: EmbeddedRedis) -> None:
    log = AuditLog(server.client, max_entries=100)
    _fill(log, 450)  # MAXLEN ~ trims whole stream nodes (100 entries each)
    result = log.verify()
    assert result.ok and len(log) < 450 and result.first > 1 and result.checked == len(log)
    first = cast("list[tuple[bytes, dict[bytes, bytes]]]", log.redis.xrange(keys.AUDIT, count=1))[0]
    assert result.anchor == first[1][b"prev"].decode() != GENESIS
    log.redis.xdel(keys.AUDIT, first[0])  # deleting the oldest kept entry is not trimming
    [b] = log.verify().breaks
    assert b.kind == "missing" and b.first == b.last == result.first


def test_a_wiped_log_is_found_and_entries_older_than_the_chain_are_not_breaks(server: EmbeddedRedis) -> None:
    client: redis.Redis = server.client
    client.xadd(keys.AUDIT, {"actor": "old", "decision": "allow"})  # written before the log was chained
    log = AuditLog(client)
    _fill(log, 3)
    result = log.verify()
    assert result.ok and result.unchained == 1 and result.checked == 3
    client.delete(keys.AUDIT)
    [b] = log.verify().breaks
    assert (b.kind, b.first, b.last) == ("missing", 1, 3)
    client.delete(keys.AUDIT_CHAIN)
    assert log.verify().ok  # both gone: nothing left to compare with (keep the head elsewhere)
