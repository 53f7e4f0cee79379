"""CancelStep, and the watch that stops running syscalls (aios.worker.cancels): a syscall that heeds a recorded cancel is answered
Cancelled once and never runs; an agent's cancel counts only for its own syscalls; a running syscall is asked to
stop by the watch pass; a cancel after the answer is refused. Service-time limits: the watch stops a syscall past
its deadline or AIOS_MAX_SYSCALL_TIMEOUT_S; a tool past its syscall's deadline is abandoned and counted."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from aios.services.tools.service import ToolContext, ToolRegistry, ToolService
from aios.state import keys
from aios.testing import StubService
from aios.wire.errors import AIOSError, Cancelled, DeadlineExceeded, ToolError
from aios.worker.cancels import record
from tests.unit.conftest import MakeHarness


def test_a_cancelled_queued_syscall_is_answered_cancelled_and_never_runs(harness: MakeHarness) -> None:
    service = StubService()
    h = harness("tool", service)
    target = h.sdk.tool_syscall("noop")
    told = h.run(h.sdk.cancel_syscall(target.id))
    assert told is not None and told.result == {"target": target.id, "cancelled": True}
    answer = h.run(target)
    assert answer is not None and answer.error is not None and answer.error.code == "cancelled"
    assert service.calls == []
    h.execute(target)  # a redelivery: dropped as answered, not answered twice
    assert h.replies(target.id) == [answer]
    assert h.count(keys.STATS_DONE, "tool:cancelled") == 1


def test_another_agents_cancel_is_not_heeded(harness: MakeHarness) -> None:
    service = StubService()
    alice = harness("tool", service)
    mallory = harness("tool", service, agent_id="mallory")
    target = alice.sdk.tool_syscall("noop")
    told = mallory.run(mallory.sdk.cancel_syscall(target.id))
    assert told is not None and told.result == {"target": target.id, "cancelled": True}  # recorded as mallory's
    assert alice.redis.hkeys(keys.cancel(target.id)) == [b"mallory"]
    answer = alice.run(target)
    assert answer is not None and answer.result == {"ran": target.id}
    assert [c[0] for c in service.calls] == [target.id]


def test_an_operator_cancel_is_heeded_by_any_agent(harness: MakeHarness) -> None:
    service = StubService()
    h = harness("tool", service)
    target = h.sdk.tool_syscall("noop")
    assert record(h.redis, h.settings, target.id, keys.CANCEL_ANY)
    assert h.run(target).error.code == "cancelled"  # type: ignore[union-attr]
    assert service.calls == []
    assert not record(h.redis, h.settings, target.id, keys.CANCEL_ANY)  # answered: nothing left to cancel
    assert 0 < h.redis.ttl(keys.cancel(target.id)) <= h.settings.syscalls.max_syscall_timeout_s + 60


def test_a_cancel_after_the_answer_says_false(harness: MakeHarness) -> None:
    h = harness("tool", StubService())
    target = h.sdk.tool_syscall("noop")
    h.run(target)
    told = h.run(h.sdk.cancel_syscall(target.id))
    assert told is not None and told.result == {"target": target.id, "cancelled": False}
    assert not h.redis.exists(keys.cancel(target.id))


def test_a_forged_cancel_is_refused(harness: MakeHarness) -> None:
    h = harness("tool", StubService())
    target = h.sdk.tool_syscall("noop")
    cancel = h.sdk.cancel_syscall(target.id)
    h.execute(h.payload(cancel, secret="ab" * 32))
    assert h.replies(cancel.id) == []
    assert not h.redis.exists(keys.cancel(target.id))


def test_the_watch_stops_a_running_tool_and_it_is_answered_cancelled(harness: MakeHarness) -> None:
    release = threading.Event()
    registry = ToolRegistry()
    registry.tool("hang", "waits", {"type": "object", "properties": {}}, timeout_s=30)(lambda: release.wait(30))
    h = harness("tool", ToolService(registry, None))
    target = h.sdk.tool_syscall("hang")
    runner = threading.Thread(target=h.execute, args=(target,))
    runner.start()
    try:
        for _ in range(200):  # until it runs
            if target.id in h.runtime.cancels._running:
                break
            time.sleep(0.01)
        h.runtime.cancels.watch()  # nothing recorded: it runs on
        assert runner.is_alive()
        h.runtime.cancels.record(target.id, h.agent_id)
        h.runtime.cancels.watch()
        runner.join(5)
        assert not runner.is_alive()
        answer = h.reply(target.id)
        assert answer is not None and answer.error is not None and answer.error.code == "cancelled"
        assert "while it ran" in answer.error.message
    finally:
        release.set()


def test_the_watch_asks_only_for_heeded_cancels(harness: MakeHarness) -> None:
    h = harness("tool", StubService())
    asked: list[AIOSError] = []
    cancels = h.runtime.cancels
    with cancels.running("syscall-a1", "alice", lambda exc: asked.append(exc) or True):
        cancels.record("syscall-a1", "mallory")
        cancels.watch()
        assert asked == []
        cancels.record("syscall-a1", "alice")
        cancels.watch()
        cancels.watch()  # asked once: it said it stops
        assert len(asked) == 1 and isinstance(asked[0], Cancelled)
    assert cancels._running == {}


def test_the_watch_stops_a_syscall_past_its_deadline(harness: MakeHarness) -> None:
    h = harness("tool", StubService())
    asked: list[AIOSError] = []
    cancels = h.runtime.cancels
    with cancels.running("syscall-b1", "alice", lambda exc: asked.append(exc) or True, deadline=time.time() + 5):
        cancels.watch()
        assert asked == []
        cancels.watch(now=time.time() + 6)
        assert len(asked) == 1 and isinstance(asked[0], DeadlineExceeded)
        assert "past its deadline" in asked[0].message
    with cancels.running("syscall-b2", "alice", lambda exc: asked.append(exc) or True):
        cancels.watch(now=time.time() + h.settings.syscalls.max_syscall_timeout_s + 1)
        assert "AIOS_MAX_SYSCALL_TIMEOUT_S" in asked[-1].message


def test_a_tool_past_its_syscalls_deadline_is_abandoned_and_counted(settings: Any) -> None:
    release = threading.Event()
    registry = ToolRegistry()
    registry.tool("hang", "waits", {"type": "object", "properties": {}}, timeout_s=30)(lambda: release.wait(30))
    ctx = ToolContext(agent_id="a", syscall_id="s" * 16, settings=settings, deadline=time.time() + 0.3)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="its syscall's time ran out"):
        registry.call("hang", {}, ctx)
    assert time.monotonic() - started < 2
    assert registry.abandoned == 1  # its thread runs on, counted
    release.set()
    for _ in range(100):
        if registry.abandoned == 0:
            break
        time.sleep(0.01)
    assert registry.abandoned == 0  # returned: no longer counted
    with pytest.raises(ToolError, match="exceeded its time limit of 0.2 s"):  # the tool's own limit: ToolError
        registry.tool("slow", "waits", {"type": "object", "properties": {}}, timeout_s=0.2)(lambda: time.sleep(1))
        registry.call("slow", {}, ToolContext(agent_id="a", syscall_id="s" * 16, settings=settings))
