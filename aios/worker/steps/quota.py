"""Quotas and leases (:mod:`aios.policy.governor`): wait for a turn (the wait counts as queue wait) or fail;
the leases are released, and the token reservation corrected, when the syscall ends."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aios.wire.errors import AIOSError
from aios.worker.call import Call, Done
from aios.worker.pipeline import Step

if TYPE_CHECKING:
    from aios.worker.runtime import Runtime


class QuotaStep(Step):
    name = "quota"

    def __init__(self, rt: "Runtime") -> None:
        self.rt = rt

    def before(self, call: Call) -> None:
        try:
            call.admission = self.rt.governor.admit(call.need(), self.rt.service)
        except AIOSError as exc:
            call.response = call.error(exc)
            call.counted = True
            raise Done() from None
        if call.admission is not None:
            call.started = time.time()

    def after(self, call: Call) -> None:
        if call.admission is not None:
            self.rt.governor.release(call.admission, call.response)
