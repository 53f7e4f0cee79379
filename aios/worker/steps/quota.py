"""Quotas and leases (:mod:`aios.policy.governor`): wait for a turn (the wait counts as queue wait) or fail;
the leases are released, and the token reservation corrected, when the syscall ends.

A worker thread waits for a turn at most :data:`WAIT_IN_THREAD_S`; a longer wait puts the syscall off in the
kernel's Redis (:mod:`aios.worker.delayed`) until the turn the quota script names, and frees the thread and the
syscall's claim. So no thread sleeps until a deadline, and no broker redelivers a message whose syscall is still
waiting for its turn (which ran it twice). The syscall keeps its ``created_at``: the whole wait is its queue wait."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from aios.policy.governor import Throttled
from aios.state import keys
from aios.wire.errors import AIOSError
from aios.worker.call import Call, Done
from aios.worker.pipeline import Step

if TYPE_CHECKING:
    from aios.worker.runtime import Runtime

log = logging.getLogger("aios.worker")

WAIT_IN_THREAD_S = 2.0
"""The longest a worker thread waits for a quota turn (at most a quarter of the visibility timeout)."""
POLL_S = 1.0
"""When a limit names no time (a concurrency limit), a syscall put off comes back after this long."""


class QuotaStep(Step):
    name = "quota"

    def __init__(self, rt: "Runtime") -> None:
        self.rt = rt
        self.wait_s = min(WAIT_IN_THREAD_S, rt.settings.broker.visibility_timeout_s / 4)

    def before(self, call: Call) -> None:
        syscall = call.need()
        try:
            # Without a Celery app (a runtime outside a worker) nothing could publish it again: wait here.
            call.admission = self.rt.governor.admit(syscall, self.rt.service,
                                                    wait_s=self.wait_s if self.rt.app is not None else None)
        except Throttled as wait:
            delay = wait.retry_s if wait.retry_s > 0 else POLL_S
            delay = min(delay, max(0.05, syscall.deadline - time.time() - 0.1))  # back in time to fail, if it must
            log.info("syscall %s waits for its quota turn off the worker, %.1fs: %s", syscall.id, delay, wait)
            self.rt.requeue.later(call, delay, "quota wait")
            self.rt.redis.hincrby(keys.STATS_DONE, f"{syscall.kind}:throttled", 1)
            raise Done() from None
        except AIOSError as exc:
            call.response = call.error(exc)
            call.counted = True
            raise Done() from None
        if call.admission is not None:
            call.started = time.time()

    def after(self, call: Call) -> None:
        if call.admission is not None:
            self.rt.governor.release(call.admission, call.response)
