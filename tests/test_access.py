"""The access manager: the policy alone, cross-agent memory and files on every broker, the audit log, the CLI."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from aios.ops.embedded import LocalKernel
from aios.policy.access import AccessManager, decide
from aios.policy.audit import AuditLog
from aios.policy.identity import Credentials
from aios.sdk.client import AsyncKernel, Kernel
from aios.settings import Settings, get_settings
from aios.state import keys
from aios.wire.errors import AccessDenied, KernelUnavailable
from aios.wire.syscalls import MemorySyscall, StorageSyscall
from tests.conftest import authorized, storage_service

# -- the policy, without Redis ------------------------------------------------------------------------------


def test_own_data_is_always_allowed() -> None:
    for need in ("read", "write"):
        d = decide("alice", "alice", "memory", need, {}, (), ())
        assert d.allowed and d.reason == "own data"


def test_no_grant_is_denied_and_names_the_command() -> None:
    d = decide("bob", "alice", "memory", "write", {}, (), ())
    assert not d.allowed
    assert d.reason == ("agent 'bob' may not write 'alice''s memory: the owner grants it with "
                        "`aios grant alice bob memory write`")
    assert "`aios grant alice bob files read`" in decide("bob", "alice", "files", "read", {}, (), ()).reason


def test_read_grant_allows_read_but_not_write() -> None:
    grants = {"bob:memory": "read"}
    assert decide("bob", "alice", "memory", "read", grants, (), ()).allowed
    d = decide("bob", "alice", "memory", "write", grants, (), ())
    assert not d.allowed and "it has a read grant only" in d.reason and "memory write`" in d.reason


def test_write_grant_allows_write_and_implies_read() -> None:
    grants = {"bob:files": "write"}
    assert decide("bob", "alice", "files", "write", grants, (), ()).allowed
    assert decide("bob", "alice", "files", "read", grants, (), ()).allowed


def test_grants_are_per_resource_and_per_grantee() -> None:
    grants = {"bob:files": "write"}
    assert not decide("bob", "alice", "memory", "read", grants, (), ()).allowed
    assert not decide("carol", "alice", "files", "read", grants, (), ()).allowed


def test_shared_group_gives_read_only() -> None:
    d = decide("bob", "alice", "memory", "read", {}, {"research", "x"}, {"research"})
    assert d.allowed and "research" in d.reason
    d = decide("bob", "alice", "memory", "write", {}, {"research"}, {"research"})
    assert not d.allowed and "gives read access only" in d.reason
    assert decide("bob", "alice", "memory", "write", {"bob:memory": "write"}, {"research"}, {"research"}).allowed
    assert not decide("bob", "alice", "memory", "read", {}, {"research"}, {"ops"}).allowed


def test_revoked_grant_no_longer_allows() -> None:
    grants = {"bob:memory": "write"}
    assert decide("bob", "alice", "memory", "read", grants, (), ()).allowed
    del grants["bob:memory"]  # what revoke does to the owner's grant hash
    assert not decide("bob", "alice", "memory", "read", grants, (), ()).allowed


def test_unknown_values_fail_closed() -> None:
    assert not decide("bob", "alice", "memory", "read", {"bob:memory": "admin"}, (), ()).allowed
    with pytest.raises(ValueError, match="resource must be one of memory, files"):
        decide("bob", "alice", "disk", "read", {}, (), ())
    with pytest.raises(ValueError, match="access must be one of read, write"):
        decide("bob", "alice", "memory", "exec", {}, (), ())


def test_audit_paging_steps_below_a_stream_id() -> None:
    from aios.policy.audit import _before

    assert _before(b"1700-3") == "1700-2"
    assert _before("1700-0") == f"1699-{2**64 - 1}"
    assert _before("0-0") is None


def test_owner_field_is_validated_like_an_agent_id() -> None:
    with pytest.raises(ValueError, match="owner must be"):
        StorageSyscall(agent_id="bob", op="list", owner="../alice")
    assert MemorySyscall(agent_id="bob", op="list").owner is None


def test_own_data_never_touches_redis_and_cross_agent_fails_closed(tmp_path: Path, vectors: Any) -> None:
    # A Redis that is not there: own data still works; another agent's is refused, not served unchecked.
    svc = storage_service(Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:1/0", reconnect_s=0), vectors)
    assert svc.handle(MemorySyscall(agent_id="alice", op="put", key="k", value=1))["created"]
    assert svc.handle(MemorySyscall(agent_id="alice", op="get", key="k", owner="alice"))["value"] == 1
    with pytest.raises(KernelUnavailable, match="cannot check access to 'alice''s memory"):
        svc.handle(MemorySyscall(agent_id="bob", op="get", key="k", owner="alice"))


# -- on a running kernel, every broker ----------------------------------------------------------------------


def _ids(*names: str) -> list[str]:
    tag = uuid.uuid4().hex[:6]
    return [f"{n}-{tag}" for n in names]


@pytest.mark.integration
def test_cross_agent_memory_and_files_need_a_grant(kernel: LocalKernel) -> None:
    alice, bob = _ids("alice", "bob")
    access = AccessManager(kernel.settings)
    with authorized(kernel.settings, alice) as ka, authorized(kernel.settings, bob) as kb:
        ka.memory_put("plan", {"step": 1})
        ka.write_file("notes.txt", "alice's notes")

        with pytest.raises(AccessDenied, match=f"`aios grant {alice} {bob} memory read`"):
            kb.memory_get("plan", owner=alice)
        with pytest.raises(AccessDenied, match=f"`aios grant {alice} {bob} memory write`"):
            kb.memory_put("plan", "overwritten", owner=alice)
        with pytest.raises(AccessDenied, match=f"`aios grant {alice} {bob} files read`"):
            kb.read_file("notes.txt", owner=alice)
        with pytest.raises(AccessDenied, match=f"`aios grant {alice} {bob} files write`"):
            kb.write_file("notes.txt", "overwritten", owner=alice)
        assert ka.memory_get("plan") == {"step": 1} and ka.read_file("notes.txt") == "alice's notes"
        assert kb.memory_list() == []  # bob's own memory is untouched and needs no grant

        assert access.grant(alice, bob, "memory", "read") is None
        assert kb.memory_get("plan", owner=alice) == {"step": 1}
        assert kb.memory_list(owner=alice) == ["plan"]
        with pytest.raises(AccessDenied, match="it has a read grant only"):
            kb.memory_delete("plan", owner=alice)

        access.grant(alice, bob, "files", "write")
        assert kb.write_file("notes.txt", "edited by bob", owner=alice)["bytes"] == 13
        assert kb.read_file("notes.txt", owner=alice) == "edited by bob" == ka.read_file("notes.txt")
        assert [e["name"] for e in kb.list_files(owner=alice)["entries"]] == ["notes.txt"]
        assert not (kernel.settings.data_dir / "agents" / bob / "files" / "notes.txt").exists()

        assert access.revoke(alice, bob, "files") == "write"
        assert access.revoke(alice, bob, "files") is None
        with pytest.raises(AccessDenied):
            kb.read_file("notes.txt", owner=alice)
        assert access.grants(alice) == [{"owner": alice, "grantee": bob, "resource": "memory", "mode": "read"}]

    log = AuditLog(access.redis).query(agent=bob, limit=1000)
    denied = [e for e in log if e["decision"] == "deny"]
    allowed = [e for e in log if e["decision"] == "allow"]
    assert {(e["actor"], e["owner"]) for e in denied + allowed} == {(bob, alice)}
    assert {(e["resource"], e["op"]) for e in denied} >= {("memory", "get"), ("memory", "put"), ("files", "read"),
                                                           ("files", "write"), ("memory", "delete")}
    assert {(e["resource"], e["op"], e["target"]) for e in allowed} >= {("memory", "get", "plan"),
                                                                       ("files", "write", "notes.txt")}
    assert all(len(e["syscall_id"]) == 32 and e["reason"] for e in denied + allowed)
    changes = [(e["op"], e["resource"], e["target"]) for e in log if e["decision"] == "change"]
    assert changes == [("revoke", "files", bob), ("revoke", "files", bob), ("grant", "files", bob),
                       ("grant", "memory", bob)]  # newest first
    assert log == sorted(log, key=lambda e: e["id"], reverse=True)
    assert AuditLog(access.redis).query(agent=bob, decision="deny", limit=2) == denied[:2]


@pytest.mark.integration
def test_shared_group_reads_but_never_writes(kernel: LocalKernel) -> None:
    alice, bob, carol = _ids("alice", "bob", "carol")
    access = AccessManager(kernel.settings)
    for agent in (alice, bob):
        Credentials(kernel.settings).create(agent, groups=("research",))  # in the group through its credential
    with Kernel(bob, settings=kernel.settings) as kb, authorized(kernel.settings, carol) as kc:
        assert kb.memory_list(owner=alice) == []
        with pytest.raises(AccessDenied, match="shared group 'research' gives read access only"):
            kb.write_file("x.txt", "x", owner=alice)

        with pytest.raises(AccessDenied):
            kc.list_files(owner=alice)
        assert access.add_to_group("research", carol)  # in the group through `aios group add`
        assert kc.list_files(owner=alice) == {"path": "", "entries": []}
        assert access.groups_of(carol) == {"research"}
        assert {(g["agent"], g["via"]) for g in access.groups() if g["group"] == "research"} >= {
            (alice, "credential"), (bob, "credential"), (carol, "group add")}

        assert access.remove_from_group("research", bob)  # out of the credential's list too
        assert Credentials(kernel.settings).get(bob).groups == ()  # type: ignore[union-attr]
        assert not access.remove_from_group("research", bob)
        with pytest.raises(AccessDenied):
            kb.memory_list(owner=alice)
    ops = [e["op"] for e in AuditLog(access.redis).query(agent=bob) if e["decision"] == "change"]
    assert ops == ["group-remove", "group-remove"]


@pytest.mark.integration
def test_audit_query_pages_through_a_long_log(kernel: LocalKernel) -> None:
    (agent,) = _ids("busy")
    log = AccessManager(kernel.settings).audit
    pipe = log.redis.pipeline(transaction=False)
    for i in range(1200):  # more than one XREVRANGE batch, so the filter has to page
        log.record(actor=agent if i % 2 else "other", owner="o", resource="memory", op="get", target=str(i),
                   decision="deny" if i % 4 == 1 else "allow", reason="r", pipe=pipe)
    pipe.execute()
    mine = log.query(agent=agent, limit=10_000)
    assert [e["target"] for e in mine] == [str(i) for i in range(1199, 0, -2)]
    denied = log.query(agent=agent, decision="deny", limit=1000)
    assert [e["target"] for e in denied] == [str(i) for i in range(1197, 0, -4)]
    assert len(log.query(agent=agent, limit=7)) == 7 and log.query(limit=0) == []
    with pytest.raises(ValueError, match="decision must be one of"):
        log.query(decision="maybe")


@pytest.mark.integration
def test_async_sdk_takes_an_owner(kernel: LocalKernel) -> None:
    alice, bob = _ids("alice", "bob")
    AccessManager(kernel.settings).grant(alice, bob, "memory", "write")
    with authorized(kernel.settings, alice) as ka:
        ka.memory_put("k", 1)

    async def go() -> Any:
        async with AsyncKernel(bob, settings=kernel.settings) as kb:
            await kb.memory_put("k", 2, owner=alice)
            return await kb.memory_get("k", owner=alice)

    Credentials(kernel.settings).create(bob)
    assert asyncio.run(go()) == 2


# -- the CLI --------------------------------------------------------------------------------------------------


@pytest.fixture
def aios_cli(kernel: LocalKernel, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``aios <args>`` in-process against ``kernel``, with the access commands on a fresh group."""
    for k, v in {**kernel.settings.to_env(), "AIOS_REDIS_URL": kernel.settings.state_redis_url()}.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()  # settings are read once per process; this test changes the environment

    @click.group()
    def main() -> None:
        pass

    from aios.ops.cli_access import register

    register(main)
    runner = CliRunner()
    yield lambda *args: runner.invoke(main, list(args))
    get_settings.cache_clear()


