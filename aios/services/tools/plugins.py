"""Tools from outside the kernel: entry points, modules named in the settings, and MCP servers.

All of them become ordinary :class:`aios.tools.Tool` objects in the worker's registry, so their arguments are
validated against their JSON schema before they run, with errors naming the field, and they have a time limit.

- **Entry points** in the group ``aios.tools``: each loads to a ``register(registry)`` callable or a ``Tool``.
- **Modules** in ``AIOS_TOOL_MODULES``: ``pkg.mod`` (its ``register(registry)``) or ``pkg.mod:attr``.
- **MCP servers** in ``AIOS_MCP_SERVERS`` (stdio): each tool ``t`` of server ``s`` is registered as ``s__t``
  (model-facing tool names allow letters, digits, ``_`` and ``-`` only, so no dot). The ``mcp`` package is
  asyncio-only: one background event-loop thread per process holds every session, and worker threads submit
  calls to it. A server that exits is started again on the next call to one of its tools. Every call carries
  the verified calling agent in the request's ``_meta`` (:data:`META_AGENT`, :data:`META_SYSCALL`), and the
  server's tools named in its ``irreversible`` setting wait for an operator's approval like built-in ones.

A plugin that cannot be loaded is a :class:`~aios.errors.ConfigError` naming the setting: a worker with a
silently missing tool would be worse than one that says what is wrong.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import importlib
import logging
import re
import sys
import threading
from collections.abc import Callable, Coroutine
from importlib.metadata import entry_points
from typing import Any, TypeVar

from aios.services.tools.service import Tool, ToolContext, ToolRegistry
from aios.settings import McpServerConfig, ToolSettings
from aios.wire.errors import ConfigError, ToolError

__all__ = ["McpServerConfig", "ToolSettings", "load_plugins", "register_mcp_server"]

log = logging.getLogger(__name__)
T = TypeVar("T")
ENTRY_POINT_GROUP = "aios.tools"
SERVER_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,30}$")  # no '_': '__' separates server and tool
CONNECT_TIMEOUT_S = 30.0
META_AGENT = "aios/agent_id"
"""The key of an MCP tool call's ``_meta`` that holds the calling agent's id (verified by the kernel: its
signature was checked before the call ran)."""
META_SYSCALL = "aios/syscall_id"
"""The key of ``_meta`` that holds the tool syscall's id (the same on a redelivery: a key for idempotency)."""


def load_plugins(registry: ToolRegistry, settings: ToolSettings) -> ToolRegistry:
    """Add entry-point, module (``settings.modules``) and MCP (``settings.mcp_servers``) tools to ``registry``."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        where = f"entry point {ep.name!r} ({ep.value})"
        _register(registry, _load(ep.load, where), where)
    for path in settings.module_list():
        where = f"AIOS_TOOL_MODULES entry {path!r}"
        _register(registry, _load(functools.partial(_import, path), where), where)
    for name, config in settings.mcp_servers.items():
        register_mcp_server(registry, name, config)
    return registry


def _import(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr or "register")


def _load(get: Callable[[], Any], where: str) -> Any:
    try:
        return get()
    except Exception as exc:
        raise ConfigError(f"{where} could not be loaded: {type(exc).__name__}: {exc}") from None


def _register(registry: ToolRegistry, obj: Any, where: str) -> None:
    try:
        if isinstance(obj, Tool):
            registry.register(obj)
        elif callable(obj):
            obj(registry)
        else:
            raise ConfigError(f"{where} is neither a Tool nor a register(registry) function")
    except ConfigError:
        raise
    except Exception as exc:  # a bad schema, a duplicate name, a bug in register()
        raise ConfigError(f"{where} failed to register its tools: {type(exc).__name__}: {exc}") from None


# -- MCP ------------------------------------------------------------------------------------------------------

class _Hub:
    """The process's one asyncio loop, on a daemon thread, where every MCP session lives."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="aios-mcp-loop", daemon=True).start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise


_hub: _Hub | None = None
_hub_lock = threading.Lock()
_servers: list[McpServer] = []


def _get_hub() -> _Hub:
    global _hub
    with _hub_lock:
        if _hub is None:
            _hub = _Hub()
            atexit.register(close_mcp_servers)
        return _hub


