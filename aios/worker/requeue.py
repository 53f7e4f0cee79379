"""A syscall going back to its queue: a preempted generation (its snapshot saved first) or a transient failure
retried after a back-off. The original signed message is republished through the one publish path, at the
priority its resource's policy gives it now."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from celery import Celery

from aios.broker.publish import publish_syscall
from aios.state import keys
from aios.state.context import ContextStore, Snapshot
from aios.wire.errors import AIOSError
from aios.wire.syscalls import Syscall

if TYPE_CHECKING:
    from aios.worker.runtime import Runtime

log = logging.getLogger("aios.worker")

MAX_BACKOFF_S = 60.0


class Requeue:
    def __init__(self, rt: "Runtime") -> None:
        self.rt = rt
        self.settings = rt.settings
        self.redis = rt.redis

    def _publish(self, syscall: Syscall, payload: dict[str, Any], note: str, countdown: float | None = None
                 ) -> None:
        app: Celery | None = self.rt.app
        if app is None:
            raise RuntimeError("a runtime without a Celery app cannot requeue a syscall")
        publish_syscall(app, payload, syscall_id=syscall.id, kind=syscall.kind, agent_id=syscall.agent_id,
                        route=self.rt.placement.route(syscall), countdown=countdown, note=note)

    def suspend(self, syscall: Syscall, payload: dict[str, Any], snapshot: Snapshot) -> None:
        """Store a preempted generation's snapshot and requeue its message; whichever worker takes it resumes.
        The delivery being run is acknowledged when this returns: the copy on the queue carries the syscall on."""
        ContextStore(self.redis, self.settings.broker.result_ttl_s).save(syscall.id, snapshot)
        self._publish(syscall, payload, "resumed")
        self.redis.hincrby(keys.STATS_DONE, f"{syscall.kind}:preempted", 1)

    def retry_later(self, syscall: Syscall, payload: dict[str, Any], exc: AIOSError) -> bool:
        """Requeue after a back-off, unless the retries are spent or the deadline is near. False: answer the caller
        with the error now (its message then says how often it was tried)."""
        key = keys.attempts(syscall.id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, self.settings.broker.result_ttl_s)
        attempt = int(pipe.execute()[0])
        delay = min(self.settings.worker.retry_backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
        if attempt > self.settings.worker.retry_max or time.time() + delay >= syscall.deadline or self.rt.app is None:
            if attempt > 1:
                exc.args = (f"{exc.message} (after {attempt} attempts)",)
            return False
        log.warning("syscall %s: transient failure, attempt %d of %d again in %.1fs: %s", syscall.id, attempt + 1,
                    self.settings.worker.retry_max + 1, delay, exc.message)
        self._publish(syscall, payload, f"retry {attempt}", countdown=delay)
        self.redis.hincrby(keys.STATS_DONE, f"{syscall.kind}:retried", 1)
        return True
