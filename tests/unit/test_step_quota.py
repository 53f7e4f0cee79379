"""QuotaStep: past a limit a syscall waits for its turn (the wait counts as queue wait) or, with
AIOS_QUOTA_MODE=fail, is answered QuotaExceeded without running; leases are released and token reservations
corrected to the real usage when it ends."""

from __future__ import annotations

import time

from aios.state import keys
from aios.testing import FakeModel, StubService, fake_llm_factory
from aios.worker.steps.quota import QuotaStep
from tests.unit.conftest import MakeHarness, MakeSettings


def test_fail_mode_answers_quota_exceeded_without_running(harness: MakeHarness, make_settings: MakeSettings) -> None:
    service = StubService()
    settings = make_settings(quotas={"agent:*": {"rpm": 1}}, quota_mode="fail")
    h = harness("tool", service, settings=settings)
    first, second = h.sdk.tool_syscall("noop"), h.sdk.tool_syscall("noop")
    assert h.run(first).status.value == "ok"  # type: ignore[union-attr]
    answer = h.run(second)
    assert answer is not None and answer.error is not None and answer.error.code == "quota_exceeded"
    assert "quota 'agent:agent-1' (from 'agent:*'): limit of 1 requests per 60 s reached" in answer.error.message
    assert [c[0] for c in service.calls] == [first.id]
    assert h.stored(second.id) == answer  # answered once, like any answer


def test_wait_mode_waits_for_the_window_and_counts_it_as_queue_wait(harness: MakeHarness,
                                                                    make_settings: MakeSettings) -> None:
    service = StubService()
    h = harness("tool", service, settings=make_settings(quotas={"agent:*": {"rpm": 1}}, quota_window_s=0.3))
    h.run(h.sdk.tool_syscall("noop"))
    second = h.sdk.tool_syscall("noop")
    answer = h.run(second)
    assert answer is not None and answer.status.value == "ok" and len(service.calls) == 2
    assert answer.timing.queue_wait_s >= 0.2  # the quota wait is queue wait, not service


def test_a_concurrency_lease_is_held_while_it_runs_and_released_after(harness: MakeHarness,
                                                                      make_settings: MakeSettings) -> None:
    lease = keys.quota("agent:agent-1", "lease")
    held: list[int] = []
    service = StubService(lambda s: held.append(h.redis.zcard(lease)))
    h = harness("tool", service, settings=make_settings(quotas={"agent:*": {"concurrency": 1}}))
    h.run(h.sdk.tool_syscall("noop"))
    assert held == [1] and h.redis.zcard(lease) == 0


def test_a_tools_declared_limit_is_a_lease_too(harness: MakeHarness) -> None:
    lease = keys.quota("tool:busy", "lease")
    held: list[int] = []
    service = StubService(lambda s: held.append(h.redis.zcard(lease)), concurrency_limit=2)
    h = harness("tool", service)
    h.run(h.sdk.tool_syscall("busy"))
    assert held == [1] and h.redis.zcard(lease) == 0


def test_llm_tokens_are_reserved_then_corrected_to_the_real_usage(harness: MakeHarness,
                                                                  make_settings: MakeSettings) -> None:
    h = harness("llm", fake_llm_factory(FakeModel()),
                settings=make_settings(quotas={"agent:*": {"token_budget": 10_000, "tpm": 5000}}))
    answer = h.run(h.sdk.llm_syscall("count my tokens", max_tokens=200))
    usage = answer.result["usage"]  # type: ignore[union-attr]
    used = usage["prompt_tokens"] + usage["completion_tokens"]
    assert used < 200  # far below the reservation (prompt estimate + all of max_tokens)
    assert int(h.redis.hget(keys.TOKENS_USED, h.agent_id)) == used
    assert int(h.redis.hget(keys.quota("agent:agent-1", "tok"), "_sum")) == used


def test_a_spent_token_budget_fails_even_in_wait_mode(harness: MakeHarness, make_settings: MakeSettings) -> None:
    model = FakeModel()
    h = harness("llm", fake_llm_factory(model), settings=make_settings(quotas={"agent:*": {"token_budget": 50}}))
    answer = h.run(h.sdk.llm_syscall("hi", max_tokens=100))
    assert answer.error.code == "quota_exceeded" and "budget of 50 tokens is spent" in answer.error.message  # type: ignore[union-attr]
    assert model.calls == []


def test_a_long_quota_wait_is_put_off_the_worker_not_slept_in_a_thread(harness: MakeHarness,
                                                                       make_settings: MakeSettings) -> None:
    """Past a short wait in its thread, a syscall waiting for its turn goes to the kernel's Redis until the turn the
    quota names, giving its thread and claim up: no thread sleeps until the deadline (redelivered meanwhile by the
    broker, the write ran twice). It comes back, runs once, and the whole wait is its queue wait."""
    service = StubService()
    h = harness("tool", service, settings=make_settings(quotas={"agent:*": {"rpm": 1}}, quota_window_s=0.6), app=True)
    quota = next(s for s in h.runtime.pipeline.steps if isinstance(s, QuotaStep))
    quota.wait_s = 0.0  # a window longer than the in-thread wait
    h.run(h.sdk.tool_syscall("noop"))
    second = h.sdk.tool_syscall("noop")
    started = time.time()
    assert h.run(second) is None and time.time() - started < 0.3  # not slept on
    [(sid, due)] = h.delayed()
    assert sid == second.id and started + 0.2 < due < started + 1.0  # at the turn the quota names
    assert not h.redis.exists(keys.claim(second.id)) and h.count(keys.STATS_DONE, "tool:throttled") == 1
    assert h.redis.zcard(keys.quota("agent:agent-1", "req")) == 1  # nothing reserved while it waits
    time.sleep(max(0.0, due - time.time()) + 0.05)
    assert h.deliver() is not None
    answer = h.reply(second.id)
    assert answer is not None and answer.status.value == "ok" and len(service.calls) == 2
    assert answer.timing.queue_wait_s >= 0.4


def test_a_concurrency_wait_is_put_off_too_and_fails_at_the_deadline(harness: MakeHarness,
                                                                     make_settings: MakeSettings) -> None:
    service = StubService()
    h = harness("tool", service, settings=make_settings(quotas={"agent:*": {"concurrency": 1}}), app=True)
    quota = next(s for s in h.runtime.pipeline.steps if isinstance(s, QuotaStep))
    quota.wait_s = 0.0
    h.redis.zadd(keys.quota("agent:agent-1", "lease"), {"another-syscall": time.time() + 3600})  # a slot held
    syscall = h.sdk.tool_syscall("noop", timeout_s=1)
    assert h.run(syscall) is None
    [(_, due)] = h.delayed()
    assert due <= syscall.deadline  # back in time to be told, not past its deadline
    until = time.time() + 3
    while h.reply(syscall.id) is None and time.time() < until:  # round it goes, as a worker's timer moves it
        time.sleep(0.05)
        h.deliver()
    answer = h.reply(syscall.id)
    assert answer is not None and answer.error is not None and answer.error.code in ("quota_exceeded",
                                                                                     "deadline_exceeded")
    assert service.calls == [] and h.delayed() == []
