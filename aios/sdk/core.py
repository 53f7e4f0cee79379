"""What both clients share below the calls: settings, building, signing, publishing and decoding syscalls.

Nothing here waits for an answer: that is the one thing :mod:`aios.sdk.sync` and :mod:`aios.sdk.asyncio` do
differently. A syscall is published as a Celery task on its resource's queue (task id = syscall id) through
:func:`aios.broker.publish.publish_syscall`, the kernel's one publish path, and answered through a one-element
Redis list (``aios:reply:<id>``) that the caller blocks on, so any number of syscalls can be in flight at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis
from amqp.exceptions import AMQPError
from kombu.exceptions import OperationalError

from aios.broker.app import make_app
from aios.broker.publish import DirectRedis, publish_syscall
from aios.broker.queues import queue_depth
from aios.policy.broker_users import agent_settings, refused_by_broker, without_user
from aios.policy.identity import SIG_FIELD, credential_file, load_secret, sign
from aios.policy.placement import Placement
from aios.settings import KIND_TO_RESOURCE, Settings, discover, get_settings
from aios.state import keys
from aios.state.connections import broker_client, publish_client
from aios.wire.errors import (
    AuthError,
    ConfigError,
    InvalidSyscall,
    KernelBusy,
    KernelUnavailable,
    PayloadTooLarge,
    SyscallTimeout,
    from_code,
)
from aios.wire.priority import DEFAULT_PRIORITY, check, is_redis_url
from aios.wire.seal import open_reply
from aios.wire.stream import Assembler
from aios.wire.syscalls import (
    CancelSyscall,
    ChatMessage,
    LLMSyscall,
    MemorySyscall,
    Response,
    Status,
    StorageSyscall,
    Syscall,
    ToolSpec,
    ToolSyscall,
)

Messages = str | Sequence[ChatMessage | dict[str, str]]
"""A prompt: one user message as a string, or ``ChatMessage``\\ s / ``{"role": ..., "content": ...}`` dicts."""
Tools = Iterable[ToolSpec | dict[str, Any]]
"""Tools an LLM may call: ``ToolSpec``\\ s or ``{"name", "description", "parameters"}`` dicts."""
DEPTH_CACHE_S = 0.1
"""Admission control looks at a queue's depth at most this often per client."""
REPLY_GRACE_S = 2.0
"""How long past a syscall's deadline the SDK keeps listening, for a reply already on its way."""


def _messages(messages: Messages) -> tuple[ChatMessage, ...]:
    if isinstance(messages, str):
        return (ChatMessage(role="user", content=messages),)
    return tuple(m if isinstance(m, ChatMessage) else ChatMessage(**m) for m in messages)  # type: ignore[arg-type]


def _tools(tools: Tools) -> tuple[ToolSpec, ...]:
    return tuple(t if isinstance(t, ToolSpec) else ToolSpec(**t) for t in tools)


@dataclass(frozen=True)
class Pending:
    """A syscall in flight: wait for it with ``Kernel.wait`` / ``AsyncKernel.wait``."""

    syscall: Syscall

    @property
    def id(self) -> str:
        return self.syscall.id


def resolve_settings(settings: Settings | None) -> Settings:
    """Settings with a broker: the configured one, else a running ``aios up`` kernel on this machine."""
    settings = settings or get_settings()
    if settings.broker_url is None:
        settings = discover(settings) or settings
    settings.require_broker()
    return settings


