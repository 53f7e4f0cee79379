"""QuotaStep: past a limit a syscall waits for its turn (the wait counts as queue wait) or, with
AIOS_QUOTA_MODE=fail, is answered QuotaExceeded without running; leases are released and token reservations
corrected to the real usage when it ends."""

from __future__ import annotations

from aios.state import keys
from aios.testing import FakeModel, StubService, fake_llm_factory
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
