"""Irreversible operations wait for an operator: approve, deny, or let the deadline deny them.

A worker that receives an irreversible syscall (a tool declared ``irreversible``, deleting a memory item or a
file, sharing a file) does not run it: it parks the signed message in ``aios:approval:<id>`` with its
**digest** (SHA-256 of the canonical payload, :func:`aios.policy.identity.canonical`) and a readable summary,
and acknowledges it; the caller keeps waiting. The request is bound to that content: a later message under the
same id with another payload is refused (one Lua script parks or compares, atomically), so what an operator reads
in ``aios approvals`` is what runs. ``aios approve <id>`` (optionally ``--digest <prefix>`` to pin what was read)
marks it approved and publishes the stored message again, and a worker runs a delivery under an approved id only
if its digest is the approved one; ``aios deny <id>`` answers the caller with an error. A syscall whose deadline
passes while it waits is denied by the kernel itself (:class:`Expirer`, a thread in every worker): its caller is
answered ``ApprovalDenied`` through the one reply path, and an approval that comes later is refused. Either
way, nothing ran: everything is as it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from aios.broker.reply_queues import replies_for
from aios.policy.identity import canonical
from aios.settings import Settings
from aios.state import keys, scripts
from aios.state.connections import as_text, state_client
from aios.state.periodic import Periodic
from aios.wire.errors import ApprovalDenied, NotFound
from aios.wire.syscalls import ErrorInfo, MemorySyscall, Response, Status, StorageSyscall, Syscall, Timing, ToolSyscall

log = logging.getLogger("aios.approvals")

PENDING, APPROVED, DENIED, EXPIRED = "pending", "approved", "denied", "expired"
PARKED = "parked"
"""What :meth:`Approvals.park` says when it parked the syscall just now."""
SUMMARY_CHARS = 200
"""How much of a tool's code or arguments the summary shows (the digest covers all of it)."""
EXPIRY_INTERVAL_S = 0.5
"""How often each worker looks for parked syscalls past their deadline: well inside the SDK's reply grace
(``aios.sdk.core.REPLY_GRACE_S``), so that a caller always hears the denial."""
EXPIRY_BATCH = 100


def irreversible_reason(syscall: Syscall, service: Any) -> str | None:
    """Why ``syscall`` needs an operator's approval, or ``None`` if it can run at once (the service decides:
    :meth:`aios.services.base.Service.irreversible`)."""
    return service.irreversible(syscall)  # type: ignore[no-any-return]


def digest(payload: dict[str, Any]) -> str:
    """What an approval is bound to: SHA-256 (hex) of the syscall's canonical JSON (its signature aside)."""
    return hashlib.sha256(canonical(payload)).hexdigest()


@dataclass(frozen=True)
class Request:
    id: str
    agent_id: str
    kind: str
    reason: str
    """The kernel's: why it needs approval."""
    status: str
    created_at: float
    deadline: float
    summary: str
    digest: str
    note: str = ""
    """The operator's words when deciding (``aios deny --reason``), or why the kernel expired it."""
    payload: dict[str, Any] = field(default_factory=dict)
    """The parked signed syscall: what runs if approved."""

    def public(self) -> dict[str, Any]:
        status = EXPIRED if self.status == PENDING and time.time() > self.deadline else self.status
        return {"id": self.id, "agent_id": self.agent_id, "kind": self.kind, "summary": self.summary,
                "digest": self.digest, "reason": self.reason, "note": self.note, "status": status,
                "created_at": self.created_at, "deadline": self.deadline, "payload": self.payload}


