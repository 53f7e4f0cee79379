"""The raw-message gate (aios.worker.gate) and the dead letters it writes (aios.worker.refusals): messages are
published onto the embedded Redis as a client would (the SDK, Celery's own API, raw kombu), taken off the
queue, and shown to check_envelope exactly as the worker's consumer receives them."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kombu.message import Message

from aios.broker.app import make_app
from aios.broker.queues import step_lists
from aios.state import keys
from aios.testing import Harness, StubService
from aios.worker.gate import check_envelope, refuse
from aios.worker.refusals import DEADLETTER_BODY_BYTES
from tests.unit.conftest import MakeHarness, MakeSettings

EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def as_message(raw: bytes | str) -> Message:
    """A kombu Redis message (as it lies on the list) as the consumer hands it to the gate."""
    env = json.loads(raw)
    body = env["body"]
    if env["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    return Message(body=body, content_type=env["content-type"], content_encoding=env["content-encoding"],
                   headers=env["headers"], properties=env["properties"])


def taken(h: Harness) -> Message:
    """The next message off the tool queue, whatever its body."""
    assert h.broker is not None
    for name in step_lists("aios.tool"):
        got = h.broker.rpop(name)
        if isinstance(got, (bytes, str)):
            return as_message(got)
    raise AssertionError("nothing was published")


def send(h: Harness, payload: Any = None, *, headers: dict[str, Any] | None = None, **options: Any) -> Message:
    """Publish with Celery's send_task (any of its options), take it off the queue."""
    payload = payload if payload is not None else h.payload(h.sdk.tool_syscall("noop"))
    app = make_app(h.settings, name="client")
    try:
        app.send_task("aios.tool", args=[payload], task_id=payload["id"], queue="aios.tool", ignore_result=True,
                      headers=headers, **options)
    finally:
        app.close()
    return taken(h)


def raw(h: Harness, body: bytes, *, headers: dict[str, Any] | None = None, message_id: str | None = None) -> Message:
    """Publish ``body`` with kombu and any headers, take it off the queue."""
    from kombu.entity import Exchange, Queue
    from kombu.messaging import Producer

    q = Queue("aios.tool", Exchange("aios.tool", type="direct"), routing_key="aios.tool")
    app = make_app(h.settings, name="raw")
    with app.connection_for_write() as conn:
        Producer(conn.default_channel).publish(
            body, exchange=q.exchange, routing_key="aios.tool", declare=[q], content_type="application/json",
            content_encoding="utf-8", priority=4,
            headers={"task": "aios.tool", "id": message_id or uuid.uuid4().hex, **(headers or {})})
    app.close()
    return taken(h)


def envelope(payload: Any, embed: dict[str, Any] | None = None) -> bytes:
    return json.dumps([[payload], {}, EMBED if embed is None else embed]).encode()


@pytest.fixture
def h(harness: MakeHarness) -> Harness:
    return harness("tool", StubService(), app=True)


def test_what_the_sdk_and_the_kernels_requeues_send_is_accepted(h: Harness) -> None:
    h.submit(h.sdk.tool_syscall("noop"))
    assert check_envelope(taken(h), h.runtime) is None
    payload = h.payload(h.sdk.tool_syscall("noop"))  # republished from inside a worker task: Celery names it parent
    assert check_envelope(send(h, payload, root_id=payload["id"], parent_id=payload["id"]), h.runtime) is None
    assert check_envelope(raw(h, envelope(payload), message_id=payload["id"]), h.runtime) is None  # few headers


@pytest.mark.parametrize("options", [
    {"countdown": 3600},
    {"eta": datetime.now(UTC) + timedelta(hours=1)},
    {"expires": datetime.now(UTC) - timedelta(minutes=1)},
    {"expires": 3600},
    {"retries": 1},
    {"time_limit": 1, "soft_time_limit": 1},
    {"group_id": "g" * 12},
    {"shadow": "aios.storage"},
    {"root_id": "r" * 32},
    {"parent_id": "p" * 32},
    {"stamped_headers": ["x"], "x": 1},
    {"headers": {"x-anything": 1}},
    {"headers": {"aios_priority": 12}},
    {"headers": {"aios_enqueued": "yesterday"}},
], ids=lambda o: "-".join(o))
def test_celery_broker_features_are_refused(h: Harness, options: dict[str, Any]) -> None:
    refusal = check_envelope(send(h, **options), h.runtime)
    assert refusal is not None and refusal[0] == "broker_feature", refusal
    assert "refused" in refusal[1] and "publish through the aios SDK" in refusal[1]