class McpServer:
    """One stdio MCP server: its session is held open by a task on the hub's loop until :meth:`close`."""

    def __init__(self, name: str, config: McpServerConfig) -> None:
        self.name, self.config = name, config
        self.hub = _get_hub()
        self._session: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._lock = threading.Lock()

    def start(self) -> list[Any]:
        """Start the server, open a session and return its tools (``mcp.types.Tool``)."""
        async def go() -> list[Any]:
            self._stop = asyncio.Event()
            ready: asyncio.Future[list[Any]] = self.hub.loop.create_future()
            self._task = asyncio.create_task(self._serve(ready, self._stop))
            return await ready
        try:
            return self.hub.run(go(), CONNECT_TIMEOUT_S)
        except Exception as exc:
            self.close()
            raise ConfigError(f"AIOS_MCP_SERVERS server {self.name!r} ({self.config.command}) could not be "
                              f"started: {type(exc).__name__}: {exc}") from None

    async def _serve(self, ready: asyncio.Future[list[Any]], stop: asyncio.Event) -> None:
        # Entered and left in this one task: anyio's task groups inside stdio_client require it.
        from mcp import ClientSession, StdioServerParameters, stdio_client
        from mcp.types import PaginatedRequestParams

        c = self.config
        params = StdioServerParameters(command=c.command, args=c.args, env=c.env, cwd=c.cwd)
        try:
            async with stdio_client(params, errlog=sys.__stderr__ or sys.stderr) as (read, write), ClientSession(read, write) as s:
                await s.initialize()
                tools, cursor = [], None
                while True:  # all pages
                    page = await s.list_tools(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
                    tools += page.tools
                    cursor = page.next_cursor
                    if not cursor:
                        break
                self._session = s
                ready.set_result(tools)
                await stop.wait()
        except Exception as exc:
            if not ready.done():
                ready.set_exception(exc)
            else:
                log.error("MCP server %r failed: %s", self.name, exc)
        finally:
            self._session = None
            if not ready.done():  # cancelled while starting: the starter must not wait for nothing
                ready.set_exception(ConnectionError("the server stopped before it was ready"))

    def _live_session(self, dead: Any = None) -> Any:
        with self._lock:  # a server that exited is started again, once, by the first caller to notice
            if self._session is None or self._session is dead:
                if self._session is dead:
                    self.close()
                self.start()
            return self._session

    def call(self, tool: str, arguments: dict[str, Any], meta: dict[str, Any] | None = None) -> Any:
        from mcp import MCPError
        from mcp.types import CONNECTION_CLOSED

        session, timeout = self._live_session(), self.config.timeout_s
        for attempt in (0, 1):
            try:
                result = self.hub.run(session.call_tool(tool, arguments, read_timeout_seconds=timeout,
                                                        meta=meta), timeout + 1)
                break
            except concurrent.futures.TimeoutError:
                raise ToolError(f"MCP tool {self.name}__{tool} gave no answer within {timeout:g} s") from None
            except MCPError as exc:
                # The server exited: start it again and send the call once more (at least once, like redelivery:
                # a tool with side effects must be idempotent; see docs/architecture.md).
                if exc.code != CONNECTION_CLOSED or attempt:
                    raise ToolError(f"MCP tool {self.name}__{tool} failed: {exc}") from None
                log.warning("MCP server %r closed its connection; starting it again", self.name)
                session = self._live_session(dead=session)
            except Exception as exc:
                raise ToolError(f"MCP tool {self.name}__{tool} failed: {type(exc).__name__}: {exc}") from None
        texts = [b.text for b in result.content if getattr(b, "type", None) == "text"]
        if result.is_error:
            raise ToolError(f"MCP tool {self.name}__{tool} failed: {' '.join(texts) or 'no details given'}")
        if result.structured_content is not None:
            return result.structured_content
        out: dict[str, Any] = {"text": "\n".join(texts)}
        others = [b.model_dump(mode="json", exclude_none=True) for b in result.content
                  if getattr(b, "type", None) != "text"]
        if others:
            out["content"] = others
        return out

    def close(self) -> None:
        async def stop() -> None:
            if self._stop is not None:
                self._stop.set()
            if self._task is not None:
                await asyncio.wait([self._task], timeout=10)
        try:
            self.hub.run(stop(), 15)
        except Exception as exc:  # closing is best effort; the server also exits when its stdin closes
            log.warning("MCP server %r did not close cleanly: %s", self.name, exc)


def register_mcp_server(registry: ToolRegistry, name: str, config: McpServerConfig) -> list[str]:
    """Start MCP server ``name`` and register its tools as ``name__tool``; returns the names registered."""
    if not SERVER_NAME_RE.fullmatch(name):
        raise ConfigError(f"AIOS_MCP_SERVERS: server name {name!r} must be a letter, then up to 30 letters, "
                          "digits or '-'")
    server = McpServer(name, config)
    tools = server.start()
    _servers.append(server)
    unknown = set(config.irreversible) - {t.name for t in tools} - {"*"}
    if unknown:  # a misspelt name would leave a tool with side effects running unapproved
        server.close()
        raise ConfigError(f"AIOS_MCP_SERVERS server {name!r}: irreversible names tools it does not have: "
                          f"{', '.join(sorted(unknown))} (its tools: {', '.join(t.name for t in tools) or 'none'})")
    names = []
    for t in tools:
        full = f"{name}__{re.sub(r'[^A-Za-z0-9_-]', '_', t.name)}"
        irreversible = "*" in config.irreversible or t.name in config.irreversible
        try:
            registry.register(Tool(full, t.description or "", dict(t.input_schema), _caller(server, t.name),
                                   irreversible=irreversible, timeout_s=config.timeout_s + 2))
        except ValueError as exc:  # a name too long, a schema jsonschema refuses, a clash
            raise ConfigError(f"AIOS_MCP_SERVERS server {name!r}: tool {t.name!r} cannot be registered: {exc}") from None
        names.append(full)
    log.info("MCP server %r: %d tools (%s)", name, len(names), ", ".join(names))
    return names


def _caller(server: McpServer, tool: str) -> Any:
    def call(ctx: ToolContext, **arguments: Any) -> Any:
        return server.call(tool, arguments, meta={META_AGENT: ctx.agent_id, META_SYSCALL: ctx.syscall_id})
    return call


def close_mcp_servers() -> None:
    """Close every MCP session this process opened (their servers exit)."""
    while _servers:
        _servers.pop().close()
