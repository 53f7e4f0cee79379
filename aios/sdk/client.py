"""The SDK: how an agent (any Python process) makes syscalls, synchronously or with asyncio.

    from aios import Kernel
    k = Kernel("my-agent")
    k.llm_chat("What is the capital of France?")
    k.call_tool("calculator", expression="17 * 23")

A syscall is published as a Celery task on its resource's queue (task id = syscall id) and answered through
a one-element Redis list the caller blocks on, so any number of syscalls can be in flight at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import redis
import redis.asyncio as aredis
from kombu.exceptions import OperationalError

from aios.state import keys
from aios.broker.app import make_app
from aios.wire.errors import (
    ApprovalDenied, ConfigError, KernelBusy, KernelUnavailable, PayloadTooLarge, SyscallTimeout, from_code,
)
from aios.policy.identity import SIG_FIELD, credential_file, load_secret, sign
from aios.wire.priority import DEFAULT_PRIORITY, check, is_redis_url
from aios.policy.placement import Placement
from aios.settings import KIND_TO_RESOURCE, QUEUES, Settings, get_settings, llm_queue
from aios.broker.publish import publish_syscall
from aios.broker.queues import queue_depth
from aios.state.connections import async_state_client, broker_client, state_client
from aios.wire.syscalls import (
    ChatMessage, LLMSyscall, MemorySyscall, Response, Status, StorageSyscall, Syscall, ToolSpec, ToolSyscall,
)

Messages = str | Sequence[ChatMessage | dict[str, str]]
DEPTH_CACHE_S = 0.1
"""Admission control looks at a queue's depth at most this often per client."""
REPLY_GRACE_S = 2.0
"""How long past a syscall's deadline the SDK keeps listening, for a reply already on its way."""


def _messages(messages: Messages) -> tuple[ChatMessage, ...]:
    if isinstance(messages, str):
        return (ChatMessage(role="user", content=messages),)
    return tuple(m if isinstance(m, ChatMessage) else ChatMessage(**m) for m in messages)


def _tools(tools: Iterable[ToolSpec | dict[str, Any]]) -> tuple[ToolSpec, ...]:
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
        from aios.ops.embedded import discover

        settings = discover(settings) or settings
    settings.require_broker()
    return settings


