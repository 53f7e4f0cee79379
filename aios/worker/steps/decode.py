"""Decode the message's one argument against the syscall schema; it must name its own message id and belong on
this worker."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aios.settings import KIND_TO_RESOURCE, QUEUES
from aios.wire.errors import AIOSError, InvalidSyscall
from aios.wire.syscalls import decode_syscall
from aios.worker.call import Call, Refuse
from aios.worker.pipeline import Step

if TYPE_CHECKING:
    from aios.worker.runtime import Runtime


class DecodeStep(Step):
    name = "decode"

    def __init__(self, rt: "Runtime") -> None:
        self.resource = rt.resource
        self.max_bytes = rt.settings.syscalls.max_payload_bytes

    def before(self, call: Call) -> None:
        try:
            if len(call.args) != 1 or call.kwargs:
                raise InvalidSyscall("a kernel message carries exactly one positional argument: the syscall object")
            raw: Any = call.args[0]
            syscall = decode_syscall(raw, max_bytes=self.max_bytes)
            if syscall.id != call.message_id:
                raise InvalidSyscall(f"syscall id {syscall.id!r} does not match the message id "
                                     f"{call.message_id!r}; publish through the SDK")
            resource = KIND_TO_RESOURCE[syscall.kind]
            if resource != self.resource:
                raise InvalidSyscall(f"a {syscall.kind} syscall reached the {self.resource} worker; send it to "
                                     f"queue {QUEUES[resource]}", code="wrong_queue")
        except AIOSError as exc:
            raise Refuse(exc) from None
        call.payload = raw if isinstance(raw, dict) else json.loads(raw)
        call.syscall = syscall
        call.created = syscall.created_at
