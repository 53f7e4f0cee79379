"""The first gate: Celery's consumer with a check in front, so that a message that is not a well-formed kernel
syscall never reaches Celery's own handling (which would log and drop it silently, fail it without telling the
caller, or act on broker features an agent set). Pickle and other serializers are never even decoded.

The gate wraps the consumer's task handler, which runs before Celery's strategy looks at a message at all: a
message with an ``eta`` (or a ``countdown``, which the client turns into one) is refused here, before the strategy
would schedule it in the worker's memory. The kernel delays syscalls itself, in its own Redis
(:mod:`aios.worker.delayed`), never with a Celery eta.

Headers are checked against what the kernel's one publish path (:func:`aios.broker.publish.publish_syscall`,
Celery's protocol 2) sends: every header must be one of those, with the value the kernel sends (an absent one is
fine); anything else is refused as ``broker_feature``. ``argsrepr`` and ``kwargsrepr``, what Flower and the
worker's logs show of the task, are replaced in a message the gate lets through by the readable, redacted label
that path computes from the payload (:func:`aios.broker.publish.shown_label`): whatever a publisher wrote there,
Flower shows the kernel's name of the syscall, never a prompt, and never one agent's syscall under another's name.
"""

from __future__ import annotations

import json
import numbers
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import kombu.message
from celery.worker.consumer import Consumer

from aios.broker.kombu_client import LANE, SIZE
from aios.broker.publish import shown_label
from aios.state.keys import HEADER_ENQUEUED, HEADER_PRIORITY
from aios.state.replies import Ack
from aios.wire.errors import PayloadTooLarge
from aios.wire.priority import MAX_PRIORITY, MIN_PRIORITY, from_broker, is_redis_url
from aios.worker.refusals import ENVELOPE_SLACK_BYTES, short

if TYPE_CHECKING:
    from aios.worker.runtime import Runtime

ID_RE = re.compile(r"^[A-Za-z0-9_\-]{8,64}$")
"""A syscall id (the wire format's rule): only such an id is answered when its message is refused."""


def _unset(value: Any, own_id: str) -> bool:
    return value is None


def _zero(value: Any, own_id: str) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value == 0)


def _empty(value: Any, own_id: str) -> bool:
    return not value


def _text(value: Any, own_id: str) -> bool:
    return value is None or isinstance(value, str)


def _own_id(value: Any, own_id: str) -> bool:
    return value is None or value == own_id


def _no_limit(value: Any, own_id: str) -> bool:
    return value is None or (isinstance(value, (list, tuple)) and all(v is None for v in value))


def _ignore_result(value: Any, own_id: str) -> bool:
    return value is None or value is True


def _time(value: Any, own_id: str) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _priority(value: Any, own_id: str) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and MIN_PRIORITY <= value <= MAX_PRIORITY


HEADERS: dict[str, Callable[[Any, str], bool]] = {
    "lang": lambda value, own_id: value in (None, "py"),
    "task": _text, "id": _text,  # checked on their own, first
    "shadow": _unset, "eta": _unset, "expires": _unset, "group": _unset, "group_index": _unset,
    "retries": _zero, "timelimit": _no_limit, "root_id": _own_id, "parent_id": _own_id,
    "argsrepr": _text, "kwargsrepr": _text, "origin": _text, "ignore_result": _ignore_result,
    "replaced_task_nesting": _zero, "stamped_headers": _empty, "stamps": _empty,
    HEADER_ENQUEUED: _time, HEADER_PRIORITY: _priority,
    "redelivered": lambda value, own_id: value in (None, True, False),  # kombu's Redis transport, on a redelivery
    # RabbitMQ, on a message an LLM worker's own queue sent back to the shared one (aios.broker.app.own_queue):
    "x-death": lambda value, own_id: value is None or isinstance(value, list),
    **{f"x-{end}-death-{what}": _text for end in ("first", "last") for what in ("exchange", "queue", "reason")},
}
"""The Celery protocol 2 headers the kernel's publish path sends, each with a test of the value it sends (the
ids: unset, or the message's own id, as Celery sets them for a syscall republished from inside a worker task)."""
EMBED_KEYS = frozenset({"callbacks", "errbacks", "chain", "chord"})
"""The third element of the body; the kernel sends each one unset (no canvas: nothing runs after a syscall)."""
WHY_FEATURE = ("the kernel does not act on Celery's broker features (eta, countdown, expires, retries, time limits, "
               "groups, chords, callbacks); publish through the aios SDK")


