"""A syscall going back to its queue: a preempted generation (its snapshot saved first, published at once), or,
put off by the kernel (:mod:`aios.worker.delayed`), a transient failure retried after a back-off, a quota wait, or
a copy whose id another delivery holds. The original signed message goes back through the one publish path, at
the priority its resource's policy gives it then. The delivery's claim is given up first, so that the copy can
run (:mod:`aios.worker.claims`)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from aios.broker.publish import publish_syscall
from aios.state import keys
from aios.state.context import ContextStore, Snapshot
from aios.wire.errors import AIOSError
from aios.worker.call import Call

if TYPE_CHECKING:
    from aios.worker.runtime import Runtime

log = logging.getLogger("aios.worker")

MAX_BACKOFF_S = 60.0


class Requeue:
    def __init__(self, rt: "Runtime") -> None:
        self.rt = rt
        self.settings = rt.settings
        self.redis = rt.redis

    def release(self, call: Call) -> None:
        """Give up the delivery's claim (if it holds one): the syscall goes back, and its next copy must run."""
        if call.claim is not None:
            self.rt.claims.release(call.need().id, call.claim)
            call.claim = None

    def suspend(self, call: Call, snapshot: Snapshot) -> None:
        """Store a preempted generation's snapshot and requeue its message; whichever worker takes it resumes.
        The delivery being run is acknowledged when this returns: the copy on the queue carries the syscall on."""
        syscall, payload = call.need(), call.payload
        assert payload is not None
        if self.rt.app is None:
            raise RuntimeError("a runtime without a Celery app cannot requeue a syscall")
        ContextStore(self.redis, self.settings.broker.result_ttl_s).save(syscall.id, snapshot)
        self.release(call)
        publish_syscall(self.rt.app, payload, syscall_id=syscall.id, kind=syscall.kind, agent_id=syscall.agent_id,
                        route=self.rt.placement.route(syscall), note="resumed")
        self.redis.hincrby(keys.STATS_DONE, f"{syscall.kind}:preempted", 1)

    def later(self, call: Call, delay_s: float, note: str) -> None:
        """Put the syscall back on its queue in ``delay_s`` seconds (a delay the kernel keeps, never a Celery eta)."""
        syscall, payload = call.need(), call.payload
        assert payload is not None
        self.release(call)
        self.rt.delayed.add(syscall, payload, delay_s, note)

    def retry_later(self, call: Call, exc: AIOSError) -> bool:
        """Requeue after a back-off, unless the retries are spent or the deadline is near. False: answer the caller
        with the error now (its message then says how often it was tried)."""
        syscall = call.need()
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
        self.later(call, delay, f"retry {attempt}")
        self.redis.hincrby(keys.STATS_DONE, f"{syscall.kind}:retried", 1)
        return True
