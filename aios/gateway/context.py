"""What the console and the MCP endpoint need from the gateway that serves them (:class:`GatewayContext`).

The gateway's own context object (``aios/gateway/server.py``) provides these; nothing here builds one. Either
method may be a plain function or a coroutine function: :func:`resolve` awaits whatever it gets."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from aios.policy.identity import Credential
    from aios.sdk.asyncio import AsyncKernel
    from aios.settings import Settings

T = TypeVar("T")


class StatusSource(Protocol):
    """What the console reads the kernel's status with: :mod:`aios.ops.status` (a layer above this one, so the
    command that serves the gateway hands it down)."""

    def collect(self, settings: Settings, *, timeout_s: float = ...) -> dict[str, Any]: ...

    def recent(self, settings: Settings, limit: int = ...) -> list[dict[str, Any]]: ...


class GatewayContext(Protocol):
    """The gateway's context, as far as :mod:`aios.gateway.console` and :mod:`aios.gateway.mcp_server` use it."""

    settings: Settings
    """The kernel's settings (its broker, state Redis, data dir: the master key is read from them)."""

    status: StatusSource | None
    """The kernel's status reader; ``None``: the console is not served."""

    def agent_for_token(self, token: str) -> Credential | None | Awaitable[Credential | None]:
        """The agent whose key ``token`` is (a bearer token), ``None`` for anything else (revoked or expired
        credentials included)."""

    def kernel_for(self, agent_id: str) -> AsyncKernel | Awaitable[AsyncKernel]:
        """An :class:`~aios.sdk.asyncio.AsyncKernel` acting as ``agent_id`` (signing with its key), kept open by
        the gateway: every call made through it is a syscall of that agent."""


async def resolve(value: T | Awaitable[T]) -> T:
    """``value``, awaited if it is awaitable (the context's methods may be sync or async)."""
    if inspect.isawaitable(value):
        return await value
    return value


def bearer(headers: Any) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, ``None`` without one."""
    raw = headers.get("authorization") or ""
    scheme, _, token = raw.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
