"""A syscall starts at most once, and is answered once.

A delivery of an id whose answer is stored already (a broker redelivery, a requeued copy, a replay) is acknowledged
without running and without a second reply; the caller has, or will read, the stored one. Any other delivery
claims the id before going on (:mod:`aios.worker.claims`, one script: not answered and not claimed, then
claimed). A copy that finds the claim held by another delivery does not run either: the kernel puts it off until
the holder's lease would end (:mod:`aios.worker.delayed`), and then it finds the answer and is dropped, or, if the
holder died without answering, claims the syscall and runs it (so a worker's death loses nothing)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aios.state import keys
from aios.worker.call import Call, Done
from aios.worker.claims import ANSWERED, HELD
from aios.worker.pipeline import Step

if TYPE_CHECKING:
    from aios.worker.runtime import Runtime

log = logging.getLogger("aios.worker")

DEFER_MARGIN_S = 0.2
"""A copy put off comes back this long after the holder's lease would end."""


class IdempotencyStep(Step):
    name = "idempotency"

    def __init__(self, rt: "Runtime") -> None:
        self.rt = rt
        self.redis = rt.redis
        self.claims = rt.claims
        self.longest_run_s = rt.settings.syscalls.max_syscall_timeout_s

    def _duplicate(self, call: Call, why: str) -> None:
        syscall = call.need()
        log.info("syscall %s %s: this delivery is dropped, not run again", syscall.id, why)
        if call.verified:  # on RabbitMQ a stored answer may not have left before a crash: hand it over again
            self.rt.replies.hand_over_again(syscall.agent_id, syscall.id, call.agent_key)
        self.redis.hincrby(keys.STATS_DONE, f"{syscall.kind}:duplicate", 1)
        raise Done()

    def before(self, call: Call) -> None:
        syscall = call.need()
        if call.answered:
            self._duplicate(call, "was answered already")
        state, got = call.claimed if call.claimed is not None else self.claims.take(syscall.id)
        if state == ANSWERED:
            self._duplicate(call, "was answered already")
        if state == HELD:
            if call.started > syscall.deadline + self.longest_run_s:  # no run of it can still be going on
                self._duplicate(call, "is held by a delivery that outlived every run")
            assert isinstance(got, float)
            log.info("syscall %s is claimed by another delivery: this copy is put off %.1fs", syscall.id, got)
            self.rt.requeue.later(call, got + DEFER_MARGIN_S, "deferred")
            self.redis.hincrby(keys.STATS_DONE, f"{syscall.kind}:deferred", 1)
            raise Done()
        assert isinstance(got, str)
        call.claim = got
        call.claimed = None

    def after(self, call: Call) -> None:
        if call.claim is None:
            return
        if call.response is None:  # no answer from this delivery (parked, refused): the next copy must run
            self.rt.requeue.release(call)
        else:  # answered: the stored answer stops every later copy; the reply script deleted the claim
            self.claims.drop(call.need().id)
