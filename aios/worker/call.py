"""One syscall on its way through a worker's pipeline, and the ways a step ends that way early."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aios.policy.governor import Admission
from aios.policy.identity import Credential
from aios.state.context import Snapshot
from aios.wire.errors import AIOSError
from aios.wire.syscalls import ErrorInfo, Response, Status, Syscall, Timing


@dataclass
class Call:
    """What the steps know about the message being run; each step reads what earlier ones set."""

    message_id: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    worker: str
    started: float = field(default_factory=time.time)
    created: float = 0.0
    payload: dict[str, Any] | None = None
    """The decoded (signed) syscall object, exactly as published."""
    syscall: Syscall | None = None
    answered: bool = False
    """The kernel's state holds an answer for this id already (read by the decode step's state read)."""
    agent_record: dict[bytes, bytes] = field(default_factory=dict)
    """The agent's credential record (read in the same round trip)."""
    credential: Credential | None = None
    """The agent's credential, once the identity step verified the syscall's signature."""
    agent_key: str | None = None
    """The agent's key, once verified: every answer to this syscall is sealed with it. ``None``: not verified
    (nobody is answered) or a kernel without identities (answered unsealed)."""
    verified: bool = False
    """The identity step accepted the sender (signature checked, or identities off): only then is it answered."""
    snapshot: Snapshot | None = None
    """A suspended generation to continue."""
    cancelled: bool = False
    """A cancel this syscall heeds is recorded (read by the load step): it is answered ``Cancelled``, not run."""
    claimed: "tuple[str, str | float] | None" = None
    """What the load step's claim attempt found (:meth:`aios.worker.claims.Claims.take`), for the idempotency step."""
    claim: str | None = None
    """This delivery's claim token while it holds the syscall's claim (:mod:`aios.worker.claims`)."""
    admission: Admission | None = None
    counted: bool = False
    """Its answer counts in its agent's record (it ran, or was refused by a quota): set by the steps that
    answer for the service."""
    response: Response | None = None
    affinity: Any = None
    """How it came to run on this worker (:class:`aios.policy.affinity.Outcome`), set by the affinity step."""

    def __post_init__(self) -> None:
        self.created = self.created or self.started

    @property
    def raw(self) -> Any:
        """The message's argument as received (what a refusal keeps in the dead-letter list)."""
        return self.args[0] if len(self.args) == 1 else self.args

    def need(self) -> Syscall:
        assert self.syscall is not None, "a step that needs the syscall runs after DecodeStep"
        return self.syscall

    def ok(self, result: Any) -> Response:
        return Response(id=self.need().id, status=Status.OK, result=result, worker=self.worker,
                        timing=Timing(created_at=self.created, started_at=self.started, finished_at=time.time()))

    def error(self, exc: AIOSError) -> Response:
        return Response(id=self.need().id, status=Status.ERROR, error=ErrorInfo(code=exc.code, message=exc.message),
                        worker=self.worker,
                        timing=Timing(created_at=self.created, started_at=self.started, finished_at=time.time()))


class Outcome(Exception):
    """Raised by a step to end the pipeline early; the runtime turns it into the right action."""


class Refuse(Outcome):
    """The message is not a syscall the kernel acts on: dead-letter it, count it, tell the caller (unstored)."""

    def __init__(self, exc: AIOSError) -> None:
        super().__init__(exc.message)
        self.exc = exc


class Answer(Outcome):
    """Answer the caller now with this response (stored once), without running the syscall."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.id)
        self.response = response


class Done(Outcome):
    """Nothing more to do for this delivery: parked for approval, requeued, or a duplicate (answered already, or
    put off while another delivery holds its claim)."""
