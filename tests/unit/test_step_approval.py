"""ApprovalStep (AIOS_APPROVALS=required): an irreversible syscall is parked with its signed message until an
operator decides; approved, it runs on its next delivery; denied, its caller is answered and nothing runs."""

from __future__ import annotations

import json

import pytest

from aios.policy.approvals import APPROVED, DENIED, PENDING, Approvals
from aios.state import keys
from aios.testing import Harness, StubService
from tests.unit.conftest import MakeHarness, MakeSettings


@pytest.fixture
def service() -> StubService:
    return StubService(irreversible="sends an email")


@pytest.fixture
def h(harness: MakeHarness, make_settings: MakeSettings, service: StubService) -> Harness:
    return harness("tool", service, settings=make_settings(approvals="required"), app=True)


def test_an_irreversible_syscall_is_parked_not_run(h: Harness, service: StubService) -> None:
    syscall = h.sdk.tool_syscall("send_email", {"to": "x"})
    assert h.run(syscall) is None  # the caller keeps waiting
    assert service.calls == [] and h.stored(syscall.id) is None
    approvals = Approvals(h.settings, h.redis)
    assert approvals.status(syscall.id) == PENDING
    request = approvals.get(syscall.id)
    assert request.reason == "sends an email" and request.agent_id == h.agent_id
    assert json.loads(h.redis.hget(keys.approval(syscall.id), "payload")) == h.payload(syscall)
    assert [r.id for r in approvals.pending()] == [syscall.id]
    h.execute(syscall)  # a redelivery while it waits changes nothing
    assert service.calls == [] and h.replies(syscall.id) == [] and len(approvals.pending()) == 1


def test_approved_it_runs_on_its_next_delivery(h: Harness, service: StubService) -> None:
    syscall = h.sdk.tool_syscall("send_email")
    h.execute(syscall)
    Approvals(h.settings, h.redis).approve(syscall.id)  # publishes the parked message again
    queued = h.queued()
    assert [q.message_id for q in queued] == [syscall.id] and queued[0].payload == h.payload(syscall)
    h.deliver()
    assert Approvals(h.settings, h.redis).status(syscall.id) == APPROVED
    assert [r.status.value for r in h.replies(syscall.id)] == ["ok"] and len(service.calls) == 1


def test_denied_the_caller_is_answered_and_nothing_runs(h: Harness, service: StubService) -> None:
    syscall = h.sdk.tool_syscall("send_email")
    h.execute(syscall)
    Approvals(h.settings, h.redis).deny(syscall.id, "not today")
    h.execute(syscall)  # a late delivery of the denied message
    assert Approvals(h.settings, h.redis).status(syscall.id) == DENIED
    replies = h.replies(syscall.id)
    assert len(replies) == 1 and replies[0].error.code == "approval_denied"  # type: ignore[union-attr]
    assert "sends an email: not today" in replies[0].error.message  # type: ignore[union-attr]
    assert service.calls == []


def test_a_reversible_syscall_runs_at_once(harness: MakeHarness, make_settings: MakeSettings) -> None:
    service = StubService(irreversible=None)
    h = harness("tool", service, settings=make_settings(approvals="required"))
    assert h.run(h.sdk.tool_syscall("lookup")).status.value == "ok"  # type: ignore[union-attr]
    assert len(service.calls) == 1