class _Core:
    """What the sync and async clients share: building, publishing and decoding syscalls."""

    def __init__(self, agent_id: str, *, settings: Settings | None = None, priority: int = DEFAULT_PRIORITY,
                 timeout_s: float | None = None, credential: str | None = None) -> None:
        self.settings = resolve_settings(settings)
        self.agent_id = agent_id
        self.priority = check(priority)
        self.timeout_s = timeout_s or self.settings.default_timeout_s
        self._app = make_app(self.settings, name=f"aios-sdk-{agent_id}")
        self._broker_url = self.settings.require_broker()
        self._check_agent_id()
        self._approvals: Any = None
        self._state: redis.Redis | None = None  # kernel state, for the fair policy and admission control
        self._broker: redis.Redis | None = None  # a Redis broker's own lists, for admission control
        self._placement = Placement(self.settings, self._state_redis)
        self._depth_seen: dict[str, tuple[float, int]] = {}  # queue -> (when, depth)
        self._secret = credential or load_secret(self.settings, agent_id)
        if self._secret is None and self.settings.auth == "required":
            raise ConfigError(
                f"no credential for agent {agent_id!r}: run `aios agent create {agent_id}` (it writes "
                f"{credential_file(self.settings, agent_id)}), or pass credential= / set AIOS_AGENT_SECRET"
            )

    def _check_agent_id(self) -> None:
        ToolSyscall(agent_id=self.agent_id, tool="noop")  # raises a clear ValidationError for a bad agent id

    def _common(self, priority: int | None, timeout_s: float | None) -> dict[str, Any]:
        return {"agent_id": self.agent_id, "priority": self.priority if priority is None else priority,
                "timeout_s": self.timeout_s if timeout_s is None else timeout_s}

    # -- builders: the syscall behind each SDK call, for submit() / gather() -------------------------------

    def llm_syscall(self, messages: Messages, output: str = "text", *, json_schema: dict[str, Any] | None = None,
               tools: Iterable[ToolSpec | dict[str, Any]] = (), max_tokens: int = 256, temperature: float = 0.0,
               model: str | None = None, priority: int | None = None, timeout_s: float | None = None) -> LLMSyscall:
        return LLMSyscall(messages=_messages(messages), output=output, json_schema=json_schema,  # type: ignore[arg-type]
                          tools=_tools(tools), max_tokens=max_tokens, temperature=temperature, model=model,
                          **self._common(priority, timeout_s))

    def tool_syscall(self, name: str, arguments: dict[str, Any] | None = None, *, priority: int | None = None,
                     timeout_s: float | None = None) -> ToolSyscall:
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
                        with_agent: str | None = None, mode: str = "read", query: str | None = None, k: int = 5
                        ) -> StorageSyscall:
        """``owner``: another agent's files (needs its grant, see ``aios grant``); ``None``: this agent's own.
        The other keywords are the op's fields (see :class:`~aios.syscalls.StorageSyscall`)."""
        return StorageSyscall(op=op, path=path, content=content, owner=owner,  # type: ignore[arg-type]
                              if_version=if_version, with_version=with_version, version=version, at=at,
                              with_agent=with_agent, mode=mode, query=query, k=k, **self._common(priority, timeout_s))

    # -- the wire ----------------------------------------------------------------------------------------

    def _publish(self, syscall: Syscall) -> Pending:
        if syscall.agent_id != self.agent_id:
            raise ValueError(f"this client acts for agent {self.agent_id!r}, not {syscall.agent_id!r}: "
                             "make one Kernel per agent")
        payload = syscall.model_dump(mode="json")
        if self._secret is not None:
            payload[SIG_FIELD] = sign(payload, self._secret)
        size = len(json.dumps(payload, separators=(",", ":")))
        if size > self.settings.max_payload_bytes:
            raise PayloadTooLarge(
                f"syscall is {size} bytes; the limit is {self.settings.max_payload_bytes} (AIOS_MAX_PAYLOAD_BYTES): "
                "store large data with write_file and pass its path"
            )
        try:
            route = self._placement.route(syscall)
            self._admit(syscall, route.resource, route.queue)
            publish_syscall(self._app, payload, syscall_id=syscall.id, kind=syscall.kind, agent_id=syscall.agent_id,
                            route=route)
        except (OperationalError, redis.ConnectionError) as exc:
            raise KernelUnavailable(
                f"cannot reach the broker at {self._broker_url}: {exc}; start the kernel with `aios up` "
                "or check AIOS_BROKER_URL"
            ) from None
        return Pending(syscall)

    def _state_redis(self) -> redis.Redis:
        if self._state is None:
            self._state = state_client(self.settings)
        return self._state

    def _queue(self, syscall: Syscall, resource: str) -> str:
        return self._placement.queue(syscall)

    def _admit(self, syscall: Syscall, resource: str, queue: str) -> None:
        """Admission control: past AIOS_MAX_QUEUE_DEPTH waiting syscalls, wait for room or raise KernelBusy."""
        limit = self.settings.max_queue_depth
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
            if self.settings.admission == "fail" or now + pause > syscall.deadline:
                raise KernelBusy(
                    f"kernel busy: {depth} syscalls wait on queue {queue}, the limit is {limit} "
                    f"(AIOS_MAX_QUEUE_DEPTH); retry later, add {resource} workers, or raise the limit")
            time.sleep(pause)
            pause = min(0.5, pause * 1.5)
            self._depth_seen.pop(queue, None)

    def _broker_redis(self) -> "redis.Redis[bytes] | None":
        if self._broker is None and is_redis_url(self._broker_url):
            self._broker = broker_client(self.settings)
        return self._broker

    def _wait_s(self, pending: Pending) -> float:
        return max(0.01, pending.syscall.deadline - time.time() + REPLY_GRACE_S)

    def _expired_approval(self, pending: Pending) -> ApprovalDenied | None:
        """If the syscall was parked for approval, deny it now (the caller stops waiting) and say so."""
        from aios.policy.approvals import Approvals

        if self._approvals is None:
            self._approvals = Approvals(self.settings)
        if not self._approvals.expire(pending.id):
            return None
        return ApprovalDenied(
            f"{pending.syscall.kind} syscall {pending.id} is irreversible and was not approved within its timeout of "
            f"{pending.syscall.timeout_s}s: denied, nothing ran. An operator approves with `aios approve {pending.id}`"
            " while it waits; raise timeout_s to give them time"
        )

    def _timeout(self, pending: Pending) -> SyscallTimeout:
        s = pending.syscall
        return SyscallTimeout(
            f"no answer to {s.kind} syscall {s.id} within {s.timeout_s}s: is a {KIND_TO_RESOURCE[s.kind]} worker "
            f"serving queue {self._queue(s, KIND_TO_RESOURCE[s.kind])}? Check `aios status`, or raise timeout_s"
        )

    @staticmethod
    def _response(raw: bytes) -> Response:
        return Response.model_validate_json(raw)

    @staticmethod
    def _unwrap(response: Response) -> Any:
        if response.status is Status.ERROR:
            assert response.error is not None
            raise from_code(response.error.code, response.error.message)
        return response.result

    def close(self) -> None:
        if self._approvals is not None:
            self._approvals.redis.close()
        if self._state is not None:
            self._state.close()
        if self._broker is not None:
            self._broker.close()
        self._app.close()


