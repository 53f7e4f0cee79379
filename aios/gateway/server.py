"""The gateway's Starlette app, the context its route sets share, and the ``aios gateway`` command.

The gateway is a kernel component: it runs with the kernel's settings (its Redis, its master key) and resolves
each request's bearer token to an agent (:mod:`aios.gateway.auth`). It then acts only *as that agent*: one
:class:`~aios.sdk.AsyncKernel` per agent, with the agent's own key and broker user, so a request reaches the
kernel exactly as the agent's own SDK call would (signed, at most its priority, under its quotas, audited).

The ``aios gateway`` command is :mod:`aios.ops.cli_gateway` (it imports this module only when run, so that
the ``aios`` command starts fast); it hands the app what it needs from the layer above (the kernel's status
reader, :mod:`aios.ops.status`). Route sets: :func:`create_app` mounts the routes of every module of
:data:`ROUTE_SETS` that is installed, each through its ``routes(ctx) -> list[BaseRoute]`` with the one
:class:`GatewayContext` (which also meets :class:`aios.gateway.context.GatewayContext`, what the console and
the MCP endpoint use).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from aios.gateway.auth import Agent, AgentKeys
from aios.gateway.context import StatusSource
from aios.gateway.disconnect import ClientGone, DisconnectWatch
from aios.gateway.openai_api import ApiError, from_kernel
from aios.policy.identity import Credential, authorize
from aios.sdk import AsyncKernel
from aios.settings import Settings
from aios.wire.errors import AIOSError, AuthError
from aios.wire.syscalls import Syscall

log = logging.getLogger("aios.gateway")
T = TypeVar("T")

ROUTE_SETS = ("aios.gateway.openai_api", "aios.gateway.mcp_server", "aios.gateway.console")
"""Modules whose ``routes(ctx)`` the app serves, where installed."""


@dataclass
class GatewayContext:
    """What every route set is given: the settings, the agents' keys, and each agent's kernel client."""

    settings: Settings
    keys: AgentKeys
    status: StatusSource | None = None
    """The kernel's status reader (:mod:`aios.ops.status`), handed down by the command that serves the app; the
    console needs it."""
    _agents: dict[str, Agent] = field(default_factory=dict)
    _kernels: dict[str, tuple[str, AsyncKernel]] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _cancelling: set[asyncio.Task[None]] = field(default_factory=set)

    async def authenticate(self, request: Request) -> Agent:
        """The agent whose key is the request's bearer token; raises a 401 :class:`ApiError` otherwise."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing bearer token: send 'Authorization: Bearer <key>', the agent's key as "
                                "`aios agent create NAME --print-key` prints it", "authentication_error",
                           code="missing_api_key")
        agent = await self.keys.resolve(token.strip())
        if agent is None:
            raise ApiError(401, "invalid API key: it is no current agent's key (issue one with `aios agent create "
                                "NAME --print-key`)", "authentication_error", code="invalid_api_key")
        return agent

    async def agent_for_token(self, token: str) -> Credential | None:
        """The credential whose current key ``token`` is, if it may act now (not revoked, not expired)."""
        agent = await self.keys.resolve(token)
        if agent is None:
            return None
        # The index of keys is reloaded only now and then: the record as it is now says whether it may still act.
        current = await asyncio.to_thread(self.keys.credentials.get, agent.id)
        if current is None or current.generation != agent.credential.generation:
            return None
        try:
            authorize(current, now=time.time())
        except AuthError:
            return None
        self._agents[agent.id] = agent
        return current

    async def kernel_for(self, agent_id: str) -> AsyncKernel:
        """The kernel client of an agent that :meth:`agent_for_token` resolved."""
        return await self.kernel(self._agents[agent_id])

    async def kernel(self, agent: Agent) -> AsyncKernel:
        """The agent's kernel client (made on first use, made again when its key changed)."""
        held = self._kernels.get(agent.id)
        if held is not None and held[0] == agent.key:
            return held[1]
        lock = self._locks.setdefault(agent.id, asyncio.Lock())
        async with lock:
            held = self._kernels.get(agent.id)
            if held is not None and held[0] == agent.key:
                return held[1]
            # Connecting (and on RabbitMQ starting the reply-queue consumer) blocks: off the event loop.
            kernel = await asyncio.to_thread(AsyncKernel, agent.id, settings=self.settings, credential=agent.key)
            self._kernels[agent.id] = (agent.key, kernel)
        if held is not None:
            await held[1].aclose()
        return kernel

    def models(self) -> dict[str, str | None]:
        """The kernel's LLM cores as models: name -> the syscall's ``model`` (``None``: the default core)."""
        llm = self.settings.llm
        default = Path(llm.model).name if llm.model else "default"
        out: dict[str, str | None] = {default: None}
        out.setdefault("default", None)
        out.update({core: core for core in sorted(llm.models)})
        return out

    def cancel(self, kernel: AsyncKernel, syscall_id: str) -> None:
        """Cancel the syscall of a client that went away (as its agent: ``AsyncKernel.cancel``), in a task of its
        own: the request's task is being cancelled itself, and nobody waits for the outcome."""
        async def run() -> None:
            try:
                await kernel.cancel(syscall_id)
            except AIOSError as exc:
                log.warning("could not cancel syscall %s of a client that went away: %s", syscall_id, exc)

        task = asyncio.create_task(run())
        self._cancelling.add(task)
        task.add_done_callback(self._cancelling.discard)

    async def until_disconnect(self, request: Request, kernel: AsyncKernel, syscall: Syscall,
                               work: Awaitable[T]) -> T:
        """Await ``work`` (the syscall's answer) unless the client disconnects first: then cancel the syscall and
        raise :class:`ClientGone`."""
        try:
            with DisconnectWatch(request.receive):
                return await work
        except ClientGone:
            self.cancel(kernel, syscall.id)
            raise ClientGone(syscall.id) from None

    async def aclose(self) -> None:
        if self._cancelling:
            await asyncio.wait(self._cancelling, timeout=5)
        for _, kernel in self._kernels.values():
            await kernel.aclose()
        self._kernels.clear()


# -- the app ----------------------------------------------------------------------------------------------------

async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _kernel_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AIOSError)
    return from_kernel(exc).response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                    "not_found_error" if exc.status_code == 404 else "invalid_request_error").response()


async def _client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=499)  # nobody reads it: the client is gone


def route_sets(names: Sequence[str] = ROUTE_SETS) -> list[Any]:
    """The installed modules of ``names``."""
    return [importlib.import_module(n) for n in names if importlib.util.find_spec(n) is not None]


def create_app(settings: Settings, *, keys: AgentKeys | None = None, status: StatusSource | None = None,
               route_modules: Sequence[str] = ROUTE_SETS) -> Starlette:
    """The gateway app for the kernel of ``settings`` (its Redis, its master key); ``status`` reads the kernel's
    status for the console (:mod:`aios.ops.status`; without it the console is not served)."""
    ctx = GatewayContext(settings, keys or AgentKeys(settings), status)
    routes: list[BaseRoute] = []
    for module in route_sets(route_modules):
        routes.extend(module.routes(ctx))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await ctx.keys.reload()
        yield
        await ctx.aclose()

    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={ApiError: _api_error, AIOSError: _kernel_error, HTTPException: _http_error,
                                        ClientGone: _client_gone})
    app.state.ctx = ctx
    return app
