"""A syscall reached after its deadline is answered ``DeadlineExceeded`` (once) instead of run; one whose
``timeout_s`` is above ``AIOS_MAX_SYSCALL_TIMEOUT_S`` is refused, so that no deadline outlives the stored answer
that makes a replay harmless (``AIOS_RESULT_TTL_S`` >= ``AIOS_VISIBILITY_TIMEOUT_S`` > that limit)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aios.wire.errors import DeadlineExceeded, InvalidSyscall
from aios.worker.call import Call, Done, Refuse
from aios.worker.pipeline import Step

if TYPE_CHECKING:
    from aios.worker.runtime import Runtime


class DeadlineStep(Step):
    name = "deadline"

    def __init__(self, rt: "Runtime") -> None:
        self.queue = rt.queue
        self.resource = rt.resource
        self.max_timeout_s = rt.settings.syscalls.max_syscall_timeout_s

    def before(self, call: Call) -> None:
        syscall = call.need()
        if syscall.timeout_s > self.max_timeout_s:
            raise Refuse(InvalidSyscall(
                f"timeout_s {syscall.timeout_s:g} is above this kernel's limit of {self.max_timeout_s:g} s "
                "(AIOS_MAX_SYSCALL_TIMEOUT_S): a deadline may not outlive the answer that stops a replay; "
                "lower timeout_s"))
        if call.started <= syscall.deadline:
            return
        call.response = call.error(DeadlineExceeded(
            f"the syscall waited {call.started - syscall.created_at:.1f}s in queue {self.queue}, past its timeout "
            f"of {syscall.timeout_s}s; raise timeout_s or add {self.resource} workers"))
        raise Done()
