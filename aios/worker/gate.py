"""The first gate: Celery's consumer with a check in front, so that a message that is not a well-formed kernel
syscall never reaches Celery's own decoding (which would log and drop it silently, or fail it without telling
the caller). Pickle and other serializers are never even decoded."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery.worker.consumer import Consumer

from aios.broker.kombu_client import LANE
from aios.wire.errors import PayloadTooLarge
from aios.wire.priority import MAX_PRIORITY, from_broker, is_redis_url
from aios.worker.refusals import ENVELOPE_SLACK_BYTES

if TYPE_CHECKING:
    from aios.worker.runtime import Runtime


class KernelConsumer(Consumer):  # type: ignore[misc]  # celery ships no type hints
    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        handler: Callable[[Any], Any] = super().create_task_handler(*args, **kwargs)
        runtime: Runtime | None = getattr(self.app, "aios_runtime", None)
        if runtime is None:  # a plain Celery app using this consumer by mistake: behave like Celery
            return handler

        def gate(message: Any) -> Any:
            refusal = check_envelope(message, runtime)
            if refusal is None:
                served = served_priority(message, runtime.settings.require_broker())
                headers = message.headers if isinstance(message.headers, dict) else {}
                if served is not None and isinstance(headers.get("id"), str):
                    runtime.arrivals[headers["id"]] = served
                return handler(message)
            code, text = refusal
            headers = message.headers if isinstance(message.headers, dict) else {}
            syscall_id = headers.get("id") if isinstance(headers.get("id"), str) else None
            try:
                runtime.refusals.reject(code, text, syscall_id, message.body, meta={
                    "content_type": message.content_type, "task": headers.get("task"),
                })
            finally:
                message.ack()
            return None

        return gate


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


def check_envelope(message: Any, runtime: "Runtime") -> tuple[str, str] | None:
    """Return ``(code, explanation)`` for a message the kernel must refuse, ``None`` for one it accepts."""
    if message.content_type != "application/json":
        return "content_type", (
            f"content type {message.content_type!r} refused: the kernel accepts only application/json "
            "(pickle and other serializers are never accepted); publish through the aios SDK"
        )
    size = len(message.body or b"")
    limit = runtime.settings.syscalls.max_payload_bytes
    if size > limit + ENVELOPE_SLACK_BYTES:
        return PayloadTooLarge.code, f"message is {size} bytes; the syscall limit is {limit} (AIOS_MAX_PAYLOAD_BYTES)"
    headers = message.headers
    if not isinstance(headers, dict) or "task" not in headers or "id" not in headers:
        return "malformed", "message lacks Celery protocol 2 headers 'task' and 'id'; publish through the aios SDK"
    if headers["task"] != runtime.task_name:
        return "unknown_task", (
            f"{headers['task']!r} is not served here: this worker serves {runtime.task_name!r} on queue "
            f"{runtime.queue}"
        )
    try:
        body = message.decode()
    except Exception as exc:  # kombu raises several decode error types, all meaning the same here
        return "malformed", f"message body is not valid JSON: {exc}"
    if not (isinstance(body, (list, tuple)) and len(body) == 3 and isinstance(body[0], (list, tuple))):
        return "malformed", "message body is not a Celery protocol 2 envelope [args, kwargs, embed]"
    return None