class Approvals:
    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.redis = client or state_client(settings)
        self._park = scripts.register(self.redis, "approval_park")  # park once, or compare with what is parked
        self._decide = scripts.register(self.redis, "approval_decide")  # pending -> decided, once
        self._replies = replies_for(self.redis, settings)

    # -- worker side --------------------------------------------------------------------------------------

    def status(self, syscall_id: str) -> str | None:
        value = self.redis.hget(keys.approval(syscall_id), "status")
        return as_text(value) if value else None

    def park(self, syscall: Syscall, payload: dict[str, Any], reason: str) -> tuple[str, bool]:
        """Keep the signed message until someone decides, unless a request under its id exists already. Returns
        (``"parked"`` or the existing request's status, whether this payload is the one that request holds)."""
        got = self._park(keys=[keys.approval(syscall.id), keys.APPROVALS_PENDING], args=[
            digest(payload), json.dumps(payload), syscall.agent_id, syscall.kind, reason, summary(syscall),
            syscall.created_at, syscall.deadline, self.settings.broker.result_ttl_s, syscall.id])
        status, same = cast("list[Any]", got)
        return as_text(status), bool(same)

    def expire_due(self, now: float | None = None) -> list[str]:
        """Deny every parked syscall past its deadline and answer its caller (``ApprovalDenied``); the ids."""
        now = time.time() if now is None else now
        due = [as_text(i) for i in cast("list[bytes]", self.redis.zrangebyscore(
            keys.APPROVALS_PENDING, "-inf", now, start=0, num=EXPIRY_BATCH))]
        expired = []
        for syscall_id in due:
            try:
                request = self.get(syscall_id)
            except NotFound:  # gone with its TTL
                self.redis.zrem(keys.APPROVALS_PENDING, syscall_id)
                continue
            if request.deadline > now:  # the index is only an index (a request parked by an older kernel)
                self.redis.zadd(keys.APPROVALS_PENDING, {syscall_id: request.deadline})
                continue
            if self._transition(syscall_id, EXPIRED, "deadline passed without approval", raise_=False) != "ok":
                continue  # decided meanwhile (another worker's sweep, an operator)
            timeout = request.deadline - request.created_at
            self._answer_denied(request, f"not approved within its timeout of {timeout:g}s: denied, nothing ran. "
                                         f"An operator approves with `aios approve {syscall_id}` while it waits; "
                                         "raise timeout_s to give them time", now)
            expired.append(syscall_id)
        return expired

    # -- operator side ------------------------------------------------------------------------------------

    def get(self, syscall_id: str) -> Request:
        rec = {as_text(k): as_text(v) for k, v in self.redis.hgetall(keys.approval(syscall_id)).items()}
        if not rec:
            raise NotFound(f"no approval request {syscall_id!r}; list them with `aios approvals`")
        return Request(syscall_id, rec["agent_id"], rec["kind"], rec["reason"], rec["status"],
                       float(rec["created_at"]), float(rec["deadline"]), rec.get("summary", ""),
                       rec.get("digest", ""), rec.get("note", ""), json.loads(rec.get("payload") or "{}"))

    def pending(self) -> list[Request]:
        """What waits, the nearest deadline first."""
        ids = [as_text(i) for i in cast("list[bytes]", self.redis.zrange(keys.APPROVALS_PENDING, 0, -1))]
        out = []
        for i in ids:
            try:
                out.append(self.get(i))
            except NotFound:  # expired with its TTL
                self.redis.zrem(keys.APPROVALS_PENDING, i)
        return out

    def _transition(self, syscall_id: str, to: str, note: str, digest_prefix: str = "", *, raise_: bool = True
                    ) -> str:
        got = as_text(self._decide(keys=[keys.approval(syscall_id), keys.APPROVALS_PENDING],
                                   args=[to, time.time(), syscall_id, note, digest_prefix]))
        if not raise_ or got == "ok":
            return got
        if got == "missing":
            raise NotFound(f"no approval request {syscall_id!r}; list them with `aios approvals`")
        if got == "digest":
            raise ApprovalDenied(f"request {syscall_id} holds a payload whose digest does not start with "
                                 f"{digest_prefix!r}: nothing approved; check `aios approvals`")
        raise ApprovalDenied(f"request {syscall_id} is {got}, not pending: nothing to decide")

    def approve(self, syscall_id: str, *, digest_prefix: str = "", note: str = "approved by an operator") -> Request:
        """Mark approved exactly the payload parked under ``syscall_id`` (and, with ``digest_prefix``, only if its
        digest starts with that) and publish it again (through the one publish path, at the priority its policy
        gives it now): the next worker to take it runs it. Returns the request approved."""
        try:
            self._transition(syscall_id, APPROVED, note, digest_prefix.lower())
        except ApprovalDenied:
            if self.status(syscall_id) == EXPIRED:  # the deadline won: its caller hears it now, if not yet
                request = self.get(syscall_id)
                self._answer_denied(request, "its deadline passed before the approval came", time.time())
            raise
        request = self.get(syscall_id)  # the transition just found it: its payload is there
        if digest(request.payload) != request.digest:
            self._answer_denied(request, "its stored payload was altered after it was parked", time.time())
            raise ApprovalDenied(f"request {syscall_id}'s stored payload does not match its digest: the kernel's "
                                 "state was altered; nothing published")
        from aios.broker.app import make_app
        from aios.broker.publish import publish_syscall
        from aios.policy.placement import Placement
        from aios.wire.syscalls import decode_syscall

        syscall = decode_syscall(request.payload, max_bytes=self.settings.syscalls.max_payload_bytes)
        app = make_app(self.settings, name="aios-approvals")
        try:
            publish_syscall(app, request.payload, syscall_id=syscall_id, kind=syscall.kind, agent_id=syscall.agent_id,
                            route=Placement(self.settings, lambda: self.redis).route(syscall), note="approved")
        finally:
            app.close()
        return request

    def deny(self, syscall_id: str, note: str = "denied by an operator") -> None:
        """Refuse it: the caller gets :class:`ApprovalDenied` with the kernel's reason and ``note``; nothing ran."""
        self._transition(syscall_id, DENIED, note)
        self._answer_denied(self.get(syscall_id), note, time.time())

    def _answer_denied(self, request: Request, why: str, now: float) -> None:
        response = Response(id=request.id, status=Status.ERROR,
                            error=ErrorInfo(code=ApprovalDenied.code, message=f"not approved: {request.reason}: {why}"),
                            timing=Timing(created_at=request.created_at, started_at=now, finished_at=now),
                            worker="approvals")
        # Sealed with the agent's key: the kernel's side (workers, operators) holds the master key.
        key = None
        if self.settings.security.auth == "required":
            from aios.policy.identity import Credentials

            key = Credentials(self.settings, self.redis).key(request.agent_id)
        self._replies.write_reply(response, agent_id=request.agent_id, key=key, kind=None, once=True)