@pytest.mark.parametrize("field", ["callbacks", "errbacks", "chain", "chord", "extra"])
def test_a_canvas_in_the_envelope_is_refused(h: Harness, field: str) -> None:
    payload = h.payload(h.sdk.tool_syscall("noop"))
    callback = {"task": "aios.storage", "args": [], "kwargs": {}, "options": {}, "immutable": True}
    body = envelope(payload, {**EMBED, field: [callback]})
    refusal = check_envelope(raw(h, body, message_id=payload["id"]), h.runtime)
    assert refusal is not None and refusal[0] == "broker_feature", refusal
    assert field in refusal[1]


def test_the_whole_message_is_bounded_not_only_its_body(h: Harness) -> None:
    payload = h.payload(h.sdk.tool_syscall("noop"))
    message = raw(h, envelope(payload), message_id=payload["id"], headers={"x-pad": "A" * 1_100_000})
    refusal = check_envelope(message, h.runtime)
    assert refusal is not None and refusal[0] == "payload_too_large"
    assert "with its headers and properties" in refusal[1] and "AIOS_MAX_PAYLOAD_BYTES" in refusal[1]


def test_a_huge_or_odd_id_is_refused_and_never_answered(h: Harness) -> None:
    payload = h.payload(h.sdk.tool_syscall("noop"))
    for bad in ("x" * 65, "../../etc", "short"):
        message = raw(h, envelope(payload), message_id=bad)
        refusal = check_envelope(message, h.runtime)
        assert refusal is not None and refusal[0] == "malformed" and "not a syscall id" in refusal[1]
        refuse(message, h.runtime, *refusal)
        assert not h.redis.exists(keys.reply(h.agent_id, bad))  # no reply under an id no syscall could have
    assert [e["syscall_id"] for e in h.deadletters()] == [None, None, None]


def test_a_dead_letter_keeps_a_few_kb_with_the_size_and_digest(h: Harness) -> None:
    junk = b"{" + b"x" * 900_000
    message = raw(h, junk, message_id=uuid.uuid4().hex)
    refusal = check_envelope(message, h.runtime)
    assert refusal is not None and refusal[0] == "malformed"
    refuse(message, h.runtime, *refusal)
    [entry] = h.deadletters()
    assert entry["size"] == len(junk) and entry["sha256"] == hashlib.sha256(junk).hexdigest()
    assert entry["truncated"] is True and len(entry["body"]) == DEADLETTER_BODY_BYTES
    assert entry["message_bytes"] > len(junk) and entry["task"] == "aios.tool"
    assert len(h.redis.lindex(keys.DEADLETTER, 0)) < 2 * DEADLETTER_BODY_BYTES  # type: ignore[arg-type]
    assert h.count(keys.STATS_REJECTED, "malformed") == 1


def test_the_dead_letter_store_is_capped_in_bytes_and_in_entries(harness: MakeHarness,
                                                                  make_settings: MakeSettings) -> None:
    h = harness("tool", StubService(), settings=make_settings(deadletter_max_bytes=65_536, deadletter_max=100))
    for i in range(40):
        h.runtime.refusals.reject("malformed", f"junk {i}", None, "y" * 10_000)
    kept: list[bytes] = h.redis.lrange(keys.DEADLETTER, 0, -1)  # type: ignore[assignment]
    total = sum(len(e) for e in kept)
    assert total <= 65_536 and int(h.redis.get(keys.DEADLETTER_BYTES)) == total  # type: ignore[arg-type]
    assert json.loads(kept[0])["error"] == "junk 39"  # the newest kept, the oldest dropped
    assert h.count(keys.STATS_REJECTED, "malformed") == 40
    few = harness("tool", StubService(), settings=make_settings(deadletter_max=3))
    for i in range(5):
        few.runtime.refusals.reject("malformed", f"junk {i}", None, "z")
    assert [e["error"] for e in few.deadletters()] == ["junk 4", "junk 3", "junk 2"]


def test_the_byte_count_recovers_when_the_list_is_deleted(h: Harness) -> None:
    h.runtime.refusals.reject("malformed", "one", None, "a" * 1000)
    h.redis.delete(keys.DEADLETTER)  # an operator clears the list; the counter is stale
    h.runtime.refusals.reject("malformed", "two", None, "b")
    assert [e["error"] for e in h.deadletters()] == ["two"]
    assert int(h.redis.get(keys.DEADLETTER_BYTES)) == len(h.redis.lindex(keys.DEADLETTER, 0))  # type: ignore[arg-type]


