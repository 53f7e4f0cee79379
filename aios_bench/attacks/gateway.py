"""Attacks on the gateway's operator surfaces: the operator console (``/console``) and the MCP endpoint (``/mcp``).

An agent holds its own key, which is also its bearer token for the gateway. These attacks use it where only an
operator's token should work (the console), or try to act as another agent through MCP. They need a gateway
serving the arena's kernel: its base URL in ``arena.extra["gateway"]``. Without one they report so (not refused:
the surface they test is not there), and the shared arena of ``tests/test_attacks.py`` has none, so they are
registered for no broker there (:data:`BROKERS`); ``tests/test_console.py`` runs them with a gateway.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

from aios.policy.approvals import Approvals
from aios_bench.attacks import Arena, Outcome, attack

BROKERS: tuple[str, ...] = ()
"""Where ``tests/test_attacks.py`` runs them: nowhere, as its arena serves no gateway."""
CONSOLE_CLAIM = "the operator console opens only with its own token (aios console-token); an agent's key is refused"


def _gateway(arena: Arena) -> str | None:
    url = arena.extra.get("gateway")
    return url if isinstance(url, str) else None


def _http(url: str, key: str, body: dict[str, Any] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, json.dumps(body).encode() if body is not None else None, method=(
        "POST" if body is not None else "GET"), headers={"Authorization": f"Bearer {key}",
                                                        "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=15) as r:
            return int(r.status), r.read(2000).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(2000).decode(errors="replace")


@attack("console-read-with-agent-key", area="gateway", brokers=BROKERS, claim=CONSOLE_CLAIM)
def console_read(arena: Arena) -> Outcome:
    """mallory sends its own key to the console's API: the fleet's state, every agent's approvals and the audit
    log would be its to read."""
    base = _gateway(arena)
    if base is None:
        return Outcome(False, "no gateway serves this arena")
    status, text = _http(f"{base}/console/api/overview", arena.extra["attacker_key"])
    return Outcome(status == 401, f"HTTP {status}: {text[:200]}")


@attack("console-self-approval", area="gateway", brokers=BROKERS, claim=CONSOLE_CLAIM)
def console_self_approval(arena: Arena) -> Outcome:
    """mallory parks an irreversible tool call of its own, then approves it through the console with its key and
    the digest it can compute itself."""
    from aios.policy.approvals import digest

    base = _gateway(arena)
    if base is None:
        return Outcome(False, "no gateway serves this arena")
    if arena.operator.security.approvals != "required":
        return Outcome(False, "approvals are off on this kernel: nothing is parked")
    k = arena.attacker
    syscall = k.tool_syscall("delete_file", {"path": f"mine-{uuid.uuid4().hex[:6]}.txt"}, timeout_s=60)
    pending = k.submit(syscall)
    approvals = Approvals(arena.operator)
    try:
        deadline = time.monotonic() + 20
        while (request := next((r for r in approvals.pending() if r.id == pending.id), None)) is None:
            if time.monotonic() > deadline:
                return Outcome(False, "the syscall was never parked")
            time.sleep(0.05)
        status, text = _http(f"{base}/console/api/approvals/{pending.id}/approve", arena.extra["attacker_key"],
                             {"digest": digest(request.payload)})
        still = approvals.get(pending.id).status
        refused = status == 401 and still == "pending"
        if still == "pending":
            approvals.deny(pending.id, "attack suite: cleaning up")
        return Outcome(refused, f"HTTP {status}: {text[:200]}; the request is {still}")
    finally:
        approvals.redis.close()


@attack("mcp-as-another-agent", area="gateway", brokers=BROKERS,
        claim="an MCP tool call is a syscall of the agent whose key is the bearer token, whatever else the request "
              "names")
def mcp_as_victim(arena: Arena) -> Outcome:
    """alice keeps a file; mallory, with its own key, asks the MCP endpoint to read it while naming alice in a
    header and in the call's ``_meta`` (where the kernel's MCP plugins find the calling agent)."""
    base = _gateway(arena)
    if base is None:
        return Outcome(False, "no gateway serves this arena")
    secret = f"alice's secret {uuid.uuid4().hex}"
    arena.victim.call_tool("write_file", path="secret.txt", content=secret)

    async def steal() -> Any:
        from mcp import ClientSession
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        headers = {"Authorization": f"Bearer {arena.extra['attacker_key']}", "X-AIOS-Agent": "alice"}
        async with create_mcp_http_client(headers=headers) as http, \
                streamable_http_client(f"{base}/mcp", http_client=http) as (read, write), \
                ClientSession(read, write) as s:
            await s.initialize()
            meta: Any = {"aios/agent_id": "alice", "agent_id": "alice"}  # an open map (RequestParamsMeta)
            return await s.call_tool("read_file", {"path": "secret.txt"}, meta=meta)

    result = asyncio.run(steal())
    text = " ".join(getattr(b, "text", "") for b in result.content)
    return Outcome(secret not in text, text[:200])