class Expirer:
    """A worker's thread that denies parked syscalls past their deadline (:meth:`Approvals.expire_due`) every
    :data:`EXPIRY_INTERVAL_S`. Every worker runs one; the decision script lets exactly one of them answer."""

    def __init__(self, approvals: Approvals, interval_s: float = EXPIRY_INTERVAL_S) -> None:
        self.approvals = approvals
        self._thread = Periodic("aios-approval-expiry", interval_s, self.run_once)

    def run_once(self) -> None:
        for syscall_id in self.approvals.expire_due():
            log.info("syscall %s was not approved before its deadline: denied", syscall_id)

    def start(self) -> "Expirer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._thread.stop()


def summary(syscall: Syscall) -> str:
    """What the operator reads in ``aios approvals``: the operation and what it touches, in printable text."""
    owner = getattr(syscall, "owner", None) or syscall.agent_id
    if isinstance(syscall, ToolSyscall):
        args = dict(syscall.arguments)
        code = args.pop("code", None)
        if isinstance(code, str):  # the python tool: its code is what matters
            text = f"tool {syscall.tool}: {_clip(code)}" + (f" (with {_clip(json.dumps(args))})" if args else "")
        else:
            text = f"tool {syscall.tool}: {_clip(json.dumps(syscall.arguments))}"
    elif isinstance(syscall, MemorySyscall):
        text = f"memory {syscall.op} of {owner}:{syscall.key}"
    elif isinstance(syscall, StorageSyscall):
        text = f"storage {syscall.op} of {owner}:/{syscall.path}"
        if syscall.op == "share":
            text += f" with {syscall.with_agent} ({syscall.mode})"
    else:
        text = syscall.kind
    return _printable(text)


def _clip(text: str) -> str:
    return text if len(text) <= SUMMARY_CHARS else f"{text[:SUMMARY_CHARS]}... (+{len(text) - SUMMARY_CHARS} chars)"


def _printable(text: str) -> str:
    """Control characters escaped: an agent's path or code must not move the operator's cursor or fake a line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