def test_a_refusals_text_is_cut_and_so_is_its_callers_error(h: Harness) -> None:
    from aios.worker.call import Call

    syscall = h.sdk.tool_syscall("noop")
    call = Call(message_id=syscall.id, args=(h.payload(syscall),), kwargs={}, worker="w")
    call.syscall, call.verified, call.agent_key = syscall, True, h.secret  # a verified sender is answered
    h.runtime.refusals.reject("malformed", "e" * 100_000, syscall.id, "x", meta={"task": "t" * 100_000},
                              answer=call)
    [entry] = h.deadletters()
    assert len(entry["error"]) < 1100 and len(entry["task"]) < 300
    answer = h.reply(syscall.id)
    assert answer is not None and answer.error is not None and len(answer.error.message) < 1100


def test_a_compressed_body_is_never_inflated(h: Harness) -> None:
    """kombu inflates a body naming a codec while it builds the message, before the gate: a worker refuses to."""
    import zlib

    from aios.worker.gate import refuse_compression

    refuse_compression()
    bomb = zlib.compress(b" " * 5_000_000)
    message = Message(body=bomb, content_type="application/json", content_encoding="utf-8",
                      headers={"task": "aios.tool", "id": uuid.uuid4().hex, "compression": "application/x-gzip"})
    assert message.errors and message.body == bomb  # kept compressed: kombu calls the decode-error handler
    refusal = check_envelope(message, h.runtime)
    assert refusal is not None and refusal[0] == "broker_feature" and "'compression'" in refusal[1]


# -- what Flower shows: the kernel's readable, redacted label (aios.broker.publish.label) ---------------------------

def test_the_label_names_the_call_and_redacts_what_it_carries() -> None:
    from aios.broker.publish import label
    from aios.wire.syscalls import ChatMessage, LLMSyscall, MemorySyscall, ToolSyscall

    prompt = LLMSyscall(agent_id="alice", messages=(ChatMessage(role="system", content="be brief"),
                                                    ChatMessage(role="user", content="my card is 4111 1111")))
    shown = label(prompt.model_dump(mode="json"))
    assert shown == "llm_chat agent=alice messages=2 prompt=[redacted 28 chars] priority=5"
    json_call = prompt.model_copy(update={"output": "json", "json_schema": {"type": "object"}})
    assert label(json_call.model_dump(mode="json")).startswith("llm_chat_with_json_output agent=alice")
    tool = ToolSyscall(agent_id="bob", tool="python", arguments={"code": "print('secret')"}, priority=7)
    assert label(tool.model_dump(mode="json"), "approved") == (
        'call_tool python agent=bob arguments=[redacted 26 chars] priority=7 (approved)')
    memory = MemorySyscall(agent_id="bob", op="put", key="diary", value="dear diary", owner="carol")
    assert label(memory.model_dump(mode="json")) == (
        "memory_put agent=bob owner=carol key=[redacted 5 chars] value=[redacted 10 chars] priority=5")
    # Whatever the payload holds, the label is short, one line, and made of the kernel's words.
    odd = {"kind": "tool", "agent_id": "<b>eve</b>\n", "tool": "x" * 5000, "arguments": "a" * 9999}
    assert label(odd) == "call_tool ? agent=? arguments=[redacted 9999 chars]"
    assert label(["not", "a", "syscall"]) == "unknown syscall"


def test_the_gate_shows_the_kernels_label_whatever_the_publisher_wrote(h: Harness) -> None:
    from aios.broker.publish import label

    payload = h.payload(h.sdk.tool_syscall("echo", {"text": "a private note"}))
    message = send(h, payload, argsrepr="llm_chat agent=alice (the admin)", kwargsrepr="{'text': 'a private note'}")
    assert check_envelope(message, h.runtime) is None
    assert message.headers["argsrepr"] == label(payload) == (
        f"call_tool echo agent={payload['agent_id']} arguments=[redacted 25 chars] priority=5")
    assert message.headers["kwargsrepr"] == "{}"
    # The kernel's own label with one of its notes is kept as it is; an invented note is not.
    kept = send(h, payload, argsrepr=label(payload, "retry 2"))
    assert check_envelope(kept, h.runtime) is None and kept.headers["argsrepr"] == label(payload, "retry 2")
    invented = send(h, payload, argsrepr=label(payload, "approved by the CEO"))
    assert check_envelope(invented, h.runtime) is None and invented.headers["argsrepr"] == label(payload)
    # What the SDK publishes carries the label already, and no part of the payload.
    h.submit(h.sdk.tool_syscall("echo", {"text": "a private note"}))
    sdk_message = taken(h)
    assert "private" not in sdk_message.headers["argsrepr"] and sdk_message.headers["argsrepr"].startswith(
        "call_tool echo agent=")
