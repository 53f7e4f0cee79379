"""The tool manager: a registry of tools, each declaring a JSON schema that its arguments must satisfy.

Arguments are validated before a tool runs; an invalid one gets an error naming the field. Every call has a time
limit and, where a tool declares one, a concurrency limit. Built-in tools: calculator (:mod:`aios.services.tools.calculator`), Python in a sandbox
(:mod:`aios.services.tools.sandbox`), files in the calling agent's own storage, and HTTP GET restricted to an allow-list.
Third-party and MCP tools come from :mod:`aios.services.tools.plugins` and go through the same validation.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any

import pydantic_core
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import ValidationError

from aios.services.base import BaseService
from aios.services.tools import sandbox
from aios.services.tools.calculator import calculate
from aios.services.tools.threads import ToolThreads
from aios.settings import Settings, get_settings
from aios.state.context import Snapshot
from aios.wire.errors import (
    AIOSError,
    DeadlineExceeded,
    InvalidSyscall,
    InvalidToolArguments,
    ToolError,
    UnknownTool,
)
from aios.wire.syscalls import StorageSyscall, Syscall, ToolSpec, ToolSyscall

log = logging.getLogger("aios.worker")


@dataclass(frozen=True)
class ToolContext:
    """Who is calling: given to a tool whose function takes a keyword ``ctx``."""

    agent_id: str
    syscall_id: str
    settings: Settings
    deadline: float | None = None
    """Unix time by which the call must be over (its syscall's deadline or service-time limit): a tool that can
    be killed (the sandboxed ``python`` tool) is given no more time than is left."""

    def left_s(self, want: float) -> float:
        """``want`` seconds, or less if the deadline comes first (at least a moment, so a limit reads as one)."""
        return want if self.deadline is None else max(0.01, min(want, self.deadline - time.time()))


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any]
    irreversible: bool = False
    timeout_s: float = 30.0
    """Wall-clock limit of one call, waiting for a free slot included."""
    max_concurrency: int | None = None
    """How many calls may run at once in one worker process; ``None``: no limit beyond the worker's threads."""
    inline: bool = False
    """Run on the worker's own thread, with no time limit: only for built-ins that return at once whatever their
    (validated) arguments (``noop``, ``echo``, ``word_count``, ``current_time``), where handing the call to a tool
    thread and back cost more than the tool itself."""
    at_most_once: bool = False
    """Its effect must never happen twice (a payment, a message sent): a syscall delivered again after a copy
    started it (its worker died mid-call, or lost its lease) is answered ``interrupted`` instead of running again.
    Off (the default), a tool runs at least once: a worker killed after the effect but before the answer was stored
    runs it again on redelivery, so its effect should be idempotent (keyed on ``ctx.syscall_id``)."""
    validator: Draft202012Validator = field(init=False, repr=False, compare=False)
    wants_ctx: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            self.spec()  # the name must be one a model can be offered (letters, digits, _ and -, at most 64)
        except ValidationError:
            raise ValueError(f"tool name {self.name!r} must be 1-64 letters, digits, '_' or '-', "
                             "not starting with a digit or '-'") from None
        try:
            Draft202012Validator.check_schema(self.parameters)
        except SchemaError as exc:
            raise ValueError(f"tool {self.name!r} declares an invalid JSON schema: {exc.message}") from None
        if not self.timeout_s > 0 or (self.max_concurrency is not None and self.max_concurrency < 1):
            raise ValueError(f"tool {self.name!r}: timeout_s must be > 0 and max_concurrency >= 1")
        object.__setattr__(self, "validator", Draft202012Validator(self.parameters))
        object.__setattr__(self, "wants_ctx", _takes_ctx(self.fn))
        if self.wants_ctx and "ctx" in self.parameters.get("properties", {}):
            raise ValueError(f"tool {self.name!r}: 'ctx' is reserved for the caller's context, not an argument")

    def spec(self) -> ToolSpec:
        """What an LLM syscall needs to offer this tool to a model."""
        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters)


def _takes_ctx(fn: Callable[..., Any]) -> bool:
    try:
        param = inspect.signature(fn).parameters.get("ctx")
    except (TypeError, ValueError):  # some builtins have no signature
        return False
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)


