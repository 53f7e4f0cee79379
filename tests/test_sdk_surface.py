"""The SDK's surface: both clients offer the same calls, every call runs through a real kernel on both, and the
SDK stays on its side of the house (``import aios`` is light; no worker-side imports)."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aios import AsyncKernel, Kernel, UnknownTool
from aios.ops.embedded import LocalKernel
from aios.policy.identity import Credentials
from aios.sdk.operations import Operation, Operations
from aios.sdk.streaming import AsyncTokenStream
from aios.settings import Settings
from aios.wire.syscalls import Status
from tests.conftest import base_settings

NOWHERE = Settings(broker_url="redis://127.0.0.1:1/0")  # constructing a client connects to nothing
SECRET = "ab" * 32
SDK_DIR = Path(__file__).resolve().parent.parent / "aios" / "sdk"
LIFECYCLE = {Kernel: "close", AsyncKernel: "aclose"}
"""How each client is closed: the one public difference between them (besides sync vs async)."""
LLM_CALLS = {"llm_chat", "llm_chat_with_json_output", "llm_chat_with_tool_call_output"}
LLM_CLIENT_CALLS = LLM_CALLS | {"stream"}
"""The LLM calls of a client: the operations, and ``stream`` (each client's own: it iterates)."""
CALC = {"name": "calculator", "description": "Evaluate arithmetic",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def public_calls(client: Kernel | AsyncKernel) -> dict[str, inspect.Signature]:
    names = [n for n in dir(type(client)) if not n.startswith("_") and n != LIFECYCLE[type(client)]]
    return {n: inspect.signature(getattr(client, n)) for n in names if callable(getattr(client, n))}


@pytest.fixture(scope="module")
def clients() -> Iterator[tuple[Kernel, AsyncKernel]]:
    k, ak = Kernel("surface", settings=NOWHERE, credential=SECRET), AsyncKernel("surface", settings=NOWHERE, credential=SECRET)
    yield k, ak
    k.close()


# -- the same calls --------------------------------------------------------------------------------------

def test_both_clients_offer_the_same_calls_with_the_same_signatures(clients: tuple[Kernel, AsyncKernel]) -> None:
    sync, asyn = (public_calls(c) for c in clients)
    assert sorted(sync) == sorted(asyn)
    assert {n: str(s) for n, s in sync.items()} == {n: str(s) for n, s in asyn.items()}
    assert len(sync) > 30  # the operations, submit/wait/..., the syscall builders


def test_what_differs_is_only_waiting(clients: tuple[Kernel, AsyncKernel]) -> None:
    """Every call of the asyncio client that talks to the kernel is a coroutine function; none of the sync
    client's is; the builders are plain on both."""
    k, ak = clients
    builders = {"llm_syscall", "tool_syscall", "tool_syscalls", "memory_syscall", "storage_syscall", "cancel_syscall"}
    for name in public_calls(k):
        assert not inspect.iscoroutinefunction(getattr(k, name)), name
        assert inspect.iscoroutinefunction(getattr(ak, name)) == (name not in builders), name


def test_every_operation_is_defined_once_with_a_docstring() -> None:
    ops = {n for n, v in vars(Operations).items() if isinstance(v, Operation)}
    assert LLM_CALLS <= ops and {"call_tool", "read_file", "create_memory", "rollback_file"} <= ops
    for client in (Kernel, AsyncKernel):
        assert not set(vars(client)) & ops, f"{client.__name__} redefines an operation"
    for name in ops:
        doc = getattr(Kernel, name).__doc__
        assert doc and doc.strip(), name


def test_sync_and_async_calls_are_the_one_definition_of_each(clients: tuple[Kernel, AsyncKernel]) -> None:
    k, ak = clients
    for name in ("read_file", "call_tool", "search_memories"):
        assert getattr(k, name).__doc__ == getattr(ak, name).__doc__ == getattr(Operations, name).__doc__
        assert inspect.signature(getattr(k, name)).return_annotation is not inspect.Signature.empty


# -- the SDK on its side of the house ----------------------------------------------------------------------

def _python(code: str) -> None:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_import_aios_is_light() -> None:
    _python("import aios, sys; assert 'celery' not in sys.modules and 'aios.worker' not in sys.modules; "
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('celery', 'kombu', 'redis') "
            "or m.startswith(('aios.worker', 'aios.services', 'aios.policy.governor', 'aios.sdk'))]; "
            "assert not heavy, heavy; assert 'Kernel' in dir(aios)")


def test_a_client_brings_nothing_of_the_worker_side() -> None:
    _python("import asyncio, sys; from aios import AsyncKernel, Kernel; from aios.settings import Settings; "
            "s = Settings(broker_url='redis://127.0.0.1:1/0'); "
            "Kernel('a', settings=s, credential='ab' * 32).close(); "
            "asyncio.run(AsyncKernel('a', settings=s, credential='ab' * 32).aclose()); "
            "bad = [m for m in sys.modules if m.startswith(('aios.worker', 'aios.services', 'aios.ops'))]; "
            "assert not bad, bad")


def test_sdk_modules_import_nothing_worker_side() -> None:
    """A static check over every import statement in aios/sdk, those inside functions included."""
    forbidden = ("aios.worker", "aios.services", "aios.ops")
    files = sorted(SDK_DIR.glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "core.py", "operations.py", "sync.py", "asyncio.py"}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith(forbidden), f"{path.name}:{node.lineno} imports {name}"


def test_sdk_files_stay_small() -> None:
    for path in SDK_DIR.glob("*.py"):
        assert len(path.read_text().splitlines()) < 400, path.name


# -- every call through a real kernel, on both clients ---------------------------------------------------

class Through:
    """A client's calls, awaited where they are coroutines (so one scenario serves both), each name recorded."""

    def __init__(self, client: Kernel | AsyncKernel) -> None:
        self.client = client
        self.used: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self.client, name)
        self.used.add(name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            out = fn(*args, **kwargs)
            return await out if inspect.isawaitable(out) else out
        return call


def _client(kind: str, settings: Settings, agent_id: str) -> Kernel | AsyncKernel:
    Credentials(settings).create(agent_id)
    return (Kernel if kind == "sync" else AsyncKernel)(agent_id, settings=settings)


async def _close(client: Kernel | AsyncKernel) -> None:
    if isinstance(client, AsyncKernel):
        await client.aclose()
    else:
        client.close()


async def _every_call_but_the_llm(k: Through, me: str, friend: Through) -> None:
    c = k.client
    # submit / wait / wait_response / call / gather, and the builders
    assert await k.wait(await k.submit(await k.tool_syscall("echo", {"text": "x"}))) == {"text": "x"}
    assert (await k.wait_response(await k.submit(c.tool_syscall("noop")))).status is Status.OK
    assert (await k.call(await k.memory_syscall("list")))["keys"] == []
    got = await k.gather([c.tool_syscall("calculator", {"expression": "2+2"}), c.tool_syscall("nope")],
                         return_exceptions=True)
    assert got[0]["value"] == 4 and isinstance(got[1], UnknownTool)
    assert (await k.llm_syscall("hi", max_tokens=4)).max_tokens == 4
    assert len(await k.tool_syscalls([{"name": "noop"}, {"name": "echo", "arguments": {"text": "a"}}])) == 2
    assert (await k.storage_syscall("read", "a.txt")).op == "read"
    # control: a syscall answered already cannot be cancelled
    done = await k.submit(c.tool_syscall("noop"))
    await k.wait(done)
    assert (await k.cancel_syscall(done)).target == done.id
    assert await k.cancel(done) is False
    # tools
    assert (await k.call_tool("calculator", expression="17 * 23"))["value"] == 391
    got = await k.call_tools([{"name": "calculator", "arguments": {"expression": "1+1"}}, {"name": "nope"}])
    assert got[0]["value"] == 2 and isinstance(got[1], UnknownTool)
    # memory, both vocabularies
    assert await k.memory_put("plan", {"steps": [1, 2]}) == {"key": "plan", "created": True}
    assert await k.memory_get("plan") == {"steps": [1, 2]}
    key = await k.create_memory("the team meeting is on tuesday")
    assert isinstance(key, str) and await k.get_memory(key) == "the team meeting is on tuesday"
    assert (await k.update_memory(key, "the team meeting moved to wednesday"))["created"] is False
    assert sorted(await k.memory_list()) == sorted(["plan", key])
    assert key in [r["key"] for r in await k.search_memories("when do we meet?", k=5)]
    assert (await k.memory_stats())["items"] == 2
    assert (await k.memory_delete("plan"))["deleted"] is True
    assert (await k.delete_memory(key))["deleted"] is True
    # files
    assert (await k.mount())["mounted"] is True
    assert (await k.create_dir("notes"))["created"] is True
    assert (await k.create_file("notes/a.txt", "one"))["version"] == 1
    assert (await k.write_file("notes/a.txt", "two", if_version=1))["version"] == 2
    assert await k.read_file("notes/a.txt") == "two"
    assert await k.read_file_versioned("notes/a.txt") == ("two", 2)
    assert [e["name"] for e in (await k.list_files("notes"))["entries"]] == ["a.txt"]
    assert [v["version"] for v in await k.file_versions("notes/a.txt")] == [1, 2]
    assert (await k.rollback_file("notes/a.txt", 1))["restored"] == 1
    assert await k.read_file("notes/a.txt") == "one"
    assert "notes/a.txt" in [r["path"] for r in await k.retrieve_file("one", k=3)]
    friend_id = friend.client.agent_id
    assert (await k.share_file("notes/a.txt", friend_id))["shared_with"] == friend_id
    assert await friend.read_file("notes/a.txt", owner=me) == "one"
    assert (await k.delete_file("notes/a.txt"))["deleted"] is True
    await k.create_file("b.txt")
    assert (await k.delete("b.txt"))["deleted"] is True
    # the embedding model
    got = await k.embed(["hello", "world"])
    assert len(got["vectors"]) == 2 and all(len(v) == got["dim"] for v in got["vectors"])


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_every_call_runs_through_a_real_kernel(kind: str, kernel: LocalKernel) -> None:
    me, friend_id = f"surface-{kind}-{uuid.uuid4().hex[:6]}", f"friend-{uuid.uuid4().hex[:6]}"
    client, friend = _client(kind, kernel.settings, me), _client(kind, kernel.settings, friend_id)
    try:
        k = Through(client)
        await _every_call_but_the_llm(k, me, Through(friend))
    finally:
        await _close(client)
        await _close(friend)
    assert k.used == set(public_calls(client)) - LLM_CLIENT_CALLS  # nothing left out (the LLM calls: below)


@pytest.fixture(scope="module")
def llm_kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKernel]:
    with LocalKernel(base_settings(tmp_path_factory.mktemp("surface-llm"), llm_n_ctx=1024),
                     resources=["tool", "storage", "llm"]) as lk:
        yield lk


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_every_llm_call_runs_through_a_real_kernel(kind: str, llm_kernel: LocalKernel) -> None:
    client = _client(kind, llm_kernel.settings, f"surface-llm-{kind}")
    try:
        k = Through(client)
        assert isinstance(await k.llm_chat("Say hi.", max_tokens=8), str)
        assert isinstance((await k.llm_chat_with_json_output("Name a city as JSON.", CITY, max_tokens=48))["city"], str)
        calls = await k.llm_chat_with_tool_call_output("Compute 6 * 7 with the calculator.", tools=[CALC],
                                                       max_tokens=64)
        assert calls and calls[0]["name"] == "calculator"
        stream = await k.stream(client.llm_syscall("Say hi.", max_tokens=8))
        pieces = [p async for p in stream] if isinstance(stream, AsyncTokenStream) else list(stream)
        assert "".join(pieces) == stream.result["content"]
    finally:
        await _close(client)
    assert k.used == LLM_CLIENT_CALLS
