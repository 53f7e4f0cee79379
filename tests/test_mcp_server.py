"""The kernel's tools over MCP streamable HTTP (aios/gateway/mcp_server.py), driven by the `mcp` package's own
client against a real kernel: each call is a tool syscall of the agent whose key is the bearer token."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from aios.gateway import mcp_server
from aios.ops.embedded import LocalKernel
from aios.ops.status import recent
from aios.policy.approvals import Approvals
from aios.policy.identity import Credentials
from tests.conftest import BROKERS, make_broker_settings
from tests.gateway_harness import serve

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=BROKERS)
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, LocalKernel]]:
    settings = make_broker_settings(request.param, tmp_path_factory.mktemp(f"mcp-{request.param}"), request,
                                    approvals="required")
    with LocalKernel(settings, resources=["tool"]) as lk, serve(lk.settings, "aios.gateway.mcp_server") as (url, _ctx):
        yield url + mcp_server.PATH, lk


def issue(lk: LocalKernel, name: str) -> tuple[str, str]:
    agent = f"{name}-{uuid.uuid4().hex[:6]}"
    return agent, Credentials(lk.settings).create(agent, write_file=False).key


@contextlib.asynccontextmanager
async def session(url: str, key: str) -> AsyncIterator[Any]:
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    async with create_mcp_http_client(headers={"Authorization": f"Bearer {key}"}) as http, \
            streamable_http_client(url, http_client=http) as (read, write), ClientSession(read, write) as s:
        await s.initialize()
        yield s


def test_lists_the_kernels_tools_and_calls_one_as_the_agents_syscall(gateway: tuple[str, LocalKernel]) -> None:
    url, lk = gateway
    agent, key = issue(lk, "mcp")

    async def go() -> tuple[Any, Any]:
        async with session(url, key) as s:
            return await s.list_tools(), await s.call_tool("calculator", {"expression": "17 * 23"})

    listed, called = asyncio.run(go())
    tools = {t.name: t for t in listed.tools}
    # The tool worker's registry, as its own list_tools tool reports it (not offered as a tool itself).
    assert {"calculator", "echo", "python", "read_file", "write_file", "delete_file"} <= set(tools)
    assert "list_tools" not in tools
    assert tools["calculator"].input_schema["required"] == ["expression"]
    assert tools["delete_file"].annotations.destructive_hint is True
    assert "approval" in (tools["delete_file"].description or "")
    assert called.is_error is False
    assert called.structured_content["value"] == 391 and json.loads(called.content[0].text)["value"] == 391
    # Both were syscalls of this agent: the list and the call, answered and accounted to it.
    mine = recent(lk.settings, 50, agent=agent)
    assert [(r["what"], r["status"]) for r in reversed(mine)] == [("list_tools", "ok"), ("calculator", "ok")]
    assert all(r["kind"] == "tool" for r in mine)


def test_a_bad_argument_is_a_clear_tool_error_and_an_unknown_tool_a_protocol_error(
        gateway: tuple[str, LocalKernel]) -> None:
    from mcp.shared.exceptions import MCPError

    url, lk = gateway
    agent, key = issue(lk, "mcp-bad")

    async def go() -> tuple[Any, Any, MCPError]:
        async with session(url, key) as s:
            wrong_type = await s.call_tool("calculator", {"expression": 5})
            missing = await s.call_tool("echo", {})
            with pytest.raises(MCPError) as unknown:
                await s.call_tool("no_such_tool", {})
            return wrong_type, missing, unknown.value

    wrong_type, missing, unknown = asyncio.run(go())
    assert wrong_type.is_error and wrong_type.structured_content["error"]["code"] == "invalid_arguments"
    assert "expression" in wrong_type.content[0].text and "string" in wrong_type.content[0].text
    assert missing.is_error and "'text' is a required property" in missing.content[0].text
    assert unknown.code == -32602 and "unknown tool 'no_such_tool'" in unknown.message
    # The kernel refused them as the agent's syscalls (validated by the tool worker, not by the endpoint).
    codes = sorted(r["code"] for r in recent(lk.settings, 50, agent=agent))
    assert codes == ["invalid_arguments", "invalid_arguments", "unknown_tool"]


def test_an_irreversible_tool_waits_for_the_operator(gateway: tuple[str, LocalKernel]) -> None:
    url, lk = gateway
    agent, key = issue(lk, "mcp-careful")
    approvals = Approvals(lk.settings)
    outcome: dict[str, Any] = {}

    async def go() -> None:
        async with session(url, key) as s:
            assert not (await s.call_tool("write_file", {"path": "a.txt", "content": "keep"})).is_error
            assert not (await s.call_tool("write_file", {"path": "b.txt", "content": "keep"})).is_error
            outcome["approved"] = await s.call_tool("delete_file", {"path": "a.txt"})
            outcome["denied"] = await s.call_tool("delete_file", {"path": "b.txt"})
            outcome["a"] = await s.call_tool("read_file", {"path": "a.txt"})
            outcome["b"] = await s.call_tool("read_file", {"path": "b.txt"})

    def operator() -> None:
        for decision in ("approve", "deny"):
            deadline = time.monotonic() + 30
            while not (waiting := [r for r in approvals.pending() if r.agent_id == agent]):
                assert time.monotonic() < deadline, "the MCP call never reached the approval queue"
                time.sleep(0.05)
            [request] = waiting
            assert request.payload["tool"] == "delete_file"
            if decision == "approve":
                assert request.payload["arguments"] == {"path": "a.txt"}
                approvals.approve(request.id, digest_prefix=request.digest)
            else:
                assert request.payload["arguments"] == {"path": "b.txt"}
                approvals.deny(request.id, "not this one")

    thread = threading.Thread(target=operator)
    thread.start()
    asyncio.run(go())
    thread.join(timeout=5)
    assert not outcome["approved"].is_error and outcome["approved"].structured_content["deleted"] is True
    assert outcome["denied"].is_error and outcome["denied"].structured_content["error"]["code"] == "approval_denied"
    assert "not this one" in outcome["denied"].content[0].text
    assert outcome["a"].is_error and outcome["a"].structured_content["error"]["code"] == "not_found"
    assert not outcome["b"].is_error and outcome["b"].structured_content["content"] == "keep"


def _post(url: str, headers: dict[str, str]) -> int:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}).encode()
    request = urllib.request.Request(url, body, method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_bad_key_is_refused(gateway: tuple[str, LocalKernel]) -> None:
    from mcp.shared.exceptions import MCPError

    url, lk = gateway
    agent, key = issue(lk, "mcp-gone")
    assert _post(url, {}) == 401
    assert _post(url, {"Authorization": "Bearer " + "0" * 64}) == 401
    assert _post(url, {"Authorization": f"Basic {key}"}) == 401
    Credentials(lk.settings).revoke(agent)
    assert _post(url, {"Authorization": f"Bearer {key}"}) == 401

    async def go() -> None:
        async with session(url, key):
            pass

    with pytest.raises(BaseExceptionGroup) as refused:  # the client's task groups wrap the HTTP error
        asyncio.run(go())
    [leaf] = leaves(refused.value)
    assert isinstance(leaf, MCPError) and leaf.message == "Server returned an error response"
    assert recent(lk.settings, 50, agent=agent) == []  # nothing reached the kernel as that agent


def leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for e in error.exceptions for leaf in leaves(e)]
    return [error]
