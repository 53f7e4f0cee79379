"""Every SDK call, written once for both clients.

Each call is a method of :class:`Operations` under ``@operation``. The method does not wait for anything: it
builds the syscall(s) and says how their raw results become the call's value, as a :class:`Call`. The client it
is called on runs that ``Call``: :class:`~aios.sdk.Kernel` blocks and returns the value, and
:class:`~aios.sdk.AsyncKernel` returns a coroutine of it. So ``k.read_file("a.txt")`` is a ``str`` on a
``Kernel`` and ``await ak.read_file("a.txt")`` is one on an ``AsyncKernel``, from the one definition below.

Typing. Python has no "the same type, wrapped or not" (no higher-kinded types), so a plain mixin method that
returned ``self._do(...)`` could be typed only ``Any`` or with two overloads per call, which would write every
signature three times. Instead ``@operation`` makes each call an :class:`Operation` descriptor, generic over the
call's parameters (a ``ParamSpec``) and its value: looked up on a ``Kernel`` it is typed
``Callable[P, T]``, on an ``AsyncKernel`` ``Callable[P, Coroutine[Any, Any, T]]`` (overloads of ``__get__``,
once, here). mypy, pyright and IDEs check and complete both clients from the one signature; at run time the
bound call carries that signature (``inspect.signature``) and the docstring (``help``).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Concatenate, Generic, Literal, ParamSpec, TypeVar, overload

from aios.sdk.core import Messages, Pending, Tools, _Core
from aios.wire.syscalls import Syscall

if TYPE_CHECKING:
    from aios.sdk.asyncio import AsyncKernel
    from aios.sdk.sync import Kernel

P = ParamSpec("P")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
Info = dict[str, Any]
"""A result dict as the service returns it (its fields are listed in docs/sdk.md)."""


@dataclass(frozen=True)
class Call(Generic[T]):
    """What one SDK call does: the syscalls it sends (all in flight at once), and how their raw results, in
    order, become its value. ``each_may_fail``: a failed syscall's exception takes its place in the results
    instead of being raised."""

    syscalls: tuple[Syscall, ...]
    post: Callable[[list[Any]], T]
    each_may_fail: bool = False
    stream: bool = False
    """The value is the one syscall's text as it is decoded (a ``TokenStream`` / ``AsyncTokenStream``)."""


def _one(syscall: Syscall, field: str | None = None) -> Call[Any]:
    """One syscall; the call's value is its result, or the result's ``field``."""
    if field is None:
        return Call((syscall,), lambda results: results[0])
    return Call((syscall,), lambda results: results[0][field])


class Operation(Generic[P, T]):
    """One SDK call: ``plan`` (the decorated method) turns the call's arguments into a :class:`Call`, and the
    client it is looked up on binds it (``_bind``): to a function on a ``Kernel``, a coroutine function on an
    ``AsyncKernel``."""

    def __init__(self, plan: Callable[Concatenate[Any, P], Call[T]]) -> None:
        self.plan = plan
        self.__name__ = plan.__name__
        self.__qualname__ = plan.__qualname__
        self.__doc__ = plan.__doc__
        self.__wrapped__ = plan
        self._signature: inspect.Signature | None = None

    @property
    def signature(self) -> inspect.Signature:
        """The call as the clients offer it: no ``self``, returning the value (``T``, not ``Call[T]``)."""
        if self._signature is None:
            hints = typing.get_type_hints(self.plan)
            sig = inspect.signature(self.plan)
            params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in list(sig.parameters.values())[1:]]
            self._signature = sig.replace(parameters=params, return_annotation=typing.get_args(hints["return"])[0])
        return self._signature

    @property
    def __signature__(self) -> inspect.Signature:
        """As a method of the client class (``help(Kernel)``): the call's signature after ``self``."""
        params = list(inspect.signature(self.plan).parameters.values())[:1] + list(self.signature.parameters.values())
        return self.signature.replace(parameters=params)

    def __call__(self, client: Any, /, *args: P.args, **kwargs: P.kwargs) -> Any:
        """``Kernel.read_file(k, path)``, as for any method: ``k.read_file(path)``."""
        return self.__get__(client)(*args, **kwargs)

    def dress(self, client: object, bound: F) -> F:
        """``bound`` (the client's function for this call) with this call's name, docstring and signature."""
        bound.__name__ = self.__name__
        bound.__qualname__ = f"{type(client).__name__}.{self.__name__}"
        bound.__doc__ = self.__doc__
        bound.__module__ = type(client).__module__
        bound.__signature__ = self.signature  # type: ignore[attr-defined]  # inspect reads it; typeshed omits it
        return bound

    @overload
    def __get__(self, client: None, owner: type[Any] | None = None) -> Operation[P, T]: ...
    @overload
    def __get__(self, client: Kernel, owner: type[Any] | None = None) -> Callable[P, T]: ...
    @overload
    def __get__(self, client: AsyncKernel, owner: type[Any] | None = None) -> Callable[P, Coroutine[Any, Any, T]]: ...

    def __get__(self, client: Any, owner: type[Any] | None = None) -> Any:
        if client is None:
            return self
        return client._bind(self)


