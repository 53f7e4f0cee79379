"""Serving gateway routes in tests before (and apart from) the gateway's own server: a small Starlette app on
uvicorn in a thread, and a context with what :class:`aios.gateway.context.GatewayContext` asks for, built from the
kernel's real parts (its credentials, the master key, the SDK's :class:`~aios.sdk.asyncio.AsyncKernel`)."""

from __future__ import annotations

import contextlib
import hmac
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from aios.policy.identity import Credential, Credentials, authorize
from aios.sdk.asyncio import AsyncKernel
from aios.settings import Settings
from aios.wire.errors import AuthError


class KernelContext:
    """The gateway's context as the console and the MCP endpoint use it: a bearer token is an agent's current
    key (checked against every credential, in constant time), and each agent gets one AsyncKernel signing with it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.credentials = Credentials(settings)
        self._kernels: dict[str, AsyncKernel] = {}

    def agent_for_token(self, token: str) -> Credential | None:
        for cred in self.credentials.list():
            if hmac.compare_digest(self.credentials.ring.key(cred).encode(), token.encode()):
                try:
                    authorize(cred, now=time.time())
                except AuthError:
                    return None
                return cred
        return None

    async def kernel_for(self, agent_id: str) -> AsyncKernel:
        kernel = self._kernels.get(agent_id)
        if kernel is None:
            key = self.credentials.key(agent_id)
            kernel = self._kernels[agent_id] = AsyncKernel(agent_id, settings=self.settings, credential=key)
        return kernel

    async def aclose(self) -> None:
        for kernel in self._kernels.values():
            await kernel.aclose()
        self._kernels.clear()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(settings: Settings, *route_makers: Callable[[Any], list[BaseRoute]]) -> Iterator[tuple[str, KernelContext]]:
    """Serve the routes ``route_makers(ctx)`` make on 127.0.0.1; yields (base URL, the context)."""
    ctx = KernelContext(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await ctx.aclose()

    app = Starlette(routes=[r for make in route_makers for r in make(ctx)], lifespan=lifespan)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="gateway-harness", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test gateway did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", ctx
    finally:
        server.should_exit = True
        thread.join(timeout=20)