class ToolRegistry:
    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._threads = ToolThreads()
        self._lock = threading.Lock()
        self.abandoned = 0
        """Tool threads still running a call whose caller stopped waiting (its time limit, a cancel): each holds
        a thread (and the tool's concurrency slot) until its function returns."""

    def register(self, tool: Tool) -> Tool:
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} is already registered")
        self._tools[tool.name] = tool
        if tool.max_concurrency is not None:
            self._slots[tool.name] = threading.BoundedSemaphore(tool.max_concurrency)
        return tool

    def tool(self, name: str, description: str, parameters: dict[str, Any], *, irreversible: bool = False,
             timeout_s: float = 30.0, max_concurrency: int | None = None, at_most_once: bool = False
             ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator form of :meth:`register`; the function receives the validated arguments as keywords."""
        def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.register(Tool(name, description, parameters, fn, irreversible, timeout_s, max_concurrency,
                               at_most_once=at_most_once))
            return fn
        return wrap

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            known = ", ".join(sorted(self._tools)) or "none"
            raise UnknownTool(f"unknown tool {name!r}; registered tools: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._tools)

    def specs(self) -> list[ToolSpec]:
        return [self._tools[n].spec() for n in self.names()]

    def catalog(self) -> list[dict[str, Any]]:
        """Every tool as JSON: its spec and whether it needs an operator's approval (``irreversible``)."""
        return [{**self._tools[n].spec().model_dump(), "irreversible": self._tools[n].irreversible}
                for n in self.names()]

    def validate(self, name: str, arguments: dict[str, Any]) -> Tool:
        tool = self.get(name)
        errors = sorted(tool.validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
        if errors:
            parts = []
            for err in errors:
                where = ".".join(str(p) for p in err.absolute_path)
                parts.append(f"arguments.{where}: {err.message}" if where else f"arguments: {err.message}")
            raise InvalidToolArguments(f"invalid arguments for tool {name!r}: " + "; ".join(parts))
        if tool.wants_ctx and "ctx" in arguments:
            raise InvalidToolArguments(f"invalid arguments for tool {name!r}: arguments.ctx: 'ctx' is reserved")
        return tool

    def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext | None = None,
             stop: "Future[Any] | None" = None) -> Any:
        """Validate, then run the tool within its time limit (``stop``: a future whose exception, once set, the
        caller raises at once instead of waiting on: a cancel).

        The function runs on a daemon thread (reused between calls: :mod:`aios.services.tools.threads`) and the
        caller waits at most ``timeout_s``, or until the syscall's deadline in ``ctx``. A Python thread cannot
        be killed, so a tool past its limit is abandoned, not stopped: it keeps its thread (and its concurrency
        slot) until it returns, counted in :attr:`abandoned`. Only the sandboxed ``python`` tool is truly killed,
        by its own limits in the child (given no more time than the syscall has left).
        """
        tool = self.validate(name, arguments)
        kwargs = dict(arguments)
        if tool.wants_ctx:
            if ctx is None:
                raise ToolError(f"tool {name!r} acts for the calling agent and needs its context (ctx)")
            kwargs["ctx"] = ctx
        if tool.inline and name not in self._slots:
            return tool.fn(**kwargs)
        # Its own limit, or the syscall's (its deadline, AIOS_MAX_SYSCALL_TIMEOUT_S), whichever comes first.
        limit_s = tool.timeout_s if ctx is None else ctx.left_s(tool.timeout_s)
        deadline = time.monotonic() + limit_s
        slot = self._slots.get(name)
        if slot is not None and not slot.acquire(timeout=limit_s):
            raise ToolError(f"tool {name!r} is busy ({tool.max_concurrency} calls running) and no slot freed up "
                            f"within its time limit of {limit_s:g} s; retry later")
        future: Future[Any] = Future()
        left = [False]  # the caller stopped waiting: the thread is counted in ``abandoned`` until it returns

        def run() -> None:
            try:
                future.set_result(tool.fn(**kwargs))
            except Exception as exc:
                future.set_exception(exc)
            except BaseException as exc:  # SystemExit and the like must not escape into the worker
                future.set_exception(ToolError(f"tool {name!r} failed: {type(exc).__name__}"))
            finally:
                if slot is not None:
                    slot.release()
                with self._lock:
                    if left[0]:
                        self.abandoned -= 1

        self._threads.run(run)
        # wait(), not result(timeout): a tool that itself raises TimeoutError must not read as our time limit.
        watched = [future] if stop is None else [future, stop]
        wait(watched, timeout=max(0.0, deadline - time.monotonic()), return_when=FIRST_COMPLETED)
        with self._lock:
            if not future.done():
                left[0] = True
                self.abandoned += 1
        if left[0]:
            log.warning("tool %r: its caller stopped waiting; its thread runs on (%d abandoned in this worker)",
                        name, self.abandoned)
            if stop is not None and stop.done():  # a cancel, or the syscall's own limit: its error
                stop.result()
            if limit_s < tool.timeout_s:
                raise DeadlineExceeded(f"tool {name!r} was stopped after {limit_s:.1f} s: its syscall's time ran out "
                                       "(its timeout_s, or AIOS_MAX_SYSCALL_TIMEOUT_S of service time); raise "
                                       "timeout_s")
            raise ToolError(f"tool {name!r} exceeded its time limit of {limit_s:g} s")
        try:
            return future.result()
        except AIOSError:  # ToolError, and storage's AccessDenied / NotFound, pass through as they are
            raise
        except Exception as exc:  # the tool's own failure is the caller's answer, not a worker crash
            raise ToolError(f"tool {name!r} failed: {type(exc).__name__}: {exc}") from None


class ToolService(BaseService):
    """The tool worker's service. ``settings`` reach tools through :class:`ToolContext`."""

    def __init__(self, registry: ToolRegistry | None = None, settings: Settings | None = None) -> None:
        self.registry = registry or builtin_registry()
        self._settings = settings
        self._stops: dict[str, Future[Any]] = {}  # syscall id -> what abort() sets, while its tool runs

    @property
    def settings(self) -> Settings:
        if self._settings is None:  # read from the environment only when a call first needs them
            self._settings = get_settings()
        return self._settings

    def handle(self, syscall: Syscall, snapshot: Snapshot | None = None) -> Any:
        # No call outlives its syscall's deadline, nor AIOS_MAX_SYSCALL_TIMEOUT_S of service time.
        deadline = min(syscall.stop_at, time.time() + self.settings.syscalls.max_syscall_timeout_s)
        if not isinstance(syscall, ToolSyscall):
            raise InvalidSyscall(f"the tool service serves tool syscalls, not {syscall.kind!r}", code="wrong_queue")
        ctx = ToolContext(agent_id=syscall.agent_id, syscall_id=syscall.id, settings=self.settings,
                          deadline=deadline)
        stop: Future[Any] = Future()
        self._stops[syscall.id] = stop
        try:
            result = self.registry.call(syscall.tool, syscall.arguments, ctx=ctx, stop=stop)
        finally:
            self._stops.pop(syscall.id, None)
        if result is not None:
            _check_size(syscall.tool, result, self.settings.tools.max_result_bytes)
        return result

    def abort(self, syscall_id: str, exc: AIOSError) -> bool:
        """Stop waiting for the tool of ``syscall_id``: it is answered ``exc`` now; a Python thread cannot be
        killed, so the tool's thread is abandoned (it runs to its end, its result dropped)."""
        stop = self._stops.get(syscall_id)
        if stop is None or stop.done():
            return False
        stop.set_exception(exc)
        return True

    def _tool_of(self, syscall: Syscall) -> Tool | None:
        """The registered tool a syscall calls; ``None`` for another kind, or an unknown tool (``handle`` refuses it
        with a clear error)."""
        if not isinstance(syscall, ToolSyscall):
            return None
        try:
            return self.registry.get(syscall.tool)
        except UnknownTool:
            return None

    def irreversible(self, syscall: Syscall) -> str | None:
        tool = self._tool_of(syscall)
        return f"tool {tool.name!r} is irreversible" if tool is not None and tool.irreversible else None

    def at_most_once(self, syscall: Syscall) -> bool:
        tool = self._tool_of(syscall)
        return tool is not None and tool.at_most_once

    def concurrency_limit(self, syscall: Syscall) -> int | None:
        tool = self._tool_of(syscall)
        return None if tool is None else tool.max_concurrency


def _check_size(tool: str, result: Any, limit: int) -> None:
    """Refuse a result whose compact JSON (as the reply will carry it) is over ``limit`` bytes."""
    try:
        size = len(pydantic_core.to_json(result))
    except Exception:  # not JSON-able: the reply step answers that, as for any result
        return
    if size > limit:
        raise ToolError(f"tool {tool!r} returned {size:,} bytes of JSON, more than AIOS_MAX_RESULT_BYTES "
                        f"({limit:,}); nothing was stored. Ask it for less (a smaller range, shorter output), "
                        f"or the operator may raise the limit")


# -- files in the agent's own storage --------------------------------------------------------------------------

def _storage(ctx: ToolContext, op: str, path: str = "", content: str | None = None) -> Any:
    """The storage service run in this worker on ``ctx.settings.data_dir``: the tool worker must see the same
    data directory as the storage worker (same machine or shared volume), or agents see two different folders."""
    from aios.services.storage.service import (
        StorageService,  # imported late: storage pulls in the access manager
    )

    # index_files=False: only the storage worker process opens the vector store (Milvus Lite allows one).
    return StorageService(ctx.settings, index_files=False).handle(
        StorageSyscall(agent_id=ctx.agent_id, op=op, path=path, content=content))  # type: ignore[arg-type]


# -- HTTP fetch --------------------------------------------------------------------------------------------------

MAX_FETCH_BYTES = 1_000_000
FETCH_TIMEOUT_S = 10.0
MAX_REDIRECTS = 5


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # every redirect comes back as an HTTPError, to be checked against the allow-list first


def _allowed(url: str, allow: list[str]) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ToolError(f"http_fetch fetches http and https URLs only, not {url!r}")
    try:
        host, port = (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ToolError(f"http_fetch: {url!r} has an invalid port") from None
    for entry in allow:  # "host" allows every port; "host:port" only that one
        e = urllib.parse.urlsplit("//" + entry)
        if (e.hostname or "").lower() == host and (e.port is None or e.port == port):
            return
    listed = ", ".join(allow) or "empty, so nothing is allowed"
    raise ToolError(f"http_fetch: host {host!r} (port {port}) of {url!r} is not in the allow-list "
                    f"AIOS_HTTP_ALLOW ({listed}); the operator must add it")


def http_fetch(url: str, timeout_s: float = FETCH_TIMEOUT_S, *, ctx: ToolContext) -> dict[str, Any]:
    """GET ``url`` if its host is allowed (``AIOS_HTTP_ALLOW``, from the worker's settings), following redirects
    only to allowed hosts; the body is capped."""
    allow = ctx.settings.tools.http_allow_list()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)  # direct: the list is hosts
    deadline = time.monotonic() + timeout_s
    for _ in range(MAX_REDIRECTS + 1):
        _allowed(url, allow)
        request = urllib.request.Request(url, headers={"User-Agent": "aios-http-fetch/1"})
        try:
            response = opener.open(request, timeout=max(0.1, deadline - time.monotonic()))
        except urllib.error.HTTPError as exc:
            location = exc.headers.get("Location") if exc.code in (301, 302, 303, 307, 308) else None
            if location:
                exc.close()
                url = urllib.parse.urljoin(url, location)
                continue
            response = exc  # 4xx and 5xx: status and body are the answer
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ToolError(f"http_fetch could not fetch {url!r}: {reason}") from None
        with response:
            body = response.read(MAX_FETCH_BYTES + 1)
            charset = response.headers.get_content_charset() or "utf-8"
            return {"url": url, "status": response.status, "content_type": response.headers.get_content_type(),
                    "text": body[:MAX_FETCH_BYTES].decode(charset, errors="replace"),
                    "truncated": len(body) > MAX_FETCH_BYTES}
    raise ToolError(f"http_fetch: more than {MAX_REDIRECTS} redirects, last to {url!r}")


# -- the built-in registry -------------------------------------------------------------------------------------

def _sleep(seconds: float) -> dict[str, float]:
    time.sleep(seconds)
    return {"slept_s": seconds}


def _python(code: str, ctx: ToolContext, timeout_s: float = sandbox.TIMEOUT_S) -> dict[str, Any]:
    """The sandboxed python tool, given no more wall-clock time than its syscall has left (a margin before the
    deadline, so that the child is killed, and said so, before the caller stops waiting)."""
    allowed = ctx.left_s(timeout_s + PYTHON_MARGIN_S) - PYTHON_MARGIN_S
    if allowed <= 0:
        raise DeadlineExceeded("the python tool did not start: its syscall's time ran out; raise timeout_s")
    result = sandbox.run_python(code, timeout_s=min(timeout_s, allowed), memory_mb=sandbox.MEMORY_MB,
                                cpu_s=sandbox.CPU_S, allow_degraded=ctx.settings.tools.sandbox_degraded)
    if result["timed_out"] and allowed < timeout_s:
        raise DeadlineExceeded(f"the python tool was killed after {allowed:.1f} s: its syscall's time ran out (its "
                               "timeout_s, or AIOS_MAX_SYSCALL_TIMEOUT_S of service time); raise timeout_s")
    return result


PYTHON_MARGIN_S = 0.5


def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(required), "additionalProperties": False}


