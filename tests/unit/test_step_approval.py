"""ApprovalStep (AIOS_APPROVALS=required): an irreversible syscall is parked with its signed message until an
operator decides; approved, it runs on its next delivery; denied, its caller is answered and nothing runs."""

from __future__ import annotations

import json
import time

import pytest

from aios.policy.approvals import APPROVED, DENIED, EXPIRED, PENDING, Approvals, Expirer, digest, summary
from aios.state import keys
from aios.testing import Harness, StubService
from aios.wire.errors import ApprovalDenied
from aios.wire.syscalls import MemorySyscall, StorageSyscall, ToolSyscall
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


# -- bound to content -----------------------------------------------------------------------------------------

def test_a_second_park_under_the_same_id_is_refused_and_the_first_stays(h: Harness, service: StubService) -> None:
    first = h.sdk.tool_syscall("send_email", {"to": "friend"})
    h.execute(first)
    approvals = Approvals(h.settings, h.redis)
    parked = approvals.get(first.id)
    assert parked.digest == digest(h.payload(first)) and parked.summary == 'tool send_email: {"to": "friend"}'
    other = h.sdk.tool_syscall("send_email", {"to": "everyone"}).model_copy(update={"id": first.id})
    h.execute(other)  # validly signed, same id, another payload
    [dead] = h.deadletters()
    assert dead["syscall_id"] == first.id and dead["code"] == "approval_denied"
    assert "does not replace it" in dead["error"]
    assert approvals.get(first.id) == parked  # nothing changed: payload, digest, summary, deadline
    approvals.approve(first.id)
    h.deliver()
    assert service.calls == [(first.id, None)] and h.stored(first.id).status.value == "ok"  # type: ignore[union-attr]
    assert json.loads(h.redis.hget(keys.approval(first.id), "payload")) == h.payload(first)


def test_under_an_approved_id_only_the_approved_payload_runs(h: Harness, service: StubService) -> None:
    ran: list[dict[str, object]] = []
    service.answer = lambda s: ran.append(dict(s.arguments)) or {"sent": True}  # type: ignore[attr-defined]
    first = h.sdk.tool_syscall("send_email", {"to": "friend"})
    h.execute(first)
    Approvals(h.settings, h.redis).approve(first.id)
    h.execute(h.sdk.tool_syscall("send_email", {"to": "everyone"}).model_copy(update={"id": first.id}))  # ahead of it
    assert ran == [] and h.deadletters()[0]["code"] == "approval_denied"
    h.deliver()  # the approved message, republished
    assert ran == [{"to": "friend"}]


def test_approve_pins_the_digest_the_operator_read(h: Harness, service: StubService) -> None:
    syscall = h.sdk.tool_syscall("send_email")
    h.execute(syscall)
    approvals = Approvals(h.settings, h.redis)
    wrong = "0" * 12 if not approvals.get(syscall.id).digest.startswith("0" * 12) else "1" * 12
    with pytest.raises(ApprovalDenied, match="digest does not start with"):
        approvals.approve(syscall.id, digest_prefix=wrong)
    assert approvals.status(syscall.id) == PENDING and h.queued() == []
    request = approvals.approve(syscall.id, digest_prefix=approvals.get(syscall.id).digest[:12].upper())
    assert request.summary == "tool send_email: {}" and approvals.status(syscall.id) == APPROVED


def test_deciding_keeps_the_kernels_reason_and_the_operators_note(h: Harness) -> None:
    syscall = h.sdk.tool_syscall("send_email")
    h.execute(syscall)
    approvals = Approvals(h.settings, h.redis)
    approvals.deny(syscall.id, "not today")
    request = approvals.get(syscall.id)
    assert (request.reason, request.note, request.status) == ("sends an email", "not today", DENIED)


# -- expiry on the kernel's side ------------------------------------------------------------------------------