@pytest.mark.integration
def test_cli_grants_revokes_groups_and_audit(kernel: LocalKernel, aios_cli: Any) -> None:
    alice, bob = _ids("alice", "bob")
    with authorized(kernel.settings, alice) as ka, authorized(kernel.settings, bob) as kb:
        ka.memory_put("plan", "p")
        with pytest.raises(AccessDenied):
            kb.memory_get("plan", owner=alice)

        r = aios_cli("grant", alice, bob, "memory", "read")
        assert r.exit_code == 0, r.output
        assert kb.memory_get("plan", owner=alice) == "p"
        r = aios_cli("grants", alice, "--json")
        assert json.loads(r.output) == [{"owner": alice, "grantee": bob, "resource": "memory", "mode": "read"}]
        assert bob in aios_cli("grants").output

        entries = json.loads(aios_cli("audit", "--agent", bob, "--json").output)
        assert [e["decision"] for e in entries] == ["allow", "change", "deny"]
        assert all(e["owner"] == alice and e["resource"] == "memory" for e in entries)
        assert entries[1]["actor"].startswith("operator") and entries[1]["op"] == "grant"
        denied = json.loads(aios_cli("audit", "--agent", bob, "--denied", "--json").output)
        assert [e["decision"] for e in denied] == ["deny"] and denied[0]["actor"] == bob
        table = aios_cli("audit", "--agent", bob, "--limit", "1")
        assert table.exit_code == 0 and "allow" in table.output and "deny" not in table.output
        verified = aios_cli("audit", "verify")
        assert verified.exit_code == 0 and "chain holds" in verified.output, verified.output

        assert aios_cli("revoke-grant", alice, bob, "memory").exit_code == 0
        with pytest.raises(AccessDenied):
            kb.memory_get("plan", owner=alice)
        r = aios_cli("revoke-grant", alice, bob, "memory")
        assert r.exit_code == 1 and "has no grant" in r.output

    assert aios_cli("group", "add", "ops", bob).exit_code == 0
    listed = json.loads(aios_cli("group", "list", "--json").output)
    assert {"group": "ops", "agent": bob, "via": "group add"} in listed
    assert aios_cli("group", "remove", "ops", bob).exit_code == 0
    assert aios_cli("group", "remove", "ops", bob).exit_code == 1

    log = AccessManager(kernel.settings).audit
    kept = log.redis.xrange(keys.AUDIT)
    log.redis.xdel(keys.AUDIT, kept[len(kept) // 2][0])  # what a writer of the kernel's Redis could do
    broken = aios_cli("audit", "verify")
    assert broken.exit_code == 1 and "BROKEN (missing)" in broken.output, broken.output
    assert json.loads(aios_cli("audit", "verify", "--json").stdout)["ok"] is False

    for bad in (["grant", alice, alice, "memory", "read"], ["grant", alice, "../x", "files", "read"],
                ["grant", alice, bob, "disk", "read"]):
        r = aios_cli(*bad)
        assert r.exit_code != 0 and r.output, bad