# Post-processing of each SDK call's result, shared by both clients.
_CONTENT: Callable[[Any], Any] = lambda r: r["content"]
_JSON: Callable[[Any], Any] = lambda r: r["json"]
_TOOL_CALLS: Callable[[Any], Any] = lambda r: r["tool_calls"]
_VALUE: Callable[[Any], Any] = lambda r: r["value"]
_KEYS: Callable[[Any], Any] = lambda r: r["keys"]
_SAME: Callable[[Any], Any] = lambda r: r
_KEY: Callable[[Any], Any] = lambda r: r["key"]
_RESULTS: Callable[[Any], Any] = lambda r: r["results"]
_VERSIONS: Callable[[Any], Any] = lambda r: r["versions"]
_CONTENT_VERSION: Callable[[Any], Any] = lambda r: (r["content"], r["version"])


class Kernel(_Core):
    """Synchronous SDK for one agent. Thread-safe: share one per process or make one per thread."""

    def __init__(self, agent_id: str, **kwargs: Any) -> None:
        super().__init__(agent_id, **kwargs)
        # No socket timeout: BLPOP waits as long as the syscall may take (redis-py's default would cut it at 5 s).
        self._redis = state_client(self.settings, socket_timeout_s=None)

    def submit(self, syscall: Syscall) -> Pending:
        return self._publish(syscall)

    def wait_response(self, pending: Pending) -> Response:
        try:
            got = self._redis.blpop([keys.reply(pending.id)], timeout=self._wait_s(pending))
        except redis.ConnectionError as exc:
            raise KernelUnavailable(f"cannot reach the kernel's Redis: {exc}; check AIOS_REDIS_URL") from None
        if got is None:
            raise self._expired_approval(pending) or self._timeout(pending)
        return self._response(got[1])

    def wait(self, pending: Pending) -> Any:
        return self._unwrap(self.wait_response(pending))

    def call(self, syscall: Syscall) -> Any:
        return self.wait(self.submit(syscall))

    def gather(self, syscalls: Iterable[Syscall], *, return_exceptions: bool = False) -> list[Any]:
        """Submit all, then collect the answers in order: they run concurrently on the workers."""
        pendings = [self.submit(s) for s in syscalls]
        out: list[Any] = []
        for p in pendings:
            try:
                out.append(self.wait(p))
            except Exception as exc:
                if not return_exceptions:
                    raise
                out.append(exc)
        return out

    def _do(self, syscall: Syscall, post: Callable[[Any], Any]) -> Any:
        return post(self.call(syscall))

    # -- LLM
    def llm_chat(self, messages: Messages, **kw: Any) -> str:
        return self._do(self.llm_syscall(messages, "text", **kw), _CONTENT)

    def llm_chat_with_json_output(self, messages: Messages, json_schema: dict[str, Any] | None = None, **kw: Any) -> Any:
        return self._do(self.llm_syscall(messages, "json", json_schema=json_schema, **kw), _JSON)

    def llm_chat_with_tool_call_output(self, messages: Messages, tools: Iterable[ToolSpec | dict[str, Any]], **kw: Any
                                       ) -> list[dict[str, Any]]:
        return self._do(self.llm_syscall(messages, "tool_call", tools=tools, **kw), _TOOL_CALLS)

    # -- tools
    def call_tool(self, tool: str, arguments: dict[str, Any] | None = None, /, *, priority: int | None = None,
                  timeout_s: float | None = None, **kwargs: Any) -> Any:
        """Arguments as keywords, or as a dict (for arguments named like ``priority`` or ``timeout_s``)."""
        return self._do(self.tool_syscall(tool, {**(arguments or {}), **kwargs}, priority=priority,
                                          timeout_s=timeout_s), _SAME)

    def call_tools(self, tool_calls: Iterable[dict[str, Any]], *, priority: int | None = None,
                   timeout_s: float | None = None) -> list[Any]:
        """Run every call of an LLM's ``tool_calls`` at once; results in the same order.

        Each call is its own syscall, so they run in parallel on the tool workers (as far as each tool's
        concurrency limit allows). A call that fails has its exception in its place; the others still run.
        """
        return self.gather(self.tool_syscalls(tool_calls, priority=priority, timeout_s=timeout_s),
                           return_exceptions=True)

    # -- memory
    def memory_put(self, key: str, value: Any, *, owner: str | None = None, **kw: Any) -> Any:
        return self._do(self.memory_syscall("put", key, value, owner=owner, **kw), _SAME)

    def memory_get(self, key: str, *, owner: str | None = None, **kw: Any) -> Any:
        return self._do(self.memory_syscall("get", key, owner=owner, **kw), _VALUE)

    def memory_delete(self, key: str, *, owner: str | None = None, **kw: Any) -> Any:
        return self._do(self.memory_syscall("delete", key, owner=owner, **kw), _SAME)

    def memory_list(self, *, owner: str | None = None, **kw: Any) -> list[str]:
        return self._do(self.memory_syscall("list", owner=owner, **kw), _KEYS)

    # -- files
    def write_file(self, path: str, content: str, *, owner: str | None = None, if_version: int | None = None,
                   **kw: Any) -> Any:
        """Create or replace, keeping a version. ``if_version``: only if the file is still at that version
        (0: only if it does not exist), else ``Conflict``. Returns path, bytes and the new version."""
        return self._do(self.storage_syscall("write", path, content, owner=owner, if_version=if_version, **kw),
                        _SAME)

    def read_file(self, path: str, *, owner: str | None = None, **kw: Any) -> str:
        return self._do(self.storage_syscall("read", path, owner=owner, **kw), _CONTENT)

    def list_files(self, path: str = "", *, owner: str | None = None, **kw: Any) -> Any:
        return self._do(self.storage_syscall("list", path, owner=owner, **kw), _SAME)

    def delete_file(self, path: str, *, owner: str | None = None, **kw: Any) -> Any:
        return self._do(self.storage_syscall("delete", path, owner=owner, **kw), _SAME)

    # -- the paper's memory calls
    def create_memory(self, value: Any, key: str | None = None, *, owner: str | None = None, **kw: Any) -> str:
        """A new memory item; returns its key (a fresh one unless given). ``Conflict`` if the key exists."""
        return self._do(self.memory_syscall("create", key, value, owner=owner, **kw), _KEY)

    def get_memory(self, key: str, *, owner: str | None = None, **kw: Any) -> Any:
        return self._do(self.memory_syscall("get", key, owner=owner, **kw), _VALUE)

    def update_memory(self, key: str, value: Any, *, owner: str | None = None, **kw: Any) -> Any:
        """Replace an existing item's value; ``NotFound`` if there is none."""
        return self._do(self.memory_syscall("update", key, value, owner=owner, **kw), _SAME)

    def delete_memory(self, key: str, *, owner: str | None = None, **kw: Any) -> Any:
        return self._do(self.memory_syscall("delete", key, owner=owner, **kw), _SAME)

    def search_memories(self, query: str, k: int = 5, *, owner: str | None = None, **kw: Any) -> list[dict[str, Any]]:
        """The ``k`` items closest in meaning to ``query``, fast and durable tiers alike: key, value, score."""
        return self._do(self.memory_syscall("search", query=query, k=k, owner=owner, **kw), _RESULTS)

    def memory_stats(self, *, owner: str | None = None, **kw: Any) -> dict[str, Any]:
        """Fast-tier use against the budget, items in all, hits and misses (this storage worker's)."""
        return self._do(self.memory_syscall("stats", owner=owner, **kw), _SAME)

    # -- the paper's storage calls
    def mount(self, *, owner: str | None = None, **kw: Any) -> Any:
        """Make sure the agent's file namespace exists; every path is relative to it."""
        return self._do(self.storage_syscall("mount", owner=owner, **kw), _SAME)

    def create_file(self, path: str, content: str = "", *, owner: str | None = None, **kw: Any) -> Any:
        """A new file (version 1); ``Conflict`` if it exists."""
        return self._do(self.storage_syscall("create", path, content, owner=owner, **kw), _SAME)

    def create_dir(self, path: str, *, owner: str | None = None, **kw: Any) -> Any:
        return self._do(self.storage_syscall("mkdir", path, owner=owner, **kw), _SAME)

    def read_file_versioned(self, path: str, *, owner: str | None = None, **kw: Any) -> tuple[str, int]:
        """(content, version): pass the version as ``if_version`` to a later ``write_file``."""
        return self._do(self.storage_syscall("read", path, owner=owner, with_version=True, **kw), _CONTENT_VERSION)

    def retrieve_file(self, query: str, k: int = 5, *, owner: str | None = None, **kw: Any) -> list[dict[str, Any]]:
        """Files closest in meaning to ``query``: path, score and the best-matching snippet."""
        return self._do(self.storage_syscall("search", owner=owner, query=query, k=k, **kw), _RESULTS)

    def rollback_file(self, path: str, version: int | None = None, *, at: float | None = None,
                      owner: str | None = None, **kw: Any) -> Any:
        """Restore ``version`` (or the version current at Unix time ``at``) as a new version."""
        return self._do(self.storage_syscall("rollback", path, owner=owner, version=version, at=at, **kw), _SAME)

    def file_versions(self, path: str, *, owner: str | None = None, **kw: Any) -> list[dict[str, Any]]:
        return self._do(self.storage_syscall("versions", path, owner=owner, **kw), _VERSIONS)

    def share_file(self, path: str, with_agent: str, mode: str = "read", *, owner: str | None = None, **kw: Any
                   ) -> Any:
        """Let ``with_agent`` read (or write) this one file, as ``owner=<this agent>``."""
        return self._do(self.storage_syscall("share", path, owner=owner, with_agent=with_agent, mode=mode, **kw),
                        _SAME)

    def delete(self, path: str, *, owner: str | None = None, **kw: Any) -> Any:
        """The paper's name for :meth:`delete_file` (a file with its versions, or an empty folder)."""
        return self.delete_file(path, owner=owner, **kw)

    def close(self) -> None:
        self._redis.close()
        super().close()

    def __enter__(self) -> "Kernel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncKernel(_Core):
    """asyncio SDK for one agent: every call is a coroutine; ``asyncio.gather`` keeps many in flight."""

    def __init__(self, agent_id: str, **kwargs: Any) -> None:
        super().__init__(agent_id, **kwargs)
        self._redis = async_state_client(self.settings)

    async def submit(self, syscall: Syscall) -> Pending:
        # Publishing is a blocking kombu call; keep it off the event loop.
        return await asyncio.to_thread(self._publish, syscall)

    async def wait_response(self, pending: Pending) -> Response:
        try:
            got = await self._redis.blpop([keys.reply(pending.id)], timeout=self._wait_s(pending))
        except aredis.ConnectionError as exc:
            raise KernelUnavailable(f"cannot reach the kernel's Redis: {exc}; check AIOS_REDIS_URL") from None
        if got is None:
            raise await asyncio.to_thread(self._expired_approval, pending) or self._timeout(pending)
        return self._response(got[1])

    async def wait(self, pending: Pending) -> Any:
        return self._unwrap(await self.wait_response(pending))

    async def call(self, syscall: Syscall) -> Any:
        return await self.wait(await self.submit(syscall))

    async def gather(self, syscalls: Iterable[Syscall], *, return_exceptions: bool = False) -> list[Any]:
        return await asyncio.gather(*(self.call(s) for s in syscalls), return_exceptions=return_exceptions)

    async def _do(self, syscall: Syscall, post: Callable[[Any], Any]) -> Any:
        return post(await self.call(syscall))

    async def llm_chat(self, messages: Messages, **kw: Any) -> str:
        return await self._do(self.llm_syscall(messages, "text", **kw), _CONTENT)

    async def llm_chat_with_json_output(self, messages: Messages, json_schema: dict[str, Any] | None = None,
                                        **kw: Any) -> Any:
        return await self._do(self.llm_syscall(messages, "json", json_schema=json_schema, **kw), _JSON)

    async def llm_chat_with_tool_call_output(self, messages: Messages, tools: Iterable[ToolSpec | dict[str, Any]],
                                             **kw: Any) -> list[dict[str, Any]]:
        return await self._do(self.llm_syscall(messages, "tool_call", tools=tools, **kw), _TOOL_CALLS)

    async def call_tool(self, tool: str, arguments: dict[str, Any] | None = None, /, *, priority: int | None = None,
                        timeout_s: float | None = None, **kwargs: Any) -> Any:
        return await self._do(self.tool_syscall(tool, {**(arguments or {}), **kwargs}, priority=priority,
                                                timeout_s=timeout_s), _SAME)

    async def call_tools(self, tool_calls: Iterable[dict[str, Any]], *, priority: int | None = None,
                         timeout_s: float | None = None) -> list[Any]:
        """See :meth:`Kernel.call_tools`."""
        return await self.gather(self.tool_syscalls(tool_calls, priority=priority, timeout_s=timeout_s),
                                 return_exceptions=True)

    async def memory_put(self, key: str, value: Any, *, owner: str | None = None, **kw: Any) -> Any:
        return await self._do(self.memory_syscall("put", key, value, owner=owner, **kw), _SAME)

    async def memory_get(self, key: str, *, owner: str | None = None, **kw: Any) -> Any:
        return await self._do(self.memory_syscall("get", key, owner=owner, **kw), _VALUE)

    async def memory_delete(self, key: str, *, owner: str | None = None, **kw: Any) -> Any:
        return await self._do(self.memory_syscall("delete", key, owner=owner, **kw), _SAME)

    async def memory_list(self, *, owner: str | None = None, **kw: Any) -> list[str]:
        return await self._do(self.memory_syscall("list", owner=owner, **kw), _KEYS)

    async def write_file(self, path: str, content: str, *, owner: str | None = None, if_version: int | None = None,
                         **kw: Any) -> Any:
        return await self._do(self.storage_syscall("write", path, content, owner=owner, if_version=if_version,
                                                   **kw), _SAME)

    async def read_file(self, path: str, *, owner: str | None = None, **kw: Any) -> str:
        return await self._do(self.storage_syscall("read", path, owner=owner, **kw), _CONTENT)

    async def list_files(self, path: str = "", *, owner: str | None = None, **kw: Any) -> Any:
        return await self._do(self.storage_syscall("list", path, owner=owner, **kw), _SAME)

    async def delete_file(self, path: str, *, owner: str | None = None, **kw: Any) -> Any:
        return await self._do(self.storage_syscall("delete", path, owner=owner, **kw), _SAME)

    # -- the paper's memory calls
    async def create_memory(self, value: Any, key: str | None = None, *, owner: str | None = None, **kw: Any) -> str:
        """A new memory item; returns its key (a fresh one unless given). ``Conflict`` if the key exists."""
        return await self._do(self.memory_syscall("create", key, value, owner=owner, **kw), _KEY)

    async def get_memory(self, key: str, *, owner: str | None = None, **kw: Any) -> Any:
        return await self._do(self.memory_syscall("get", key, owner=owner, **kw), _VALUE)

    async def update_memory(self, key: str, value: Any, *, owner: str | None = None, **kw: Any) -> Any:
        """Replace an existing item's value; ``NotFound`` if there is none."""
        return await self._do(self.memory_syscall("update", key, value, owner=owner, **kw), _SAME)

    async def delete_memory(self, key: str, *, owner: str | None = None, **kw: Any) -> Any:
        return await self._do(self.memory_syscall("delete", key, owner=owner, **kw), _SAME)

    async def search_memories(self, query: str, k: int = 5, *, owner: str | None = None, **kw: Any) -> list[dict[str, Any]]:
        """The ``k`` items closest in meaning to ``query``, fast and durable tiers alike: key, value, score."""
        return await self._do(self.memory_syscall("search", query=query, k=k, owner=owner, **kw), _RESULTS)

    async def memory_stats(self, *, owner: str | None = None, **kw: Any) -> dict[str, Any]:
        """Fast-tier use against the budget, items in all, hits and misses (this storage worker's)."""
        return await self._do(self.memory_syscall("stats", owner=owner, **kw), _SAME)

    # -- the paper's storage calls
    async def mount(self, *, owner: str | None = None, **kw: Any) -> Any:
        """Make sure the agent's file namespace exists; every path is relative to it."""
        return await self._do(self.storage_syscall("mount", owner=owner, **kw), _SAME)

    async def create_file(self, path: str, content: str = "", *, owner: str | None = None, **kw: Any) -> Any:
        """A new file (version 1); ``Conflict`` if it exists."""
        return await self._do(self.storage_syscall("create", path, content, owner=owner, **kw), _SAME)

    async def create_dir(self, path: str, *, owner: str | None = None, **kw: Any) -> Any:
        return await self._do(self.storage_syscall("mkdir", path, owner=owner, **kw), _SAME)

    async def read_file_versioned(self, path: str, *, owner: str | None = None, **kw: Any) -> tuple[str, int]:
        """(content, version): pass the version as ``if_version`` to a later ``write_file``."""
        return await self._do(self.storage_syscall("read", path, owner=owner, with_version=True, **kw), _CONTENT_VERSION)

    async def retrieve_file(self, query: str, k: int = 5, *, owner: str | None = None, **kw: Any) -> list[dict[str, Any]]:
        """Files closest in meaning to ``query``: path, score and the best-matching snippet."""
        return await self._do(self.storage_syscall("search", owner=owner, query=query, k=k, **kw), _RESULTS)

    async def rollback_file(self, path: str, version: int | None = None, *, at: float | None = None,
                      owner: str | None = None, **kw: Any) -> Any:
        """Restore ``version`` (or the version current at Unix time ``at``) as a new version."""
        return await self._do(self.storage_syscall("rollback", path, owner=owner, version=version, at=at, **kw), _SAME)

    async def file_versions(self, path: str, *, owner: str | None = None, **kw: Any) -> list[dict[str, Any]]:
        return await self._do(self.storage_syscall("versions", path, owner=owner, **kw), _VERSIONS)

    async def share_file(self, path: str, with_agent: str, mode: str = "read", *, owner: str | None = None, **kw: Any
                   ) -> Any:
        """Let ``with_agent`` read (or write) this one file, as ``owner=<this agent>``."""
        return await self._do(self.storage_syscall("share", path, owner=owner, with_agent=with_agent, mode=mode, **kw),
                        _SAME)

    async def delete(self, path: str, *, owner: str | None = None, **kw: Any) -> Any:
        """The paper's name for :meth:`delete_file` (a file with its versions, or an empty folder)."""
        return await self.delete_file(path, owner=owner, **kw)

    async def aclose(self) -> None:
        await self._redis.aclose()
        self.close()

    async def __aenter__(self) -> "AsyncKernel":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