def _no_decompression(body: Any, content_type: str) -> Any:
    raise ValueError(f"compressed message bodies ({content_type}) are refused")


def refuse_compression() -> None:
    """kombu inflates a body whose ``compression`` header names a codec while it builds the message, before any
    handler sees it: a small zlib bomb would become gigabytes in the worker. The kernel never compresses, so a
    worker inflates nothing: the message keeps its compressed body, and the gate refuses its header."""
    kombu.message.decompress = _no_decompression  # type: ignore[attr-defined]  # kombu: not in its __all__


class KernelConsumer(Consumer):  # type: ignore[misc]  # celery ships no type hints
    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        handler: Callable[[Any], Any] = super().create_task_handler(*args, **kwargs)
        runtime: Runtime | None = getattr(self.app, "aios_runtime", None)
        if runtime is None:  # a plain Celery app using this consumer by mistake: behave like Celery
            return handler
        refuse_compression()

        def gate(message: Any) -> Any:
            refusal = check_envelope(message, runtime)
            if refusal is None:
                message_id: str = message.headers["id"]  # a syscall id: check_envelope saw to it
                served = served_priority(message, runtime.settings.require_broker())
                if served is not None:
                    runtime.arrivals[message_id] = served
                if runtime.affinity is not None:
                    runtime.arrived_from[message_id] = arrived_from(message)
                ack = ack_with_answer(message) if runtime.acks_with_answer else None
                if ack is not None:
                    runtime.unacked[message_id] = ack
                runtime.preload(message_id, message.decode())
                return handler(message)
            try:
                refuse(message, runtime, *refusal)
            finally:
                message.ack()
            return None

        return gate

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        """A message kombu could not even build (a compressed body, see :func:`refuse_compression`): refused like
        any other, where Celery would only log it."""
        runtime: Runtime | None = getattr(self.app, "aios_runtime", None)
        if runtime is None:
            super().on_decode_error(message, exc)
            return
        headers = message.headers if isinstance(message.headers, dict) else {}
        code = "broker_feature" if headers.get("compression") else "malformed"
        try:
            refuse(message, runtime, code, f"message refused before decoding: {short(str(exc), 200)}; {WHY_FEATURE}")
        finally:
            message.ack()


