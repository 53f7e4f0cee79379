"""DeadlineStep: a syscall reached after its deadline is answered DeadlineExceeded, once, instead of run; its
snapshot and retry count go with that answer. A timeout_s above AIOS_MAX_SYSCALL_TIMEOUT_S is refused."""

from __future__ import annotations

import time

from aios.state import keys
from aios.state.context import ContextStore, Snapshot
from aios.testing import StubService
from tests.unit.conftest import MakeHarness, MakeSettings


def test_past_its_deadline_it_is_answered_once_and_not_run(harness: MakeHarness) -> None:
    service = StubService()
    h = harness("tool", service)
    syscall = h.sdk.tool_syscall("noop", timeout_s=1).model_copy(update={"created_at": time.time() - 5})
    answer = h.run(syscall)
    assert answer is not None and answer.error is not None and answer.error.code == "deadline_exceeded"
    assert "past its timeout of 1.0s" in answer.error.message and "queue aios.tool" in answer.error.message
    assert service.calls == []
    assert h.stored(syscall.id) == answer
    h.execute(syscall)  # a redelivery of the late message: dropped, not answered again
    assert h.replies(syscall.id) == [answer]
    assert h.count(keys.STATS_DONE, "tool:error") == 1
    stats = h.redis.hgetall(keys.agent_stats("tool"))
    assert stats == {}  # it did not run: no service to account


def test_the_answer_takes_the_snapshot_and_retry_count_with_it(harness: MakeHarness) -> None:
    h = harness("llm", StubService())
    syscall = h.sdk.llm_syscall("hi", timeout_s=1).model_copy(update={"created_at": time.time() - 5})
    ContextStore(h.redis, 60).save(syscall.id, Snapshot("fake", "m", tokens=[1], text="x", slices=1))
    h.redis.set(keys.attempts(syscall.id), 2)
    assert h.run(syscall).error.code == "deadline_exceeded"  # type: ignore[union-attr]
    assert not h.redis.exists(keys.context(syscall.id)) and not h.redis.exists(keys.attempts(syscall.id))


def test_in_time_it_runs(harness: MakeHarness) -> None:
    service = StubService()
    h = harness("tool", service)
    syscall = h.sdk.tool_syscall("noop", timeout_s=1)
    assert h.run(syscall).status.value == "ok"  # type: ignore[union-attr]
    assert len(service.calls) == 1


def test_a_timeout_above_the_kernels_limit_is_refused_before_anything_runs(harness: MakeHarness,
                                                                           make_settings: MakeSettings) -> None:
    """A deadline that outlives the stored answer would let a replay run again after the answer expired: a
    timeout_s above AIOS_MAX_SYSCALL_TIMEOUT_S is refused (dead-lettered, its caller told), even when signed."""
    service = StubService()
    h = harness("tool", service, settings=make_settings(max_syscall_timeout_s=60))
    syscall = h.sdk.tool_syscall("noop").model_copy(update={"timeout_s": 86_400.0})
    answer = h.run(syscall)
    assert answer is not None and answer.error is not None and answer.error.code == "invalid_syscall"
    assert "timeout_s 86400 is above this kernel's limit of 60 s (AIOS_MAX_SYSCALL_TIMEOUT_S)" in answer.error.message
    assert service.calls == [] and h.stored(syscall.id) is None  # a refusal: told, not stored
    assert [e["code"] for e in h.deadletters()] == ["invalid_syscall"]
    at_the_limit = h.sdk.tool_syscall("noop").model_copy(update={"timeout_s": 60.0})
    assert h.run(at_the_limit).status.value == "ok"  # type: ignore[union-attr]
