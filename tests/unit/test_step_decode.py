"""DecodeStep: a message is one signed syscall object, naming its own message id, on the right worker's queue.
What it refuses is dead-lettered and counted; nobody is answered (its sender is not verified yet, so a message
naming another agent's syscall id cannot make that call fail); the service never sees it."""

from __future__ import annotations

import json

import pytest

from aios.state import keys
from aios.testing import Harness, StubService
from aios.worker.call import Call, Refuse
from aios.worker.steps.decode import DecodeStep
from tests.unit.conftest import MakeHarness, MakeSettings


def refused(h: Harness, message_id: str, code: str) -> str:
    """Assert the refusal's traces (no reply, nothing stored, counter, dead letter); return its message."""
    assert h.reply(message_id) is None  # an unverified sender is never answered
    assert h.stored(message_id) is None
    assert h.count(keys.STATS_REJECTED, code) == 1
    dead = h.deadletters()
    assert dead[0]["code"] == code and dead[0]["syscall_id"] == message_id and dead[0]["worker_resource"] == h.resource
    return str(dead[0]["error"])


def test_a_message_naming_another_id_is_refused(harness: MakeHarness) -> None:
    service = StubService()
    h = harness("tool", service)
    syscall = h.sdk.tool_syscall("echo", {"text": "hi"})
    h.execute(syscall, message_id="someone-elses-id")
    assert "does not match the message id 'someone-elses-id'" in refused(h, "someone-elses-id", "invalid_syscall")
    assert h.reply(syscall.id) is None and service.calls == []


def test_a_syscall_on_another_resources_queue_is_refused(harness: MakeHarness) -> None:
    service = StubService()
    h = harness("tool", service)
    syscall = h.sdk.llm_syscall("hello")
    h.execute(syscall)
    assert "send it to queue aios.llm" in refused(h, syscall.id, "wrong_queue")
    assert service.calls == []


@pytest.mark.parametrize("args, kwargs", [((), {}), (("a", "b"), {}), (("a",), {"x": 1})])
def test_a_message_is_exactly_one_positional_argument(harness: MakeHarness, args: tuple, kwargs: dict) -> None:
    h = harness("tool", StubService())
    h.execute(args=args, kwargs=kwargs, message_id="envelope-1")
    assert "exactly one positional argument" in refused(h, "envelope-1", "invalid_syscall")


@pytest.mark.parametrize("body, code", [
    ("{not json", "malformed"),
    ({"kind": "teleport", "agent_id": "a"}, "unknown_kind"),
    ({"kind": "tool", "agent_id": "a"}, "invalid_syscall"),
    (["a", "list"], "invalid_syscall"),
])
def test_what_does_not_decode_is_refused_with_its_code(harness: MakeHarness, body: object, code: str) -> None:
    h = harness("tool", StubService())
    h.execute(args=(body,), message_id="bad-message-1")
    refused(h, "bad-message-1", code)


def test_an_oversized_syscall_is_refused(harness: MakeHarness, make_settings: MakeSettings) -> None:
    h = harness("tool", StubService(), settings=make_settings(max_payload_bytes=1024))
    syscall = h.sdk.tool_syscall("echo", {"text": "x" * 2000})
    h.execute(args=(json.dumps(h.payload(syscall)),), message_id=syscall.id)
    assert "the limit is 1024" in refused(h, syscall.id, "payload_too_large")


@pytest.mark.parametrize("as_text", [False, True])
def test_a_good_message_is_decoded_for_the_next_steps(harness: MakeHarness, as_text: bool) -> None:
    h = harness("tool", StubService())
    syscall = h.sdk.tool_syscall("echo", {"text": "hi"})
    payload = h.payload(syscall)
    call = Call(message_id=syscall.id, args=(json.dumps(payload) if as_text else payload,), kwargs={}, worker="w")
    DecodeStep(h.runtime).before(call)
    assert call.syscall == syscall.model_copy(update={"sig": payload["sig"]})
    assert call.payload == payload  # exactly as published: the identity step checks its signature
    assert call.created == syscall.created_at


def test_the_step_raises_refuse_with_the_typed_error(harness: MakeHarness) -> None:
    h = harness("storage", StubService())
    syscall = h.sdk.tool_syscall("noop")
    with pytest.raises(Refuse) as info:
        DecodeStep(h.runtime).before(Call(message_id=syscall.id, args=(h.payload(syscall),), kwargs={}, worker="w"))
    assert info.value.exc.code == "wrong_queue"
