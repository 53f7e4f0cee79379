"""One pipelined round trip for what the next steps need from the kernel's state: is this id answered already,
else its claim (taken here, given up at once if the sender turns out unverified), the agent's credential record,
a suspended generation's snapshot, and whether a cancel it heeds is recorded."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis

from aios.state import keys
from aios.state.context import load_from
from aios.wire.syscalls import Syscall
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
        self.redis = rt.redis
        self.auth = rt.settings.security.auth == "required"

    def before(self, call: Call) -> None:
        syscall = call.need()
        try:
            token, got = self._read(syscall)
        except redis.exceptions.NoScriptError:  # the server restarted and forgot the claim script
            self.rt.claims.load()
            token, got = self._read(syscall)
        call.claimed = self.rt.claims.settle(syscall.id, token, got.pop(0))
        state, held = call.claimed
        call.answered = state == ANSWERED
        if state == CLAIMED:
            assert isinstance(held, str)
            call.claim = held
        if self.auth:
            call.agent_record = got.pop(0)
        if syscall.kind == "llm":
            call.snapshot = load_from(got.pop(0))
        call.cancelled = heeded(got.pop(0))

    def _read(self, syscall: Syscall) -> tuple[str, list[Any]]:
        pipe = self.redis.pipeline(transaction=False)
        token = self.rt.claims.take_in(pipe, syscall.id)  # answered? else claim it (the idempotency step decides)
        if self.auth:
            pipe.hgetall(keys.agent(syscall.agent_id))
        if syscall.kind == "llm":  # only LLM generations are ever suspended
            pipe.hgetall(keys.context(syscall.id))
        self.rt.cancels.read_in(pipe, syscall.id, syscall.agent_id)
        return token, pipe.execute()

    def after(self, call: Call) -> None:
        # A claim taken here that the idempotency step never took over (the message was refused on the way: an
        # unverified sender, a revoked credential) is given up at once; the idempotency step's own after hook
        # handles the ones it took.
        if call.claim is not None and call.claimed is not None:
            self.rt.requeue.release(call)