def operation(plan: Callable[Concatenate[Any, P], Call[T]]) -> Operation[P, T]:
    """Make ``plan`` an SDK call of both clients (see the module docstring)."""
    return Operation(plan)


class Operations(_Core):
    """The SDK calls. Every memory and file call also takes ``owner=`` (another agent's data, with its grant);
    every call takes ``priority=`` and ``timeout_s=``, which override the client's defaults for that syscall."""

    # -- LLM ---------------------------------------------------------------------------------------------

    @operation
    def llm_chat(self, messages: Messages, *, max_tokens: int = 256, temperature: float = 0.0,
                 model: str | None = None, priority: int | None = None, timeout_s: float | None = None,
                 stream: bool = False) -> Call[str]:
        """The model's reply to ``messages`` (a string: one user message; or ``ChatMessage``\\ s or
        ``{"role", "content"}`` dicts), as text. ``model``: a core of ``AIOS_LLM_MODELS``, or the served model.
        ``stream=True``: instead, a ``TokenStream`` (``AsyncTokenStream`` on ``AsyncKernel``) that yields the
        text as it is decoded, its ``result`` set at the end; typed code can call ``stream(syscall)`` directly."""
        syscall = self.llm_syscall(messages, "text", max_tokens=max_tokens, temperature=temperature, model=model,
                                   priority=priority, timeout_s=timeout_s, stream=stream)
        if stream:
            return Call((syscall,), lambda results: results[0], stream=True)
        return _one(syscall, "content")

    @operation
    def llm_chat_with_json_output(self, messages: Messages, json_schema: dict[str, Any] | None = None, *,
                                  max_tokens: int = 256, temperature: float = 0.0, model: str | None = None,
                                  priority: int | None = None, timeout_s: float | None = None) -> Call[Any]:
        """The reply as parsed JSON, valid against ``json_schema`` (without one: a JSON object).
        ``BackendError`` if the output is invalid or cut off at ``max_tokens``."""
        return _one(self.llm_syscall(messages, "json", json_schema=json_schema, max_tokens=max_tokens,
                                     temperature=temperature, model=model, priority=priority, timeout_s=timeout_s),
                    "json")

    @operation
    def llm_chat_with_tool_call_output(self, messages: Messages, tools: Tools, *, max_tokens: int = 256,
                                       temperature: float = 0.0, model: str | None = None, priority: int | None = None,
                                       timeout_s: float | None = None) -> Call[list[Info]]:
        """The tools the model calls: ``[{"name": str, "arguments": dict}]``, each valid against its tool's
        ``parameters``. ``tools``: ``ToolSpec``\\ s or ``{"name", "description", "parameters"}`` dicts."""
        return _one(self.llm_syscall(messages, "tool_call", tools=tools, max_tokens=max_tokens,
                                     temperature=temperature, model=model, priority=priority, timeout_s=timeout_s),
                    "tool_calls")

    @operation
    def embed(self, texts: list[str], *, priority: int | None = None, timeout_s: float | None = None) -> Call[Info]:
        """The kernel's embedding model on ``texts`` (at most 256): ``{"model", "dim", "vectors": [[float]],
        "tokens"}``, one unit-length vector per text; nothing is stored."""
        return _one(self.storage_syscall("embed", texts=texts, priority=priority, timeout_s=timeout_s))

    # -- control -----------------------------------------------------------------------------------------

    @operation
    def cancel(self, syscall: str | Pending, *, priority: int | None = None,
               timeout_s: float | None = None) -> Call[bool]:
        """Cancel one of this agent's own syscalls (its id, or the ``Pending`` of ``submit``): a queued one never
        starts, a running generation stops within one engine step; its caller gets ``Cancelled``. ``True`` if the
        cancel was recorded before the syscall was answered, ``False`` if it was answered already. A cancel naming
        another agent's syscall is recorded under this agent's name and has no effect on it."""
        return _one(self.cancel_syscall(syscall, priority=priority, timeout_s=timeout_s), "cancelled")

    # -- tools -------------------------------------------------------------------------------------------

    @operation
    def call_tool(self, tool: str, arguments: dict[str, Any] | None = None, /, *, priority: int | None = None,
                  timeout_s: float | None = None, **kwargs: Any) -> Call[Any]:
        """What tool ``tool`` returns. Arguments as keywords, or as a dict (the way for arguments named like
        ``priority`` or ``timeout_s``); they are checked against the tool's JSON schema before it runs."""
        return _one(self.tool_syscall(tool, {**(arguments or {}), **kwargs}, priority=priority, timeout_s=timeout_s))

    @operation
    def call_tools(self, tool_calls: Iterable[dict[str, Any]], *, priority: int | None = None,
                   timeout_s: float | None = None) -> Call[list[Any]]:
        """Run every call of an LLM's ``tool_calls`` at once; their results in the same order.

        Each call is its own syscall, so they run in parallel on the tool workers (as far as each tool's
        concurrency limit allows). A call that fails has its exception in its place; the others still run.
        """
        syscalls = tuple(self.tool_syscalls(tool_calls, priority=priority, timeout_s=timeout_s))
        return Call(syscalls, lambda results: results, each_may_fail=True)

    # -- memory: the paper's calls -----------------------------------------------------------------------

    @operation
    def create_memory(self, value: Any, key: str | None = None, *, owner: str | None = None,
                      priority: int | None = None, timeout_s: float | None = None) -> Call[str]:
        """A new memory item; returns its key (a fresh one unless given). ``Conflict`` if the key exists."""
        return _one(self.memory_syscall("create", key, value, owner=owner, priority=priority, timeout_s=timeout_s),
                    "key")

    @operation
    def get_memory(self, key: str, *, owner: str | None = None, priority: int | None = None,
                   timeout_s: float | None = None) -> Call[Any]:
        """The item's value; ``NotFound`` if there is none. An item moved out of the fast tier comes back."""
        return _one(self.memory_syscall("get", key, owner=owner, priority=priority, timeout_s=timeout_s), "value")

    @operation
    def update_memory(self, key: str, value: Any, *, owner: str | None = None, priority: int | None = None,
                      timeout_s: float | None = None) -> Call[Info]:
        """Replace an existing item's value: ``{"key", "created": False}``; ``NotFound`` if there is none."""
        return _one(self.memory_syscall("update", key, value, owner=owner, priority=priority, timeout_s=timeout_s))

    @operation
    def delete_memory(self, key: str, *, owner: str | None = None, priority: int | None = None,
                      timeout_s: float | None = None) -> Call[Info]:
        """Delete the item: ``{"key", "deleted": bool}``. Irreversible: waits for an operator's approval."""
        return _one(self.memory_syscall("delete", key, owner=owner, priority=priority, timeout_s=timeout_s))

    @operation
    def search_memories(self, query: str, k: int = 5, *, owner: str | None = None, priority: int | None = None,
                        timeout_s: float | None = None) -> Call[list[Info]]:
        """The ``k`` items closest in meaning to ``query``, fast and durable tiers alike: key, value, score."""
        return _one(self.memory_syscall("search", query=query, k=k, owner=owner, priority=priority,
                                        timeout_s=timeout_s), "results")

    @operation
    def memory_stats(self, *, owner: str | None = None, priority: int | None = None,
                     timeout_s: float | None = None) -> Call[Info]:
        """Fast-tier use against the budget, items in all, hits and misses (this storage worker's)."""
        return _one(self.memory_syscall("stats", owner=owner, priority=priority, timeout_s=timeout_s))

    # -- memory: key-value (the same items) --------------------------------------------------------------

    @operation
    def memory_put(self, key: str, value: Any, *, owner: str | None = None, priority: int | None = None,
                   timeout_s: float | None = None) -> Call[Info]:
        """Create or replace the item ``key`` (any plain JSON value): ``{"key", "created": bool}``."""
        return _one(self.memory_syscall("put", key, value, owner=owner, priority=priority, timeout_s=timeout_s))

    @operation
    def memory_get(self, key: str, *, owner: str | None = None, priority: int | None = None,
                   timeout_s: float | None = None) -> Call[Any]:
        """The item's value, as :meth:`get_memory`."""
        return _one(self.memory_syscall("get", key, owner=owner, priority=priority, timeout_s=timeout_s), "value")

    @operation
    def memory_delete(self, key: str, *, owner: str | None = None, priority: int | None = None,
                      timeout_s: float | None = None) -> Call[Info]:
        """Delete the item, as :meth:`delete_memory` (waits for approval)."""
        return _one(self.memory_syscall("delete", key, owner=owner, priority=priority, timeout_s=timeout_s))

    @operation
    def memory_list(self, *, owner: str | None = None, priority: int | None = None,
                    timeout_s: float | None = None) -> Call[list[str]]:
        """The agent's keys, sorted, both tiers."""
        return _one(self.memory_syscall("list", owner=owner, priority=priority, timeout_s=timeout_s), "keys")

    # -- files -------------------------------------------------------------------------------------------

    @operation
    def mount(self, *, owner: str | None = None, priority: int | None = None,
              timeout_s: float | None = None) -> Call[Info]:
        """Make sure the agent's file namespace exists; every path is relative to it."""
        return _one(self.storage_syscall("mount", owner=owner, priority=priority, timeout_s=timeout_s))

    @operation
    def create_file(self, path: str, content: str = "", *, owner: str | None = None, priority: int | None = None,
                    timeout_s: float | None = None) -> Call[Info]:
        """A new file (version 1): ``{"path", "bytes", "version"}``; ``Conflict`` if it exists."""
        return _one(self.storage_syscall("create", path, content, owner=owner, priority=priority,
                                         timeout_s=timeout_s))

    @operation
    def create_dir(self, path: str, *, owner: str | None = None, priority: int | None = None,
                   timeout_s: float | None = None) -> Call[Info]:
        """A folder, with its parents (an existing one is fine): ``{"path", "created": True}``."""
        return _one(self.storage_syscall("mkdir", path, owner=owner, priority=priority, timeout_s=timeout_s))

    @operation
    def write_file(self, path: str, content: str, *, if_version: int | None = None, owner: str | None = None,
                   priority: int | None = None, timeout_s: float | None = None) -> Call[Info]:
        """Create or replace, keeping a version: ``{"path", "bytes", "version"}``. ``if_version``: only if the
        file is still at that version (0: only if it does not exist), else ``Conflict``."""
        return _one(self.storage_syscall("write", path, content, owner=owner, if_version=if_version,
                                         priority=priority, timeout_s=timeout_s))

    @operation
    def read_file(self, path: str, *, owner: str | None = None, priority: int | None = None,
                  timeout_s: float | None = None) -> Call[str]:
        """The file's text (UTF-8)."""
        return _one(self.storage_syscall("read", path, owner=owner, priority=priority, timeout_s=timeout_s),
                    "content")

    @operation
    def read_file_versioned(self, path: str, *, owner: str | None = None, priority: int | None = None,
                            timeout_s: float | None = None) -> Call[tuple[str, int]]:
        """(content, version), one snapshot: pass the version as ``if_version`` to a later ``write_file``."""
        syscall = self.storage_syscall("read", path, owner=owner, with_version=True, priority=priority,
                                       timeout_s=timeout_s)
        return Call((syscall,), lambda results: (results[0]["content"], results[0]["version"]))

    @operation
    def list_files(self, path: str = "", *, owner: str | None = None, priority: int | None = None,
                   timeout_s: float | None = None) -> Call[Info]:
        """A folder's entries: ``{"path", "entries": [{"name", "type": "file"|"dir", "bytes"}]}``."""
        return _one(self.storage_syscall("list", path, owner=owner, priority=priority, timeout_s=timeout_s))

    @operation
    def file_versions(self, path: str, *, owner: str | None = None, priority: int | None = None,
                      timeout_s: float | None = None) -> Call[list[Info]]:
        """The file's versions, oldest first: ``[{"version", "created_at", "bytes", "note"}]``."""
        return _one(self.storage_syscall("versions", path, owner=owner, priority=priority, timeout_s=timeout_s),
                    "versions")

    @operation
    def rollback_file(self, path: str, version: int | None = None, *, at: float | None = None,
                      owner: str | None = None, priority: int | None = None,
                      timeout_s: float | None = None) -> Call[Info]:
        """Restore ``version`` (or the version current at Unix time ``at``) as a new version:
        ``{"path", "bytes", "version", "restored"}``."""
        return _one(self.storage_syscall("rollback", path, owner=owner, version=version, at=at, priority=priority,
                                         timeout_s=timeout_s))

    @operation
    def share_file(self, path: str, with_agent: str, mode: Literal["read", "write"] = "read", *,
                   owner: str | None = None, priority: int | None = None,
                   timeout_s: float | None = None) -> Call[Info]:
        """Let ``with_agent`` read (or write) this one file, as ``owner=<this agent>``:
        ``{"path", "shared_with", "mode"}``. A permission change: waits for an operator's approval."""
        return _one(self.storage_syscall("share", path, owner=owner, with_agent=with_agent, mode=mode,
                                         priority=priority, timeout_s=timeout_s))

    @operation
    def retrieve_file(self, query: str, k: int = 5, *, owner: str | None = None, priority: int | None = None,
                      timeout_s: float | None = None) -> Call[list[Info]]:
        """Files closest in meaning to ``query``: ``[{"path", "score", "snippet"}]``, best first."""
        return _one(self.storage_syscall("search", owner=owner, query=query, k=k, priority=priority,
                                         timeout_s=timeout_s), "results")

    @operation
    def delete_file(self, path: str, *, owner: str | None = None, priority: int | None = None,
                    timeout_s: float | None = None) -> Call[Info]:
        """Delete a file with its versions, or an empty folder: ``{"path", "deleted": bool}``. Waits for
        an operator's approval."""
        return _one(self.storage_syscall("delete", path, owner=owner, priority=priority, timeout_s=timeout_s))

    @operation
    def delete(self, path: str, *, owner: str | None = None, priority: int | None = None,
               timeout_s: float | None = None) -> Call[Info]:
        """The paper's name for :meth:`delete_file`."""
        return _one(self.storage_syscall("delete", path, owner=owner, priority=priority, timeout_s=timeout_s))
