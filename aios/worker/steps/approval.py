"""Irreversible syscalls wait for an operator (``AIOS_APPROVALS=required``): parked until approved or denied, and
bound to their content: only the payload that was parked (and approved) ever runs under its id."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aios.policy.approvals import APPROVED, PARKED, Approvals, digest
from aios.wire.errors import ApprovalDenied
from aios.worker.call import Call, Done, Refuse
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
        assert call.payload is not None
        status, same = self.approvals.park(syscall, call.payload, reason)  # one script: park, or compare
        if not same:
            raise Refuse(ApprovalDenied(
                f"syscall id {syscall.id} already waits for (or had) an operator's decision on another payload; this "
                f"one (digest {digest(call.payload)[:16]}) does not replace it and will not run: use a new syscall id"))
        if status == APPROVED:
            return  # the approved payload itself: run it
        if status == PARKED:
            log.info("syscall %s of %s waits for approval: %s", syscall.id, syscall.agent_id, reason)
        raise Done()  # parked, a redelivery of a parked one, or denied/expired: its caller was answered already