def test_the_kernel_denies_a_parked_syscall_past_its_deadline(h: Harness, service: StubService) -> None:
    syscall = h.sdk.tool_syscall("send_email", timeout_s=1.0)
    h.execute(syscall)
    approvals = Approvals(h.settings, h.redis)
    assert approvals.expire_due(now=syscall.created_at + 0.5) == []  # not yet
    assert approvals.expire_due(now=syscall.deadline + 0.1) == [syscall.id]
    assert approvals.expire_due(now=syscall.deadline + 0.2) == []  # once
    [reply] = h.replies(syscall.id)
    assert reply.error.code == "approval_denied"  # type: ignore[union-attr]
    assert "not approved within its timeout of 1s" in reply.error.message  # type: ignore[union-attr]
    assert h.stored(syscall.id) == reply and approvals.status(syscall.id) == EXPIRED
    assert approvals.get(syscall.id).reason == "sends an email" and approvals.pending() == []
    with pytest.raises(ApprovalDenied, match="expired"):
        approvals.approve(syscall.id)
    assert service.calls == [] and h.queued() == []


def test_a_late_approval_expires_it_and_answers_the_caller(h: Harness, service: StubService) -> None:
    syscall = h.sdk.tool_syscall("send_email", timeout_s=0.2)
    h.execute(syscall)
    time.sleep(0.3)  # past its deadline; no sweep has run
    with pytest.raises(ApprovalDenied, match="expired"):
        Approvals(h.settings, h.redis).approve(syscall.id)
    [reply] = h.replies(syscall.id)
    assert "deadline passed before the approval came" in reply.error.message  # type: ignore[union-attr]
    assert service.calls == []


def test_the_expirer_thread_sweeps(h: Harness) -> None:
    syscall = h.sdk.tool_syscall("send_email", timeout_s=0.2)
    h.execute(syscall)
    expirer = Expirer(Approvals(h.settings, h.redis), interval_s=0.05).start()
    try:
        deadline = time.monotonic() + 5
        while not h.replies(syscall.id):
            assert time.monotonic() < deadline, "the expirer never answered"
            time.sleep(0.05)
    finally:
        expirer.stop()
    assert h.reply(syscall.id).error.code == "approval_denied"  # type: ignore[union-attr]


# -- what the operator reads ----------------------------------------------------------------------------------

def test_summaries_say_what_runs_in_printable_text() -> None:
    code = "import os\n" + "x = 1\n" * 100
    assert summary(ToolSyscall(agent_id="m", tool="python", arguments={"code": code})) == (
        "tool python: " + code[:200].replace("\n", "\\n") + f"... (+{len(code) - 200} chars)")
    assert summary(StorageSyscall(agent_id="mallory", op="delete", path="scratch.txt")) == (
        "storage delete of mallory:/scratch.txt")
    assert summary(StorageSyscall(agent_id="a", op="share", path="x", with_agent="b", mode="write")) == (
        "storage share of a:/x with b (write)")
    assert summary(MemorySyscall(agent_id="a", op="delete", key="k", owner="b")) == "memory delete of b:k"
    sneaky = summary(StorageSyscall(agent_id="m", op="delete", path="a\rstorage delete of m:/harmless\x1b[2K.txt"))
    assert "\r" not in sneaky and "\x1b" not in sneaky and "\\r" in sneaky and "\\x1b" in sneaky


def test_the_sweep_trusts_the_deadline_not_the_index(h: Harness) -> None:
    syscall = h.sdk.tool_syscall("send_email", timeout_s=60)
    h.execute(syscall)
    h.redis.zadd(keys.APPROVALS_PENDING, {syscall.id: syscall.created_at})  # as an older kernel scored it
    approvals = Approvals(h.settings, h.redis)
    assert approvals.expire_due(now=syscall.created_at + 1) == [] and approvals.status(syscall.id) == PENDING
    assert h.redis.zscore(keys.APPROVALS_PENDING, syscall.id) == pytest.approx(syscall.deadline)