_TEXT = {"type": "string"}
_PATH = {"type": "string", "minLength": 1, "maxLength": 1024,
         "description": "relative to the agent's own folder, '/' between folders"}


def builtin_registry() -> ToolRegistry:
    reg = ToolRegistry()
    reg.register(Tool("calculator", "Evaluate an arithmetic expression, e.g. '17 * (3 + 4) / sqrt(2)'.",
                      _obj({"expression": {"type": "string", "minLength": 1}}, ("expression",)), calculate))
    reg.register(Tool("noop", "Do nothing and return null (used to measure the kernel's own overhead).",
                      _obj({}), lambda: None, inline=True))
    reg.register(Tool("echo", "Return the given text unchanged.", _obj({"text": _TEXT}, ("text",)),
                      lambda text: {"text": text}, inline=True))
    reg.register(Tool("word_count", "Count the words and characters of a text.", _obj({"text": _TEXT}, ("text",)),
                      lambda text: {"words": len(text.split()), "characters": len(text)}, inline=True))
    reg.register(Tool("sleep", "Wait the given number of seconds (at most 10), then return them.",
                      _obj({"seconds": {"type": "number", "minimum": 0, "maximum": 10}}, ("seconds",)),
                      _sleep))
    reg.register(Tool("current_time", "The current UTC time in ISO 8601.", _obj({}),
                      lambda: {"utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, inline=True))
    reg.register(Tool(
        "python",
        f"Run Python 3 code in a sandbox and return its stdout, stderr, exit_code and timed_out. Print what you "
        f"want to see. Standard library only; no network, no processes or threads; files only in a fresh scratch "
        f"folder (the current directory); {sandbox.MEMORY_MB} MB memory, {sandbox.CPU_S} s CPU.",
        _obj({"code": {"type": "string", "minLength": 1, "maxLength": 20_000},
              "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": sandbox.MAX_TIMEOUT_S,
                            "description": f"wall-clock limit, default {sandbox.TIMEOUT_S:g}"}}, ("code",)),
        _python,
        timeout_s=sandbox.MAX_TIMEOUT_S + 10, max_concurrency=max(2, os.cpu_count() or 2),
    ))
    reg.register(Tool("read_file", "Read a text file from your own storage.", _obj({"path": _PATH}, ("path",)),
                      lambda path, ctx: _storage(ctx, "read", path)))
    # Not irreversible: every write keeps a version (rollback_file restores it), as for the storage syscalls.
    reg.register(Tool("write_file", "Write (create or replace) a text file in your own storage.",
                      _obj({"path": _PATH, "content": _TEXT}, ("path", "content")),
                      lambda path, content, ctx: _storage(ctx, "write", path, content)))
    reg.register(Tool("list_files", "List a folder of your own storage (default: its root).",
                      _obj({"path": {**_PATH, "minLength": 0}}),
                      lambda ctx, path="": _storage(ctx, "list", path)))
    reg.register(Tool("delete_file", "Delete a file or an empty folder from your own storage.",
                      _obj({"path": _PATH}, ("path",)), lambda path, ctx: _storage(ctx, "delete", path),
                      irreversible=True))
    # The registry itself, plugins included (they join this same object later): what the MCP endpoint lists.
    reg.register(Tool("list_tools", "List the tools this kernel offers: name, description, the JSON schema of "
                      "their arguments, and whether a call needs an operator's approval.", _obj({}),
                      lambda: {"tools": reg.catalog()}, inline=True))
    reg.register(Tool(
        "http_fetch", "GET an http(s) URL and return its status and text (at most 1 MB). Only hosts the "
                      "operator allowed in AIOS_HTTP_ALLOW can be fetched.",
        _obj({"url": {"type": "string", "minLength": 1, "maxLength": 2048},
              "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 30}}, ("url",)),
        http_fetch, timeout_s=40.0))
    return reg
