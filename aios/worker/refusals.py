"""Messages the kernel does not act on: counted, kept (bounded) in the dead-letter list, and their caller told
when the message names a syscall id.

A dead letter keeps what an operator needs to see what was refused, never the whole of it: the first
:data:`DEADLETTER_BODY_BYTES` of the message body with its size and SHA-256, the error (cut to
:data:`DEADLETTER_TEXT_CHARS`) and short envelope fields. The list is capped in entries (``AIOS_DEADLETTER_MAX``)
and in bytes (``AIOS_DEADLETTER_MAX_BYTES``), oldest dropped first, in one script (``lua/deadletter.lua``)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from aios.state import keys, scripts
from aios.wire.syscalls import ErrorInfo, Response, Status, Timing

if TYPE_CHECKING:
    from aios.worker.call import Call
    from aios.worker.runtime import Runtime

log = logging.getLogger("aios.worker")

ENVELOPE_SLACK_BYTES = 4096
"""Room for Celery's envelope (body framing, headers, properties) around the syscall when the gate checks the
size of the whole message."""
DEADLETTER_BODY_BYTES = 4096
"""How much of a refused message's body its dead letter keeps."""
DEADLETTER_TEXT_CHARS = 1000
"""How much of the error, and of each envelope field, a dead letter (and the caller's error) keeps."""
META_CHARS = 200


def short(text: str, limit: int = DEADLETTER_TEXT_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def _as_bytes(raw: Any) -> bytes:
    if isinstance(raw, bytes):
        return raw
    if not isinstance(raw, str):
        try:
            raw = json.dumps(raw)
        except (TypeError, ValueError):
            raw = repr(raw)
    text: str = raw
    return text.encode("utf-8", errors="backslashreplace")


def _field(value: Any) -> Any:
    """An envelope field as a dead letter keeps it: scalars as they are, anything else as short text."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return short(value if isinstance(value, str) else json.dumps(value, default=str), META_CHARS)


class Refusals:
    def __init__(self, rt: "Runtime") -> None:
        self.rt = rt
        self._keep = scripts.register(rt.redis, "deadletter")

    def reject(self, code: str, message: str, syscall_id: str | None, raw: Any, *, started: float | None = None,
               meta: dict[str, Any] | None = None, answer: "Call | None" = None) -> None:
        """Count and dead-letter a refused message; tell its caller only when ``answer`` is given: a call whose
        sender the identity step verified. Whoever else names a syscall id (a forged or replayed message, junk)
        is never answered, so a message cannot make another agent's call fail."""
        settings = self.rt.settings
        now = time.time()
        message = short(message)
        log.warning("refused message %s (%s): %s", syscall_id, code, message)
        blob = _as_bytes(raw)
        entry = {
            "at": now, "code": code, "error": message, "syscall_id": syscall_id, "worker_resource": self.rt.resource,
            "size": len(blob), "sha256": hashlib.sha256(blob).hexdigest(),
            "body": blob[:DEADLETTER_BODY_BYTES].decode("utf-8", errors="backslashreplace"),
            "truncated": len(blob) > DEADLETTER_BODY_BYTES,
            **{k: _field(v) for k, v in (meta or {}).items()},
        }
        self._keep(keys=[keys.DEADLETTER, keys.DEADLETTER_BYTES, keys.STATS_REJECTED],
                   args=[json.dumps(entry), settings.broker.deadletter_max, settings.broker.deadletter_max_bytes,
                         code])
        if answer is not None and answer.syscall is not None:
            t = started or now
            self.rt.replies.write_reply(
                Response(id=answer.syscall.id, status=Status.ERROR, error=ErrorInfo(code=code, message=message),
                         timing=Timing(created_at=t, started_at=t, finished_at=time.time()), worker=self.rt.resource),
                agent_id=answer.syscall.agent_id, key=answer.agent_key, kind=None, once=False)
