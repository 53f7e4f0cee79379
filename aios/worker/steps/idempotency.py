"""A syscall is answered once: a delivery of an id whose answer is stored already (a broker redelivery, a
requeued copy, a replay) is acknowledged without running it and without a second reply; the caller has, or
will read, the stored one."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aios.state import keys
from aios.worker.call import Call, Done
from aios.worker.pipeline import Step

if TYPE_CHECKING:
    from aios.worker.runtime import Runtime

log = logging.getLogger("aios.worker")


class IdempotencyStep(Step):
    name = "idempotency"

    def __init__(self, rt: "Runtime") -> None:
        self.redis = rt.redis
        self.replies = rt.replies

    def before(self, call: Call) -> None:
        if not call.answered:
            return
        syscall = call.need()
        log.info("syscall %s was answered already: this delivery is dropped, not run again", syscall.id)
        if call.verified:  # on RabbitMQ the stored answer may not have left before a crash: hand it over again
            self.replies.hand_over_again(syscall.agent_id, syscall.id, call.agent_key)
        self.redis.hincrby(keys.STATS_DONE, f"{syscall.kind}:duplicate", 1)
        raise Done()
