"""IdempotencyStep: a syscall is answered once. A delivery of an answered id (a redelivery, a requeued copy, a
replay) is dropped: not run, no second reply, counted as a duplicate."""

from __future__ import annotations

from aios.state import keys
from aios.testing import StubService
from tests.unit.conftest import MakeHarness


def test_an_answered_duplicate_is_dropped_without_a_second_reply(harness: MakeHarness) -> None:
    service = StubService()
    h = harness("tool", service)
    syscall = h.sdk.tool_syscall("noop")
    first = h.run(syscall)
    h.execute(syscall)
    h.execute(syscall)
    assert h.replies(syscall.id) == [first]
    assert len(service.calls) == 1
    assert h.count(keys.STATS_DONE, "tool:duplicate") == 2
    assert h.count(keys.STATS_DONE, "tool:ok") == 1
    assert h.deadletters() == []  # a harmless redelivery is not a refusal


def test_an_answer_stored_by_another_worker_is_enough(harness: MakeHarness) -> None:
    service = StubService()
    h = harness("tool", service)
    syscall = h.sdk.tool_syscall("noop")
    other = harness("tool", StubService(), worker="other-worker", credential=h.secret)
    other.execute(h.payload(syscall))
    h.execute(syscall)
    assert service.calls == []
    assert [r.worker for r in h.replies(syscall.id)] == ["other-worker"]
