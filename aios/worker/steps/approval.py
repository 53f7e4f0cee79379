"""Irreversible syscalls wait for an operator (``AIOS_APPROVALS=required``): parked until approved or denied."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aios.policy.approvals import APPROVED, PENDING, Approvals
from aios.worker.call import Call, Done
from aios.worker.pipeline import Step

if TYPE_CHECKING:
    from aios.worker.runtime import Runtime

log = logging.getLogger("aios.worker")


class ApprovalStep(Step):
    name = "approval"

    def __init__(self, rt: "Runtime") -> None:
        self.rt = rt
        self.approvals = Approvals(rt.settings, rt.redis)

    def before(self, call: Call) -> None:
        syscall = call.need()
        reason = self.rt.service.irreversible(syscall)
        if reason is None:
            return
        status = self.approvals.status(syscall.id)
        if status == APPROVED:
            return
        if status is None or status == PENDING:
            assert call.payload is not None
            self.approvals.park(syscall, call.payload, reason)
            log.info("syscall %s of %s waits for approval: %s", syscall.id, syscall.agent_id, reason)
        raise Done()  # parked, or denied/expired: its caller was answered already
