"""Irreversible operations wait for an operator: approve, deny, or let the deadline deny them.

A worker that receives an irreversible syscall (a tool declared ``irreversible``, deleting a memory item or a
file, sharing a file) does not run it: it parks the signed message in ``aios:approval:<id>`` and
acknowledges it, and the caller keeps waiting. ``aios approve <id>`` marks it approved and publishes the
same message again, so a worker runs it; ``aios deny <id>`` answers the caller with an error. A syscall whose
deadline passes while it waits is denied: the SDK marks it expired when it stops waiting, and an approval that
comes later is refused. Either way, nothing ran: everything is as it was.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, cast

import redis

from aios.settings import Settings
from aios.state import keys, scripts
from aios.state.connections import as_text, state_client
from aios.state.replies import Replies
from aios.wire.errors import AIOSError, ApprovalDenied, NotFound
from aios.wire.syscalls import ErrorInfo, MemorySyscall, Response, Status, StorageSyscall, Syscall, Timing, ToolSyscall

PENDING, APPROVED, DENIED, EXPIRED = "pending", "approved", "denied", "expired"

def irreversible_reason(syscall: Syscall, service: Any) -> str | None:
    """Why ``syscall`` needs an operator's approval, or ``None`` if it can run at once (the service decides:
    :meth:`aios.services.base.Service.irreversible`)."""
    return service.irreversible(syscall)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Request:
    id: str
    agent_id: str
    kind: str
    reason: str
    status: str
    created_at: float
    deadline: float
    summary: str

    def public(self) -> dict[str, Any]:
        status = EXPIRED if self.status == PENDING and time.time() > self.deadline else self.status
        return {"id": self.id, "agent_id": self.agent_id, "kind": self.kind, "reason": self.reason, "status": status,
                "created_at": self.created_at, "deadline": self.deadline, "summary": self.summary}


class Approvals:
    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.redis = client or state_client(settings)
        self._decide = scripts.register(self.redis, "approval_decide")  # pending -> decided, once

    # -- worker side --------------------------------------------------------------------------------------

    def status(self, syscall_id: str) -> str | None:
        value = self.redis.hget(keys.approval(syscall_id), "status")
        return as_text(value) if value else None

    def park(self, syscall: Syscall, payload: dict[str, Any], reason: str) -> None:
        """Keep the signed message until someone decides; a second delivery of it changes nothing."""
        record: dict[str, str | float] = {
            "status": PENDING, "agent_id": syscall.agent_id, "kind": syscall.kind, "reason": reason,
            "created_at": syscall.created_at, "deadline": syscall.deadline, "payload": json.dumps(payload),
            "summary": _summary(syscall),
        }
        pipe = self.redis.pipeline(transaction=True)
        pipe.hsetnx(keys.approval(syscall.id), "status", PENDING)
        pipe.hset(keys.approval(syscall.id), mapping={k: v for k, v in record.items() if k != "status"})
        pipe.expire(keys.approval(syscall.id), self.settings.broker.result_ttl_s)
        pipe.zadd(keys.APPROVALS_PENDING, {syscall.id: syscall.created_at})
        pipe.execute()

    # -- operator side ------------------------------------------------------------------------------------

    def get(self, syscall_id: str) -> Request:
        rec = {as_text(k): as_text(v) for k, v in self.redis.hgetall(keys.approval(syscall_id)).items()}
        if not rec:
            raise NotFound(f"no approval request {syscall_id!r}; list them with `aios approvals`")
        return Request(syscall_id, rec["agent_id"], rec["kind"], rec["reason"], rec["status"],
                       float(rec["created_at"]), float(rec["deadline"]), rec.get("summary", ""))

    def pending(self) -> list[Request]:
        ids = [as_text(i) for i in cast("list[bytes]", self.redis.zrange(keys.APPROVALS_PENDING, 0, -1))]
        out = []
        for i in ids:
            try:
                out.append(self.get(i))
            except NotFound:  # expired with its TTL
                self.redis.zrem(keys.APPROVALS_PENDING, i)
        return out

    def _transition(self, syscall_id: str, to: str, reason: str) -> None:
        got = self._decide(keys=[keys.approval(syscall_id), keys.APPROVALS_PENDING],
                           args=[to, time.time(), syscall_id, reason])
        got = got.decode() if isinstance(got, bytes) else got
        if got == "missing":
            raise NotFound(f"no approval request {syscall_id!r}; list them with `aios approvals`")
        if got != "ok":
            raise ApprovalDenied(f"request {syscall_id} is {got}, not pending: nothing to decide")

    def approve(self, syscall_id: str) -> None:
        """Mark approved and publish the parked message again (through the one publish path, at the priority its
        policy gives it now): the next worker to take it runs it."""
        self._transition(syscall_id, APPROVED, "approved by an operator")
        # The transition just found the request: its payload is there.
        payload = json.loads(cast("bytes", self.redis.hget(keys.approval(syscall_id), "payload")))
        from aios.broker.app import make_app
        from aios.broker.publish import publish_syscall
        from aios.policy.placement import Placement
        from aios.wire.syscalls import decode_syscall

        syscall = decode_syscall(payload, max_bytes=self.settings.syscalls.max_payload_bytes)
        app = make_app(self.settings, name="aios-approvals")
        try:
            publish_syscall(app, payload, syscall_id=syscall_id, kind=syscall.kind, agent_id=syscall.agent_id,
                            route=Placement(self.settings, lambda: self.redis).route(syscall), note="approved")
        finally:
            app.close()

    def deny(self, syscall_id: str, reason: str = "denied by an operator") -> None:
        """Refuse it: the caller gets :class:`ApprovalDenied`; nothing ran."""
        request = self.get(syscall_id)  # before the decision overwrites its reason with the operator's
        self._transition(syscall_id, DENIED, reason)
        now = time.time()
        answer_denied(self.redis, self.settings, syscall_id, request.agent_id, f"{request.reason}: {reason}",
                      request.created_at, now)

    def expire(self, syscall_id: str) -> bool:
        """The caller gave up waiting: deny by default. True if it was still pending."""
        try:
            self._transition(syscall_id, EXPIRED, "deadline passed without approval")
            return True
        except AIOSError:
            return False


def answer_denied(client: redis.Redis, settings: Settings, syscall_id: str, agent_id: str, why: str, created: float,
                  now: float) -> None:
    """Answer a parked syscall with :class:`ApprovalDenied`, sealed with its agent's key (the operator's side
    holds the master key)."""
    from aios.policy.identity import Credentials

    response = Response(id=syscall_id, status=Status.ERROR,
                        error=ErrorInfo(code=ApprovalDenied.code, message=f"not approved: {why}"),
                        timing=Timing(created_at=created, started_at=now, finished_at=now), worker="approvals")
    key = Credentials(settings, client).key(agent_id) if settings.security.auth == "required" else None
    Replies(client, settings.broker.result_ttl_s).write_reply(response, agent_id=agent_id, key=key, kind=None,
                                                              once=True)


def _summary(syscall: Syscall) -> str:
    if isinstance(syscall, ToolSyscall):
        return f"{syscall.tool}({json.dumps(syscall.arguments)[:200]})"
    if isinstance(syscall, MemorySyscall):
        return f"memory {syscall.op} {syscall.key!r}"
    if isinstance(syscall, StorageSyscall):
        return f"files {syscall.op} {syscall.path!r}"
    return syscall.kind
