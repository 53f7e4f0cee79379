"""One pipelined round trip for what the next steps need from the kernel's state: is this id answered already,
the agent's credential record, and a suspended generation's snapshot."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aios.state import keys
from aios.state.context import load_from
from aios.worker.call import Call
from aios.worker.pipeline import Step

if TYPE_CHECKING:
    from aios.worker.runtime import Runtime


class LoadStep(Step):
    name = "load"

    def __init__(self, rt: "Runtime") -> None:
        self.redis = rt.redis
        self.auth = rt.settings.security.auth == "required"

    def before(self, call: Call) -> None:
        syscall = call.need()
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(keys.result(syscall.id))
        if self.auth:
            pipe.hgetall(keys.agent(syscall.agent_id))
        if syscall.kind == "llm":  # only LLM generations are ever suspended
            pipe.hgetall(keys.context(syscall.id))
        got = pipe.execute()
        call.answered = bool(got.pop(0))
        if self.auth:
            call.agent_record = got.pop(0)
        if syscall.kind == "llm":
            call.snapshot = load_from(got.pop(0))