class _Core:
    """One agent's connection to the kernel, minus the waiting: see :class:`aios.sdk.Kernel` for the arguments."""

    def __init__(self, agent_id: str, *, settings: Settings | None = None, priority: int = DEFAULT_PRIORITY,
                 timeout_s: float | None = None, credential: str | None = None) -> None:
        self.settings = resolve_settings(settings)
        self.agent_id = agent_id
        self.priority = check(priority)
        self.timeout_s = timeout_s or self.settings.syscalls.default_timeout_s
        ToolSyscall(agent_id=agent_id, tool="noop")  # raises a clear ValidationError for a bad agent id
        self._broker_url = without_user(self.settings.require_broker())  # for messages: no password in them
        self._secret = credential or load_secret(self.settings, agent_id)
        if self._secret is None and self.settings.security.auth == "required":
            raise ConfigError(
                f"no credential for agent {agent_id!r}: run `aios agent create {agent_id}` (it writes "
                f"{credential_file(self.settings, agent_id)}), or pass credential= / set AIOS_AGENT_SECRET"
            )
        if self._secret is not None:  # from here on, this process holds only its agent's own broker user
            self.settings = agent_settings(self.settings, agent_id, self._secret)
        self._amqp_replies = not is_redis_url(self.settings.require_broker())
        """On RabbitMQ, replies come on the agent's own reply queue (no Redis at all)."""
        # Replies are sealed with the agent's key by a kernel that checks identities (AIOS_AUTH=required).
        self._seal_key = self._secret if self.settings.security.auth == "required" else None
        self._app = make_app(self.settings, name=f"aios-sdk-{agent_id}")
        self._broker: redis.Redis | None = None  # a Redis broker's own lists, for admission control
        self._direct: DirectRedis | None = None  # a Redis broker: publishes without Celery's machinery
        # No kernel state here: the worker places a syscall by its policy (a fair policy's levels included).
        self._placement = Placement(self.settings, None)
        self._depth_seen: dict[str, tuple[float, int]] = {}  # queue -> (when, depth)
        self._forged: dict[str, AuthError] = {}  # syscall id -> a forged reply seen while waiting
        try:
            self._open_replies()
        except Exception as exc:
            if refused_by_broker(exc):  # RabbitMQ: the agent's own user may not read its reply queue (any more)
                raise self._refused(exc) from None
            raise

    def _refused(self, exc: BaseException) -> AuthError:
        return AuthError(f"the broker refused agent {self.agent_id!r}'s own user ({exc}): its credential was revoked "
                         f"or replaced; an operator issues a new one with `aios agent create {self.agent_id}`",
                         code="broker_refused")

    def _open_replies(self) -> None:
        """Open the connection this client waits for replies on (each client its own kind)."""
        raise NotImplementedError

    def _common(self, priority: int | None, timeout_s: float | None) -> dict[str, Any]:
        return {"agent_id": self.agent_id, "priority": self.priority if priority is None else priority,
                "timeout_s": self.timeout_s if timeout_s is None else timeout_s}

    # -- builders: the syscall behind each SDK call, for submit() / gather() -------------------------------

    def llm_syscall(self, messages: Messages, output: str = "text", *, json_schema: dict[str, Any] | None = None,
                    tools: Tools = (), max_tokens: int = 256, temperature: float = 0.0, model: str | None = None,
                    priority: int | None = None, timeout_s: float | None = None, **options: Any) -> LLMSyscall:
        """An LLM syscall; ``output``: ``text``, ``json`` (with ``json_schema``) or ``tool_call`` (with ``tools``).
        ``options``: the syscall's other fields (``top_p``, ``seed``, ``stop``, ``tool_choice``,
        ``parallel_tool_calls``, ``stream``: see :class:`~aios.wire.syscalls.LLMSyscall`)."""
        return LLMSyscall(messages=_messages(messages), output=output, json_schema=json_schema,  # type: ignore[arg-type]
                          tools=_tools(tools), max_tokens=max_tokens, temperature=temperature, model=model,
                          **options, **self._common(priority, timeout_s))

    def tool_syscall(self, name: str, arguments: dict[str, Any] | None = None, *, priority: int | None = None,
                     timeout_s: float | None = None) -> ToolSyscall:
        """A syscall that runs tool ``name`` with ``arguments``."""
        return ToolSyscall(tool=name, arguments=arguments or {}, **self._common(priority, timeout_s))

    def tool_syscalls(self, tool_calls: Iterable[dict[str, Any]], *, priority: int | None = None,
                      timeout_s: float | None = None) -> list[ToolSyscall]:
        """One syscall per ``{"name": ..., "arguments": {...}}``, as ``llm_chat_with_tool_call_output`` returns them."""
        out = []
        for i, call in enumerate(tool_calls):
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                raise ValueError(f"tool call {i} must be a dict with a 'name' string and an 'arguments' dict, "
                                 f"like the LLM's tool_calls; got {call!r}")
            out.append(self.tool_syscall(call["name"], call.get("arguments") or {}, priority=priority,
                                         timeout_s=timeout_s))
        return out

    def memory_syscall(self, op: str, key: str | None = None, value: Any = None, *, owner: str | None = None,
                       priority: int | None = None, timeout_s: float | None = None, query: str | None = None,
                       k: int = 5) -> MemorySyscall:
        """``owner``: another agent's memory (needs its grant, see ``aios grant``); ``None``: this agent's own.
        ``query``, ``k``: for op ``search``."""
        return MemorySyscall(op=op, key=key, value=value, owner=owner, query=query, k=k,  # type: ignore[arg-type]
                             **self._common(priority, timeout_s))

    def storage_syscall(self, op: str, path: str = "", content: str | None = None, *, owner: str | None = None,
                        priority: int | None = None, timeout_s: float | None = None, if_version: int | None = None,
                        with_version: bool = False, version: int | None = None, at: float | None = None,
                        with_agent: str | None = None, mode: Literal["read", "write"] = "read", query: str | None = None,
                        k: int = 5, texts: Sequence[str] = ()) -> StorageSyscall:
        """``owner``: another agent's files (needs its grant, see ``aios grant``); ``None``: this agent's own.
        The other keywords are the op's fields (see :class:`~aios.wire.syscalls.StorageSyscall`)."""
        return StorageSyscall(op=op, path=path, content=content, owner=owner,  # type: ignore[arg-type]
                              if_version=if_version, with_version=with_version, version=version, at=at,
                              with_agent=with_agent, mode=mode, query=query, k=k, texts=tuple(texts),
                              **self._common(priority, timeout_s))

    def cancel_syscall(self, target: "str | Pending", *, priority: int | None = None,
                       timeout_s: float | None = None) -> CancelSyscall:
        """A signed request to cancel ``target`` (a syscall id of this agent's, or its :class:`Pending`)."""
        return CancelSyscall(target=target.id if isinstance(target, Pending) else target,
                             **self._common(priority, timeout_s))

    # -- the wire ----------------------------------------------------------------------------------------

    def _payload(self, syscall: Syscall) -> dict[str, Any]:
        """The signed payload of ``syscall``, checked as the kernel will (agent, timeout, size)."""
        if syscall.agent_id != self.agent_id:
            raise ValueError(f"this client acts for agent {self.agent_id!r}, not {syscall.agent_id!r}: "
                             "make one Kernel per agent")
        cap = self.settings.syscalls.max_syscall_timeout_s
        if syscall.timeout_s > cap:
            raise InvalidSyscall(f"timeout_s {syscall.timeout_s:g} is above the kernel's limit of {cap:g}s "
                                 "(AIOS_MAX_SYSCALL_TIMEOUT_S): lower it, or have the operator raise the limit")
        payload = syscall.model_dump(mode="json")
        if self._secret is not None:
            payload[SIG_FIELD] = sign(payload, self._secret)
        size = len(json.dumps(payload, separators=(",", ":")))
        if size > self.settings.syscalls.max_payload_bytes:
            raise PayloadTooLarge(
                f"syscall is {size} bytes; the limit is {self.settings.syscalls.max_payload_bytes} (AIOS_MAX_PAYLOAD_BYTES): "
                "store large data with write_file and pass its path"
            )
        return payload

    def _publish(self, syscall: Syscall) -> Pending:
        payload = self._payload(syscall)
        try:
            route = self._placement.route(syscall)
            self._admit(syscall, route.resource, route.queue)
            publish_syscall(self._app, payload, syscall_id=syscall.id, kind=syscall.kind, agent_id=syscall.agent_id,
                            route=route, from_agent=True, direct=self._direct_publisher())
        except (OperationalError, redis.ConnectionError, redis.ResponseError, AMQPError, ConnectionError) as exc:
            if refused_by_broker(exc):
                raise self._refused(exc) from None
            raise KernelUnavailable(
                f"cannot reach the broker at {self._broker_url}: {exc}; start the kernel with `aios up` "
                "or check AIOS_BROKER_URL"
            ) from None
        return Pending(syscall)

    def _admit(self, syscall: Syscall, resource: str, queue: str) -> None:
        """Admission control: past AIOS_MAX_QUEUE_DEPTH waiting syscalls, wait for room or raise KernelBusy."""
        limit = self.settings.scheduling.max_queue_depth
        if limit is None:
            return
        pause = 0.02
        while True:
            when, depth = self._depth_seen.get(queue, (0.0, 0))
            now = time.time()
            if now - when > DEPTH_CACHE_S:  # one look per DEPTH_CACHE_S, not one per syscall
                depth = queue_depth(self._app, self.settings, queue, self._broker_redis()) or 0
                self._depth_seen[queue] = (now, depth)
            if depth < limit:
                return
            if self.settings.scheduling.admission == "fail" or now + pause > syscall.deadline:
                raise KernelBusy(
                    f"kernel busy: {depth} syscalls wait on queue {queue}, the limit is {limit} "
                    f"(AIOS_MAX_QUEUE_DEPTH); retry later, add {resource} workers, or raise the limit")
            time.sleep(pause)
            pause = min(0.5, pause * 1.5)
            self._depth_seen.pop(queue, None)

    def _direct_publisher(self) -> DirectRedis | None:
        if self._direct is None and is_redis_url(self._broker_url) and DirectRedis.usable(self._app):
            self._direct = DirectRedis(publish_client(self.settings))
        return self._direct

    def _broker_redis(self) -> redis.Redis | None:
        if self._broker is None and is_redis_url(self._broker_url):
            self._broker = broker_client(self.settings)
        return self._broker

    # -- the answer ----------------------------------------------------------------------------------------

    def _wait_s(self, pending: Pending) -> float:
        return max(0.01, pending.syscall.deadline - time.time() + REPLY_GRACE_S)

    def _timeout(self, pending: Pending) -> SyscallTimeout:
        s = pending.syscall
        resource = KIND_TO_RESOURCE[s.kind]
        return SyscallTimeout(
            f"no answer to {s.kind} syscall {s.id} within {s.timeout_s}s: is a {resource} worker "
            f"serving queue {self._placement.queue(s)}? Check `aios status`, or raise timeout_s"
        )

    def _reply_key(self, pending: Pending) -> str:
        return keys.reply(self.agent_id, pending.id)

    def _response(self, pending: Pending, raw: bytes | str) -> Response | None:
        """The response in a reply, ``None`` for a reply the kernel did not seal for this syscall (dropped: the
        caller goes on waiting for the real one, and is told at its deadline)."""
        blob = raw.decode() if isinstance(raw, bytes) else raw
        try:
            return Response.model_validate_json(open_reply(blob, self._seal_key, pending.id))
        except AuthError as exc:
            self._forged[pending.id] = exc
            return None

    def _accept(self, pending: Pending, got: bytes | str | None) -> Response | None:
        """What one wait for a reply gave: the response, ``None`` to wait on (a reply not sealed for this syscall
        was dropped); raises when the wait ran out (:class:`AuthError` if only forgeries came, else a timeout)."""
        if got is None:
            raise self._no_answer(pending)
        return self._response(pending, got)

    def _no_answer(self, pending: Pending) -> Exception:
        forged = self._forged.pop(pending.id, None)
        return forged or self._timeout(pending)

    def _stream_step(self, pending: Pending, assembler: Assembler, got: bytes | str | None) -> str:
        """One wait of a streamed syscall: the new text it brought (``""`` for none). Raises as :meth:`_accept`
        when the wait ran out."""
        if got is None:
            if assembler.forged is not None:
                self._forged[pending.id] = assembler.forged
            raise self._no_answer(pending)
        return assembler.feed(got.decode() if isinstance(got, bytes) else got)

    @staticmethod
    def _unwrap(response: Response) -> Any:
        if response.status is Status.ERROR:
            assert response.error is not None
            raise from_code(response.error.code, response.error.message)
        return response.result

    def _close_shared(self) -> None:
        """Close what both clients hold (each client also closes its reply connection)."""
        if self._broker is not None:
            self._broker.close()
        if self._direct is not None:
            self._direct.close()
        self._app.close()
