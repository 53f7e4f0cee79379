"""Cancellation at the start: a syscall that heeds a recorded cancel is answered ``Cancelled`` and never starts;
a cancel syscall (an agent's signed request, verified by the identity step) is recorded here under its verified
agent's name and answered whether it was in time (:mod:`aios.worker.cancels`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aios.state import keys
from aios.wire.syscalls import CancelSyscall
from aios.worker.call import Call, Done
from aios.worker.cancels import cancelled_error
from aios.worker.pipeline import Step

if TYPE_CHECKING:
    from aios.worker.runtime import Runtime


class CancelStep(Step):
    name = "cancel"

    def __init__(self, rt: "Runtime") -> None:
        self.rt = rt

    def before(self, call: Call) -> None:
        syscall = call.need()
        if call.cancelled:
            call.response = call.error(cancelled_error(syscall.id, running=False))
            self.rt.redis.hincrby(keys.STATS_DONE, f"{syscall.kind}:cancelled", 1)
            raise Done()
        if isinstance(syscall, CancelSyscall):
            # True: recorded before the target was answered (it heeds it only if it is this agent's own).
            recorded = self.rt.cancels.record(syscall.target, syscall.agent_id)
            call.response = call.ok({"target": syscall.target, "cancelled": recorded})
            raise Done()
