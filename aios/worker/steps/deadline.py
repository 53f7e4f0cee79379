"""A syscall reached after its deadline is answered ``DeadlineExceeded`` (once) instead of run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aios.wire.errors import DeadlineExceeded
from aios.worker.call import Call, Done
from aios.worker.pipeline import Step

if TYPE_CHECKING:
    from aios.worker.runtime import Runtime


class DeadlineStep(Step):
    name = "deadline"

    def __init__(self, rt: "Runtime") -> None:
        self.queue = rt.queue
        self.resource = rt.resource

    def before(self, call: Call) -> None:
        syscall = call.need()
        if call.started <= syscall.deadline:
            return
        call.response = call.error(DeadlineExceeded(
            f"the syscall waited {call.started - syscall.created_at:.1f}s in queue {self.queue}, past its timeout "
            f"of {syscall.timeout_s}s; raise timeout_s or add {self.resource} workers"))
        raise Done()
