"""The first gate: Celery's consumer with a check in front, so that a message that is not a well-formed kernel
syscall never reaches Celery's own decoding (which would log and drop it silently, or fail it without telling
the caller). Pickle and other serializers are never even decoded."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery.worker.consumer import Consumer

from aios.wire.errors import PayloadTooLarge
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
