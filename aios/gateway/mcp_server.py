"""The kernel's tools over MCP (streamable HTTP), for frameworks that speak MCP: ``POST /mcp``.

The bearer token is an agent's key, as for the OpenAI endpoints: a request without a valid one is a 401 before
MCP sees it. Every ``tools/call`` is a tool syscall of that agent, made through its SDK client
(:meth:`GatewayContext.kernel_for`), so everything the kernel does to a tool syscall applies: the tool's
argument validation, its time and concurrency limits, quotas, the audit, and approvals (an irreversible tool waits
for an operator as an SDK caller does, and a denial or an expiry comes back as an error result). ``tools/list`` is
a syscall too (the built-in ``list_tools``): what the tool worker's registry holds, plugins and its MCP servers'
tools included, not a copy kept here.

The endpoint is stateless (each HTTP request is served on its own, with a fresh :class:`mcp.server.lowlevel.Server`
bound to the authenticated agent): nothing of one agent is ever held where another's request could reach it, and
the gateway needs no lifespan hook for it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from aios.gateway.context import GatewayContext, bearer, resolve
from aios.wire.errors import AIOSError, UnknownTool

log = logging.getLogger("aios.gateway.mcp")

PATH = "/mcp"
CATALOG_TOOL = "list_tools"
"""The built-in tool that lists the registry (:func:`aios.services.tools.service.builtin_registry`); MCP has its
own ``tools/list``, so it is not offered as a tool here."""
BODY_SLACK_BYTES = 64 * 1024
"""How much bigger than a syscall (``AIOS_MAX_PAYLOAD_BYTES``) an MCP request body may be: JSON-RPC's envelope."""


def _result(value: Any) -> types.CallToolResult:
    """A tool's JSON result as MCP content: the JSON text for any client, and the value as structured content
    (an object: a non-object result is wrapped as ``{"result": value}``)."""
    return types.CallToolResult(content=[types.TextContent(text=json.dumps(value))],
                                structured_content=value if isinstance(value, dict) else {"result": value})


def _error(exc: AIOSError) -> types.CallToolResult:
    """A kernel error as MCP's tool error (``isError``): the model sees the kernel's message and can correct
    itself (a bad argument names the field)."""
    return types.CallToolResult(content=[types.TextContent(text=f"{exc.code}: {exc.message}")], is_error=True,
                                structured_content={"error": {"code": exc.code, "message": exc.message}})


def kernel_server(ctx: GatewayContext, agent_id: str) -> Server[Any]:
    """An MCP server whose every request is a syscall of ``agent_id``."""

    async def list_tools(rc: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        kernel = await resolve(ctx.kernel_for(agent_id))
        try:
            catalog = await kernel.call_tool(CATALOG_TOOL)
        except AIOSError as exc:
            raise MCPError(types.INTERNAL_ERROR, f"the kernel could not list its tools: {exc.code}: {exc}") from None
        tools = []
        for spec in catalog["tools"]:
            if spec["name"] == CATALOG_TOOL:
                continue
            irreversible = bool(spec.get("irreversible"))
            tools.append(types.Tool(
                name=spec["name"], input_schema=spec["parameters"],
                description=spec["description"] + (" Needs an operator's approval before it runs." if irreversible
                                                   else ""),
                annotations=types.ToolAnnotations(destructive_hint=irreversible, read_only_hint=False)))
        return types.ListToolsResult(tools=tools)

    async def call_tool(rc: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        if params.name == CATALOG_TOOL:
            raise MCPError(types.INVALID_PARAMS, f"{CATALOG_TOOL!r} is not offered over MCP: use tools/list")
        kernel = await resolve(ctx.kernel_for(agent_id))
        try:
            value = await kernel.call_tool(params.name, dict(params.arguments or {}))
        except UnknownTool as exc:  # not a tool's failure: MCP says so with a protocol error
            raise MCPError(types.INVALID_PARAMS, exc.message) from None
        except AIOSError as exc:
            return _error(exc)
        return _result(value)

    return Server("aios-kernel", version="1", instructions=f"The AIOS kernel's tools, called as agent {agent_id!r}.",
                  on_list_tools=list_tools, on_call_tool=call_tool)


class McpEndpoint:
    """The ASGI endpoint: authenticate, then serve the one request with a server bound to the agent."""

    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx
        self.max_body = ctx.settings.syscalls.max_payload_bytes + BODY_SLACK_BYTES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from starlette.datastructures import Headers

        token = bearer(Headers(scope=scope))
        credential = await resolve(self.ctx.agent_for_token(token)) if token else None
        if credential is None:
            await _unauthorized(scope, receive, send)
            return
        manager = StreamableHTTPSessionManager(kernel_server(self.ctx, credential.agent_id), stateless=True,
                                               max_request_body_size=self.max_body)
        async with manager.run():
            await manager.handle_request(scope, receive, send)


async def _unauthorized(scope: Scope, receive: Receive, send: Send) -> None:
    response = JSONResponse(
        {"error": {"message": "an agent's key is required: `Authorization: Bearer <key>` (issue one with "
                              "`aios agent create NAME --print-key`)", "type": "invalid_request_error",
                   "code": "invalid_api_key"}},
        status_code=401, headers={"WWW-Authenticate": 'Bearer realm="aios"'})
    await response(scope, receive, send)


def routes(ctx: GatewayContext) -> list[BaseRoute]:
    """``/mcp``: the kernel's tools over MCP streamable HTTP, for the agent whose key is the bearer token."""
    return [Route(PATH, McpEndpoint(ctx), methods=["GET", "POST", "DELETE"])]
