"""RunStep: the service's answer, or its failure as the caller's answer (never a dead worker); a transient
failure is requeued after a back-off; a preempted generation is suspended and requeued."""

from __future__ import annotations

import time

from aios.broker.queues import step_lists
from aios.state import keys
from aios.state.context import Preempted, Snapshot
from aios.testing import StubService
from aios.wire.errors import BackendError, ToolError
from aios.wire.syscalls import Syscall
from tests.unit.conftest import MakeHarness, MakeSettings


def failing(exc: BaseException) -> StubService:
    def answer(syscall: Syscall) -> None:
        raise exc
    return StubService(answer)


def test_the_services_result_is_the_answer_and_counts_as_its_service(harness: MakeHarness) -> None:
    h = harness("tool", StubService(lambda s: {"value": 42}))
    answer = h.run(h.sdk.tool_syscall("noop"))
    assert answer is not None and answer.result == {"value": 42} and answer.worker == h.worker
    assert h.redis.hget(keys.agent_stats("tool"), f"{h.agent_id}:n") == b"1"


def test_a_kernel_error_is_the_callers_answer(harness: MakeHarness) -> None:
    h = harness("tool", failing(ToolError("the tool broke")))
    answer = h.run(h.sdk.tool_syscall("noop"))
    assert answer.error.code == "tool_error" and answer.error.message == "the tool broke"  # type: ignore[union-attr]
    assert h.redis.hget(keys.agent_stats("tool"), f"{h.agent_id}:n") == b"1"  # it ran: its service counts


def test_any_other_exception_is_an_internal_error_answer(harness: MakeHarness) -> None:
    h = harness("tool", failing(ZeroDivisionError("division by zero")))
    answer = h.run(h.sdk.tool_syscall("noop"))
    assert answer.error.code == "internal"  # type: ignore[union-attr]
    assert "ZeroDivisionError: division by zero (a kernel bug" in answer.error.message  # type: ignore[union-attr]
    assert h.run(h.sdk.tool_syscall("noop")) is not None  # the worker goes on serving


def test_a_transient_error_is_requeued_after_a_back_off(harness: MakeHarness, make_settings: MakeSettings) -> None:
    service = failing(BackendError("429 from the provider", transient=True))
    h = harness("llm", service, settings=make_settings(retry_backoff_s=0.5), app=True)
    syscall = h.sdk.llm_syscall("hi")
    before = time.time()
    assert h.run(syscall) is None  # not answered: it goes round again
    assert h.queued() == []  # put off in the kernel's Redis, not on the queue with a Celery eta
    [(delayed_id, due)] = h.delayed()
    assert delayed_id == syscall.id and before + 0.5 <= due <= time.time() + 0.5  # its back-off
    assert h.move_delayed(now=before) == 0  # not due yet
    assert h.move_delayed() == 1 and h.delayed() == []
    queued = h.queued()
    assert [q.message_id for q in queued] == [syscall.id] and queued[0].payload == h.payload(syscall)
    assert queued[0].list_name in step_lists("aios.llm") and queued[0].headers["eta"] is None
    assert h.redis.get(keys.attempts(syscall.id)) == b"1"
    assert h.count(keys.STATS_DONE, "llm:retried") == 1
    assert not h.redis.exists(keys.claim(syscall.id))  # given up: the copy on the queue may run


def test_when_the_retries_are_spent_the_error_is_the_answer(harness: MakeHarness, make_settings: MakeSettings) -> None:
    service = failing(BackendError("503 from the provider", transient=True))
    h = harness("llm", service, settings=make_settings(retry_max=1, retry_backoff_s=0.0), app=True)
    syscall = h.sdk.llm_syscall("hi")
    h.execute(syscall)
    assert h.deliver() is not None  # the requeued copy, failing again
    assert h.queued() == []
    replies = h.replies(syscall.id)
    assert len(replies) == 1 and replies[0].error.code == "backend_error"  # type: ignore[union-attr]
    assert replies[0].error.message == "503 from the provider (after 2 attempts)"  # type: ignore[union-attr]
    assert len(service.calls) == 2 and not h.redis.exists(keys.attempts(syscall.id))


def test_no_retry_past_the_deadline(harness: MakeHarness, make_settings: MakeSettings) -> None:
    h = harness("llm", failing(BackendError("busy", transient=True)), settings=make_settings(retry_backoff_s=30.0),
                app=True)
    answer = h.run(h.sdk.llm_syscall("hi", timeout_s=5))
    assert answer is not None and answer.error.code == "backend_error" and h.queued() == []  # type: ignore[union-attr]


def test_without_a_celery_app_a_transient_error_is_answered(harness: MakeHarness) -> None:
    h = harness("llm", failing(BackendError("busy", transient=True)))
    assert h.run(h.sdk.llm_syscall("hi")).error.code == "backend_error"  # type: ignore[union-attr]


def test_a_preempted_generation_is_suspended_and_requeued(harness: MakeHarness) -> None:
    snap = Snapshot("fake", "m", tokens=[1, 2, 3], text="so far", slices=1)
    h = harness("llm", failing(Preempted(snap)), app=True)
    syscall = h.sdk.llm_syscall("hi")
    assert h.run(syscall) is None
    assert h.snapshot(syscall.id) == snap
    assert [q.message_id for q in h.queued()] == [syscall.id]
    assert not h.redis.exists(keys.claim(syscall.id))  # given up before the copy was published: it can run
    assert h.count(keys.STATS_DONE, "llm:preempted") == 1
    stats = h.redis.hgetall(keys.agent_stats("llm"))
    assert f"{h.agent_id}:service_s".encode() in stats and f"{h.agent_id}:n".encode() not in stats  # a slice



def test_an_at_most_once_syscall_started_once_is_answered_interrupted_not_run_again(harness: MakeHarness) -> None:
    service = StubService(lambda s: {"paid": 1}, at_most_once=True)
    h = harness("tool", service)
    syscall = h.sdk.tool_syscall("noop")
    assert h.run(syscall).result == {"paid": 1}  # type: ignore[union-attr]
    # Its worker died after the effect, before the answer was stored: the answer is gone, the start mark is not.
    h.redis.delete(keys.result(syscall.id), keys.claim(syscall.id), keys.reply(h.agent_id, syscall.id))
    again = h.run(syscall)
    assert again is not None and again.error is not None and again.error.code == "interrupted"
    assert [sid for sid, _ in service.calls] == [syscall.id]  # its service ran once
    assert h.count(keys.STATS_DONE, "tool:interrupted") == 1


def test_a_tool_that_is_not_at_most_once_runs_again_on_redelivery(harness: MakeHarness) -> None:
    service = StubService(lambda s: {"ok": True})
    h = harness("tool", service)
    syscall = h.sdk.tool_syscall("noop")
    assert h.run(syscall).result == {"ok": True}  # type: ignore[union-attr]
    h.redis.delete(keys.result(syscall.id), keys.claim(syscall.id), keys.reply(h.agent_id, syscall.id))
    assert h.run(syscall).result == {"ok": True}  # type: ignore[union-attr]  # at least once: it ran again
    assert len(service.calls) == 2 and h.redis.get(keys.started(syscall.id)) is None
