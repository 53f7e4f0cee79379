"""Irreversible operations run only after approval; denial and time-out leave everything unchanged."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aios import AccessDenied, ApprovalDenied, Kernel, NotFound
from aios.ops.embedded import LocalKernel
from aios.policy.approvals import Approvals, irreversible_reason
from aios.services.storage.service import StorageService
from aios.services.tools.service import Tool, ToolRegistry, ToolService
from aios.settings import Settings
from aios.wire.syscalls import MemorySyscall, StorageSyscall, ToolSyscall
from aios_bench.attacks import Arena, all_attacks
from aios_bench.attacks.arena import open_arena
from tests.conftest import authorized, base_settings, run_aios


def test_what_counts_as_irreversible(tmp_path: Path) -> None:
    files = StorageService(Settings(data_dir=tmp_path))  # memory and files: the storage service decides
    reg = ToolRegistry()
    reg.register(Tool("send_email", "sends mail", {"type": "object"}, lambda: None, irreversible=True))
    reg.register(Tool("lookup", "reads", {"type": "object"}, lambda: None))
    tools = ToolService(reg)
    assert irreversible_reason(ToolSyscall(agent_id="a", tool="send_email"), tools)
    assert irreversible_reason(ToolSyscall(agent_id="a", tool="lookup"), tools) is None
    assert irreversible_reason(ToolSyscall(agent_id="a", tool="nope"), tools) is None
    assert irreversible_reason(MemorySyscall(agent_id="a", op="delete", key="k"), files)
    assert irreversible_reason(MemorySyscall(agent_id="a", op="put", key="k", value=1), files) is None
    assert irreversible_reason(StorageSyscall(agent_id="a", op="delete", path="x"), files)
    write = StorageSyscall(agent_id="a", op="write", path="d/x.txt", content="new")
    # Writing, even over an existing file, keeps a version (rollback_file restores it): not irreversible. Sharing is.
    assert irreversible_reason(write, files) is None
    share = StorageSyscall(agent_id="a", op="share", path="d/x.txt", with_agent="b")
    assert "gives agent 'b' read access" in (irreversible_reason(share, files) or "")




@pytest.fixture(scope="module")
def lk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKernel]:
    settings = base_settings(tmp_path_factory.mktemp("approvals"), approvals="required")
    with LocalKernel(settings, resources=["tool", "storage"]) as k:
        yield k


@pytest.fixture
def agent(lk: LocalKernel) -> Iterator[Kernel]:
    with authorized(lk.settings, f"careful-{uuid.uuid4().hex[:6]}", timeout_s=30) as k:
        k.write_file("keep.txt", "precious")
        k.memory_put("fact", 42)
        yield k


def _wait_parked(lk: LocalKernel, syscall_id: str) -> None:
    deadline = time.monotonic() + 20
    while syscall_id not in [r.id for r in Approvals(lk.settings).pending()]:
        assert time.monotonic() < deadline, "the irreversible syscall never reached the approval queue"
        time.sleep(0.05)


@pytest.mark.integration
def test_delete_waits_and_runs_only_after_approval(lk: LocalKernel, agent: Kernel) -> None:
    pending = agent.submit(agent.storage_syscall("delete", "keep.txt"))
    _wait_parked(lk, pending.id)
    assert agent.read_file("keep.txt") == "precious"  # not yet
    request = Approvals(lk.settings).get(pending.id)
    assert request.agent_id == agent.agent_id and "deletes 'keep.txt'" in request.reason
    Approvals(lk.settings).approve(pending.id)
    assert agent.wait(pending) == {"path": "keep.txt", "deleted": True}
    with pytest.raises(NotFound):
        agent.read_file("keep.txt")
    with pytest.raises(ApprovalDenied, match="approved, not pending"):
        Approvals(lk.settings).approve(pending.id)  # once decided, decided


@pytest.mark.integration
def test_denial_leaves_everything_unchanged(lk: LocalKernel, agent: Kernel) -> None:
    pendings = [agent.submit(agent.memory_syscall("delete", "fact")),
                agent.submit(agent.storage_syscall("share", "keep.txt", with_agent="stranger"))]
    for p in pendings:
        _wait_parked(lk, p.id)
        Approvals(lk.settings).deny(p.id, "not today")
        with pytest.raises(ApprovalDenied, match="not today"):
            agent.wait(p)
    assert agent.memory_get("fact") == 42
    assert agent.read_file("keep.txt") == "precious"
    with authorized(lk.settings, "stranger") as stranger, pytest.raises(AccessDenied):
        stranger.read_file("keep.txt", owner=agent.agent_id)  # the denied share gave nothing


@pytest.mark.integration
def test_timeout_denies_by_default_and_a_late_approval_is_refused(lk: LocalKernel, agent: Kernel) -> None:
    pending = agent.submit(agent.storage_syscall("delete", "keep.txt", timeout_s=1.0))
    _wait_parked(lk, pending.id)
    with pytest.raises(ApprovalDenied, match="not approved within its timeout"):
        agent.wait(pending)
    with pytest.raises(ApprovalDenied, match="expired"):
        Approvals(lk.settings).approve(pending.id)
    time.sleep(0.5)
    assert agent.read_file("keep.txt") == "precious"


@pytest.mark.integration
def test_operator_commands(lk: LocalKernel, agent: Kernel) -> None:
    def aios(*args: str) -> subprocess.CompletedProcess[str]:
        return run_aios(lk, *args)

    first = agent.submit(agent.memory_syscall("delete", "fact"))
    second = agent.submit(agent.storage_syscall("delete", "keep.txt"))
    _wait_parked(lk, first.id)
    _wait_parked(lk, second.id)
    listed = {r["id"]: r for r in json.loads(aios("approvals", "--json").stdout)}
    assert {first.id, second.id} <= set(listed)
    shown = listed[first.id]
    assert shown["summary"] == f"memory delete of {agent.agent_id}:fact" and len(shown["digest"]) == 64
    assert shown["payload"]["id"] == first.id and shown["reason"].startswith("deletes memory item")
    table = aios("approvals").stdout
    assert "aios approve" in table and shown["digest"][:16] in table
    other = "0" * 16 if not shown["digest"].startswith("0") else "1" * 16
    refused = aios("approve", first.id, "--digest", other)
    assert refused.returncode == 1 and "digest does not start with" in refused.stderr
    assert aios("approve", first.id, "--digest", "abc").returncode != 0  # too short to pin anything
    approved = aios("approve", first.id, "--digest", shown["digest"][:12])
    assert approved.returncode == 0 and shown["summary"] in approved.stderr
    assert agent.wait(first) == {"key": "fact", "deleted": True}
    assert aios("deny", second.id, "--reason", "keep it").returncode == 0
    with pytest.raises(ApprovalDenied, match="keep it"):
        agent.wait(second)
    assert agent.read_file("keep.txt") == "precious"
    assert aios("approve", "no-such-request").returncode == 1


# -- the attack suite's approval attacks, on this kernel (the shared arena of test_attacks.py has approvals off) ----

APPROVAL_ATTACKS = [a for a in all_attacks() if a.area == "approvals"]


@pytest.fixture(scope="module")
def arena(lk: LocalKernel) -> Iterator[Arena]:
    with open_arena(lk.settings, "embedded", kernel=lk) as a:
        yield a


@pytest.mark.integration
@pytest.mark.parametrize("attack", APPROVAL_ATTACKS, ids=[a.name for a in APPROVAL_ATTACKS])
def test_approval_attacks_are_refused(arena: Arena, attack: Any) -> None:
    outcome = attack.run(arena)
    assert outcome.refused, f"attack {attack.name} succeeded ({attack.claim}): the attacker saw {outcome.saw}"
