"""One command (the claim script, :meth:`aios.worker.claims.Claims.take_reading`) for what the next steps need
from the kernel's state: is this id answered already, else its claim (taken here, given up at once if the sender
turns out unverified), the agent's credential record, a suspended generation's snapshot, and whether a cancel it
heeds is recorded."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aios.state.context import load_from
from aios.worker.call import Call
from aios.worker.cancels import heeded
from aios.worker.claims import ANSWERED, CLAIMED
from aios.worker.pipeline import Step

if TYPE_CHECKING:
    from aios.worker.runtime import Runtime


class LoadStep(Step):
    name = "load"

    def __init__(self, rt: "Runtime") -> None:
        self.rt = rt
        self.auth = rt.settings.security.auth == "required"

    def before(self, call: Call) -> None:
        syscall = call.need()
        snap = syscall.kind == "llm"  # only LLM generations are ever suspended
        pre = self.rt.preloads.get(call.message_id)
        if pre is not None and pre.fits(syscall.id, syscall.agent_id, self.auth, snap):
            del self.rt.preloads[call.message_id]
            reading = self.rt.claims.read_reading(pre)  # sent as the message arrived (aios.worker.runtime.preload)
        else:
            self.rt.drop_preload(call.message_id)  # none, or read for another syscall than the one decoded
            reading = self.rt.claims.take_reading(syscall.id, syscall.agent_id, credential=self.auth, snapshot=snap)
        call.claimed, record, snapshot, cancels = reading
        state, held = call.claimed
        call.answered = state == ANSWERED
        if state == CLAIMED:
            assert isinstance(held, str)
            call.claim = held
        if self.auth:
            call.agent_record = record
        if syscall.kind == "llm":
            call.snapshot = load_from(snapshot)
        call.cancelled = heeded(cancels)

    def after(self, call: Call) -> None:
        # A claim taken here that the idempotency step never took over (the message was refused on the way: an
        # unverified sender, a revoked credential) is given up at once; the idempotency step's own after hook
        # handles the ones it took.
        if call.claim is not None and call.claimed is not None:
            self.rt.requeue.release(call)
