"""Messages the kernel does not act on: counted, kept (trimmed) in the dead-letter list, and their caller told
when the message names a syscall id."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from aios.state import keys
from aios.wire.syscalls import ErrorInfo, Response, Status, Timing

if TYPE_CHECKING:
    from aios.worker.call import Call
    from aios.worker.runtime import Runtime

log = logging.getLogger("aios.worker")

ENVELOPE_SLACK_BYTES = 4096
"""Room for Celery's own envelope around the syscall when the raw message size is checked."""


class Refusals:
    def __init__(self, rt: "Runtime") -> None:
        self.rt = rt

    def reject(self, code: str, message: str, syscall_id: str | None, raw: Any, *, started: float | None = None,
               meta: dict[str, Any] | None = None, answer: "Call | None" = None) -> None:
        """Count and dead-letter a refused message; tell its caller only when ``answer`` is given: a call whose
        sender the identity step verified. Whoever else names a syscall id (a forged or replayed message, junk)
        is never answered, so a message cannot make another agent's call fail."""
        settings = self.rt.settings
        now = time.time()
        log.warning("refused message %s (%s): %s", syscall_id, code, message)
        if not isinstance(raw, (str, bytes)):
            try:
                raw = json.dumps(raw)
            except (TypeError, ValueError):
                raw = repr(raw)
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="backslashreplace")
        entry = {
            "at": now, "code": code, "error": message, "syscall_id": syscall_id, "worker_resource": self.rt.resource,
            "size": len(raw), "body": raw[: settings.syscalls.max_payload_bytes + ENVELOPE_SLACK_BYTES], **(meta or {}),
        }
        pipe = self.rt.redis.pipeline(transaction=True)
        pipe.lpush(keys.DEADLETTER, json.dumps(entry))
        pipe.ltrim(keys.DEADLETTER, 0, settings.broker.deadletter_max - 1)
        pipe.hincrby(keys.STATS_REJECTED, code, 1)
        pipe.execute()
        if answer is not None and answer.syscall is not None:
            t = started or now
            self.rt.replies.write_reply(
                Response(id=answer.syscall.id, status=Status.ERROR, error=ErrorInfo(code=code, message=message),
                         timing=Timing(created_at=t, started_at=t, finished_at=time.time()), worker=self.rt.resource),
                agent_id=answer.syscall.agent_id, key=answer.agent_key, kind=None, once=False)
