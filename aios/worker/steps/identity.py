"""Act only on syscalls signed with their agent's key (``AIOS_AUTH=required``, the default); keep the key, to
seal every answer to the syscall with it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aios.policy.identity import Credential, KeyRing, authenticate, authorize
from aios.wire.errors import AuthError
from aios.worker.call import Call, Refuse
from aios.worker.pipeline import Step

if TYPE_CHECKING:
    from aios.worker.runtime import Runtime


class IdentityStep(Step):
    name = "identity"

    def __init__(self, rt: "Runtime") -> None:
        self.required = rt.settings.security.auth == "required"
        self.clock_skew_s = rt.settings.security.clock_skew_s
        self.ring: KeyRing | None = rt.keyring

    def before(self, call: Call) -> None:
        if not self.required:
            call.verified = True
            return
        syscall = call.need()
        assert call.payload is not None and self.ring is not None
        credential = Credential.from_redis(syscall.agent_id, call.agent_record)
        try:
            call.agent_key = authenticate(call.payload, credential, self.ring, now=call.started,
                                          clock_skew_s=self.clock_skew_s)
        except AuthError as exc:
            raise Refuse(exc) from None  # not its agent: never answered
        assert credential is not None
        call.credential = credential
        call.verified = True  # its agent sent it: from here on, it is answered, refusals included
        try:
            authorize(credential, now=call.started)
        except AuthError as exc:
            raise Refuse(exc) from None
