"""Answer the caller, last of all (this step's ``after`` runs after every other step's): stored once, counted,
and for a syscall that ran, its service and wait added to its agent's record, in one atomic script (on a Redis broker
that shares the state's database, the message is acknowledged in that script too)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aios.broker.kombu_client import acked_with_answer
from aios.worker.call import Call
from aios.worker.pipeline import Step

if TYPE_CHECKING:
    from aios.worker.runtime import Runtime


class ReplyStep(Step):
    name = "reply"

    def __init__(self, rt: "Runtime") -> None:
        self.replies = rt.replies
        self.resource = rt.resource
        self.unacked = rt.unacked

    def after(self, call: Call) -> None:
        if call.response is None or call.syscall is None or not call.verified:
            return
        ack = self.unacked.pop(call.message_id, None)
        self.replies.write_reply(call.response, agent_id=call.syscall.agent_id, key=call.agent_key,
                                 kind=call.syscall.kind, once=True,
                                 account=(self.resource, call.syscall) if call.counted else None, ack=ack)
        if ack is not None:  # kombu's acknowledgement after the task: its in-memory record only
            acked_with_answer(ack.tag)