def refuse(message: Any, runtime: "Runtime", code: str, text: str) -> None:
    """Dead-letter and count a refused message, and tell its caller if it names a syscall id (a well-formed one:
    a message is never answered under an id that no syscall could have)."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    syscall_id = headers.get("id")
    runtime.refusals.reject(code, text, syscall_id if _is_id(syscall_id) else None, message.body, meta={
        "content_type": message.content_type, "task": headers.get("task"), "message_bytes": message_size(message),
    })


def _is_id(value: Any) -> bool:
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


def message_size(message: Any) -> int:
    """The bytes of the whole message as the worker holds it: body, headers and properties (serialized). On Redis
    the size it had in its list (recorded by :mod:`aios.broker.kombu_client`), less the base64 inflation of its
    body: no second serialization of the headers in the consumer's thread."""
    body = len(message.body or b"")
    info = message.delivery_info if isinstance(message.delivery_info, dict) else {}
    stored = info.get(SIZE)
    if isinstance(stored, int):
        return body + max(0, stored - 4 * ((body + 2) // 3))
    size = body
    for part in (message.headers, message.properties):
        if part:
            size += len(json.dumps(part, default=str))
    return size


def served_priority(message: Any, broker_url: str) -> int | None:
    """The kernel priority a message was served at: on Redis the list it was popped from (recorded by
    :mod:`aios.broker.kombu_client`), on RabbitMQ the priority the broker ordered it by."""
    info = message.delivery_info if isinstance(message.delivery_info, dict) else {}
    lane = info.get(LANE)
    if isinstance(lane, str):
        suffix = lane.rsplit(":", 1)[1] if ":" in lane else ""
        return MAX_PRIORITY - (int(suffix) if suffix.isdigit() else 0)
    if is_redis_url(broker_url):
        return None
    priority = (message.properties or {}).get("priority")
    return from_broker(min(max(priority, 0), MAX_PRIORITY), broker_url) if isinstance(priority, int) else 0


def ack_with_answer(message: Any) -> Ack | None:
    """The delivery to acknowledge with the message's answer: on a Redis broker (kombu's unacked records, no key
    prefix), ``None`` elsewhere (RabbitMQ: kombu acknowledges it after the task, as always)."""
    channel = getattr(message, "channel", None)
    tag = getattr(message, "delivery_tag", None)
    unacked, index = getattr(channel, "unacked_key", None), getattr(channel, "unacked_index_key", None)
    prefix: Any = getattr(channel, "global_keyprefix", None)  # kombu ships no type hints
    if not (isinstance(tag, str) and isinstance(unacked, str) and isinstance(index, str)) or prefix:
        return None
    return Ack(tag, unacked, index)


def arrived_from(message: Any) -> str:
    """The queue a message came from: on Redis its list's (recorded by :mod:`aios.broker.kombu_client`), on
    RabbitMQ its routing key (a dead-lettered one's is the queue it was sent back to)."""
    info = message.delivery_info if isinstance(message.delivery_info, dict) else {}
    lane = info.get(LANE)
    if isinstance(lane, str):
        queue, _, step = lane.rpartition(":")
        return queue if queue and step.isdigit() else lane
    return str(info.get("routing_key") or "")


def check_envelope(message: Any, runtime: "Runtime") -> tuple[str, str] | None:
    """Return ``(code, explanation)`` for a message the kernel must refuse, ``None`` for one it accepts (whose
    ``argsrepr`` and ``kwargsrepr`` headers it has just set to the kernel's label of the syscall)."""
    size = message_size(message)
    limit = runtime.settings.syscalls.max_payload_bytes
    if size > limit + ENVELOPE_SLACK_BYTES:
        return PayloadTooLarge.code, (
            f"message is {size} bytes with its headers and properties; the limit is {limit} "
            f"(AIOS_MAX_PAYLOAD_BYTES) plus {ENVELOPE_SLACK_BYTES} of envelope")
    if message.content_type != "application/json":
        return "content_type", (
            f"content type {short(repr(message.content_type), 100)} refused: the kernel accepts only "
            "application/json (pickle and other serializers are never accepted); publish through the aios SDK"
        )
    headers = message.headers
    if not isinstance(headers, dict) or "task" not in headers or "id" not in headers:
        return "malformed", "message lacks Celery protocol 2 headers 'task' and 'id'; publish through the aios SDK"
    own_id = headers["id"]
    if not _is_id(own_id):
        return "malformed", (f"message id {short(repr(own_id), 100)} is not a syscall id (8-64 letters, digits, "
                             "'_' or '-'); publish through the aios SDK")
    if headers["task"] != runtime.task_name:
        return "unknown_task", (
            f"{short(repr(headers['task']), 100)} is not served here: this worker serves {runtime.task_name!r} on "
            f"queue {runtime.queue}"
        )
    for name, value in headers.items():
        ok = HEADERS.get(name)
        if ok is None:
            return "broker_feature", f"header {short(repr(name), 100)} refused: {WHY_FEATURE}"
        if not ok(value, own_id):
            return "broker_feature", f"header {name!r}={short(repr(value), 100)} refused: {WHY_FEATURE}"
    try:
        body = message.decode()
    except Exception as exc:  # kombu raises several decode error types, all meaning the same here
        return "malformed", f"message body is not valid JSON: {short(str(exc), 200)}"
    if not (isinstance(body, (list, tuple)) and len(body) == 3 and isinstance(body[0], (list, tuple))
            and isinstance(body[1], dict)):
        return "malformed", "message body is not a Celery protocol 2 envelope [args, kwargs, embed]"
    embed = body[2]
    if embed is not None and not isinstance(embed, dict):
        return "malformed", "message body is not a Celery protocol 2 envelope [args, kwargs, embed]"
    for name, value in (embed or {}).items():
        if name not in EMBED_KEYS or value:
            return "broker_feature", f"envelope field {short(repr(name), 100)} refused: {WHY_FEATURE}"
    # Accepted: what Celery will show of it (its events, Flower, its logs) is the kernel's label, not the publisher's.
    headers["argsrepr"] = shown_label(headers.get("argsrepr"), body[0][0] if len(body[0]) == 1 else None)
    headers["kwargsrepr"] = "{}"
    return None
