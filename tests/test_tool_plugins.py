"""Third-party tools (entry points, AIOS_TOOL_MODULES) and MCP servers: registered and validated like built-ins."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from aios.services.tools import plugins as tool_plugins
from aios.services.tools.plugins import (
    McpServerConfig,
    ToolSettings,
    close_mcp_servers,
    load_plugins,
    register_mcp_server,
)
from aios.services.tools.service import ToolContext, ToolRegistry, ToolService, builtin_registry
from aios.settings import Settings
from aios.wire.errors import ConfigError, InvalidToolArguments, ToolError
from aios.wire.syscalls import ToolSyscall
from tests.conftest import base_settings

PLUGIN = '''
from aios.services.tools.service import Tool

def greet(name: str, times: int = 1) -> dict:
    return {"greeting": " ".join(["hello " + name] * times)}

TOOL = Tool("shout", "Upper-case a text.", {"type": "object", "properties": {"text": {"type": "string"}},
            "required": ["text"], "additionalProperties": False}, lambda text: text.upper())

def register(registry):
    registry.register(Tool("greet", "Greet someone.", {
        "type": "object", "additionalProperties": False, "required": ["name"],
        "properties": {"name": {"type": "string", "maxLength": 20}, "times": {"type": "integer", "minimum": 1}},
    }, greet))
'''

MCP_SERVER = '''
import os
from mcp.server.mcpserver import Context, MCPServer

app = MCPServer("demo")
CALLS = []

@app.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    CALLS.append((a, b))
    return a + b

@app.tool()
def calls() -> int:
    """How many times add ran."""
    return len(CALLS)

@app.tool()
def pid() -> int:
    """The server's process id."""
    return os.getpid()

@app.tool()
def fail() -> str:
    """Always fails."""
    raise ValueError("nope")

@app.tool()
def whoami(ctx: Context) -> str:
    """Who the kernel says is calling (the request's _meta)."""
    meta = ctx.request_context.meta or {}
    return f"{meta.get('aios/agent_id')} {meta.get('aios/syscall_id')}"

@app.tool()
def erase() -> str:
    """Something that cannot be undone."""
    return "erased"

if __name__ == "__main__":
    app.run()
'''


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"aios_test_plugin_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_modules_named_in_the_settings_register_tools(plugin_module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOS_TOOL_MODULES", f"{plugin_module}, {plugin_module}:TOOL")
    reg = load_plugins(builtin_registry(), Settings.from_env().tools)
    assert {"greet", "shout", "calculator", "python"} <= set(reg.names())
    assert reg.call("greet", {"name": "ada", "times": 2}) == {"greeting": "hello ada hello ada"}
    assert reg.call("shout", {"text": "hi"}) == "HI"
    with pytest.raises(InvalidToolArguments, match=r"arguments\.times: 0 is less than the minimum of 1"):
        reg.call("greet", {"name": "ada", "times": 0})
    with pytest.raises(InvalidToolArguments, match=r"arguments\.name: .* is too long"):
        reg.call("greet", {"name": "x" * 21})
    with pytest.raises(InvalidToolArguments, match=r"'name' is a required property"):
        reg.call("greet", {})


def test_entry_points_register_tools(plugin_module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    eps = [EntryPoint("greeter", f"{plugin_module}:register", "aios.tools"),
           EntryPoint("shouter", f"{plugin_module}:TOOL", "aios.tools")]
    monkeypatch.setattr(tool_plugins, "entry_points", lambda group: eps if group == "aios.tools" else [])
    reg = load_plugins(ToolRegistry(), ToolSettings())
    assert reg.names() == ["greet", "shout"]
    with pytest.raises(InvalidToolArguments, match=r"arguments\.text: 1 is not of type 'string'"):
        reg.call("shout", {"text": 1})


@pytest.mark.parametrize(("modules", "message"), [
    ("no_such_module_xyz", "AIOS_TOOL_MODULES entry 'no_such_module_xyz' could not be loaded: ModuleNotFoundError"),
    ("{mod}:nothing", "could not be loaded: AttributeError"),
    ("{mod}:PLUGIN_CONST", "is neither a Tool nor a register"),
    ("{mod},{mod}", "failed to register its tools: ValueError: tool 'greet' is already registered"),
])
def test_a_plugin_that_cannot_load_is_a_config_error(modules: str, message: str, plugin_module: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(__import__(plugin_module), "PLUGIN_CONST", 3, raising=False)
    monkeypatch.setenv("AIOS_TOOL_MODULES", modules.format(mod=plugin_module))
    with pytest.raises(ConfigError, match=message):
        load_plugins(ToolRegistry(), Settings.from_env().tools)


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOS_MCP_SERVERS", json.dumps({"files": {"command": "srv", "args": ["-v"]}}))
    monkeypatch.setenv("AIOS_HTTP_ALLOW", " a.org ,b.org:8080,")
    s = Settings.from_env().tools
    assert s.mcp_servers == {"files": McpServerConfig(command="srv", args=["-v"])}
    assert s.http_allow_list() == ["a.org", "b.org:8080"]
    monkeypatch.setenv("AIOS_MCP_SERVERS", json.dumps({"files": {"cmd": "srv"}}))
    with pytest.raises(ConfigError, match="AIOS_MCP_SERVERS"):
        load_plugins(ToolRegistry(), Settings.from_env().tools)


def test_the_tool_worker_loads_plugins(plugin_module: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AIOS_BROKER_URL", "redis://127.0.0.1:1/0")  # importing the worker app connects nowhere
    fresh = "workers.tool" not in sys.modules
    from workers.tool import make_service

    try:
        service = make_service(base_settings(tmp_path, tool_modules=plugin_module))  # AIOS_TOOL_MODULES
    finally:
        if fresh:
            sys.modules.pop("workers.tool")
    assert "greet" in service.registry.names() and "calculator" in service.registry.names()


# -- MCP --------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mcp_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ToolRegistry]:
    server = tmp_path_factory.mktemp("mcp") / "server.py"
    server.write_text(textwrap.dedent(MCP_SERVER))
    reg = ToolRegistry()
    settings = ToolSettings(mcp_servers={"demo": McpServerConfig(command=sys.executable, args=[str(server)],
                                                                  timeout_s=10, irreversible=["erase"])})
    load_plugins(reg, settings)
    yield reg
    close_mcp_servers()


CTX = ToolContext(agent_id="tester", syscall_id="s-1", settings=Settings())


def test_mcp_tools_are_registered_with_their_schemas(mcp_registry: ToolRegistry) -> None:
    assert mcp_registry.names() == ["demo__add", "demo__calls", "demo__erase", "demo__fail", "demo__pid",
                                    "demo__whoami"]
    spec = mcp_registry.get("demo__add").spec()
    assert spec.description == "Add two integers." and spec.parameters["required"] == ["a", "b"]


def test_mcp_calls_work_and_invalid_arguments_never_reach_the_server(mcp_registry: ToolRegistry) -> None:
    before = mcp_registry.call("demo__calls", {}, CTX)["result"]
    assert mcp_registry.call("demo__add", {"a": 2, "b": 3}, CTX) == {"result": 5}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"a": "x", "b": 1}, r"arguments\.a: 'x' is not of type 'integer'"),
        ({"a": 1}, r"arguments: 'b' is a required property"),
        ({"a": 1.5, "b": 1}, r"arguments\.a: 1\.5 is not of type 'integer'"),
    ]
    for args, message in cases:
        with pytest.raises(InvalidToolArguments, match=message):
            mcp_registry.call("demo__add", args, CTX)
    assert mcp_registry.call("demo__calls", {}, CTX)["result"] == before + 1  # only the valid call ran


def test_mcp_calls_carry_the_calling_agent_in_their_meta(mcp_registry: ToolRegistry) -> None:
    assert mcp_registry.call("demo__whoami", {}, CTX) == {"result": "tester s-1"}
    other = ToolContext(agent_id="mallory", syscall_id="s-2", settings=Settings())
    assert mcp_registry.call("demo__whoami", {}, other) == {"result": "mallory s-2"}
    with pytest.raises(ToolError, match="needs its context"):  # never a call without a verified caller
        mcp_registry.call("demo__whoami", {})


def test_mcp_tools_the_operator_names_are_irreversible(mcp_registry: ToolRegistry) -> None:
    service = ToolService(mcp_registry, Settings())
    assert service.irreversible(ToolSyscall(agent_id="a", tool="demo__erase")) == "tool 'demo__erase' is irreversible"
    assert service.irreversible(ToolSyscall(agent_id="a", tool="demo__add")) is None


def test_irreversible_names_must_be_the_servers_tools(tmp_path: Path) -> None:
    server = tmp_path / "server.py"
    server.write_text(textwrap.dedent(MCP_SERVER))
    config = McpServerConfig(command=sys.executable, args=[str(server)], irreversible=["erase", "eras"])
    with pytest.raises(ConfigError, match="irreversible names tools it does not have: eras"):
        register_mcp_server(ToolRegistry(), "demo", config)
    reg = ToolRegistry()
    register_mcp_server(reg, "all", config.model_copy(update={"irreversible": ["*"]}))
    assert all(reg.get(n).irreversible for n in reg.names())


def test_an_mcp_tool_error_is_a_tool_error(mcp_registry: ToolRegistry) -> None:
    with pytest.raises(ToolError, match="MCP tool demo__fail failed"):
        mcp_registry.call("demo__fail", {}, CTX)


def test_an_mcp_server_that_died_is_started_again(mcp_registry: ToolRegistry) -> None:
    pid = mcp_registry.call("demo__pid", {}, CTX)["result"]
    os.kill(pid, signal.SIGKILL)
    assert mcp_registry.call("demo__add", {"a": 1, "b": 1}, CTX) == {"result": 2}
    assert mcp_registry.call("demo__pid", {}, CTX)["result"] != pid


@pytest.mark.parametrize(("name", "config", "message"), [
    ("bad", McpServerConfig(command="/nonexistent/mcp-server"), "server 'bad' .* could not be started"),
    ("bad_name", McpServerConfig(command=sys.executable), "server name 'bad_name' must be"),
])
def test_an_mcp_server_that_cannot_start_is_a_config_error(name: str, config: McpServerConfig, message: str) -> None:
    with pytest.raises(ConfigError, match=f"AIOS_MCP_SERVERS.*{message}"):
        register_mcp_server(ToolRegistry(), name, config)


# -- through a real kernel --------------------------------------------------------------------------------------

RENDEZVOUS = '''
import time
from pathlib import Path
from aios.services.tools.service import Tool

def meet(folder: str, parties: int, me: str, within_s: float = 10) -> dict:
    """Arrive, then wait until `parties` calls have arrived: it can only return if they run at the same time."""
    d = Path(folder)
    (d / me).touch()
    deadline = time.monotonic() + within_s
    while (n := len(list(d.iterdir()))) < parties:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n} of {parties} calls arrived: they did not run at the same time")
        time.sleep(0.01)
    return {"me": me}

def register(registry):
    schema = {"type": "object", "additionalProperties": False, "required": ["folder", "parties", "me"],
              "properties": {"folder": {"type": "string"}, "parties": {"type": "integer"}, "me": {"type": "string"},
                             "within_s": {"type": "number"}}}
    registry.register(Tool("meet", "Rendezvous.", schema, meet))
    registry.register(Tool("meet_alone", "Rendezvous, one call at a time.", schema, meet, max_concurrency=1))
'''


@pytest.mark.integration
def test_all_tool_calls_of_a_request_run_in_parallel_through_the_kernel(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from aios.ops.embedded import LocalKernel
    from tests.conftest import authorized

    name = f"aios_test_rendezvous_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(RENDEZVOUS)
    server = tmp_path / "server.py"
    server.write_text(textwrap.dedent(MCP_SERVER))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    plugins = {"tool_modules": name,  # AIOS_TOOL_MODULES and AIOS_MCP_SERVERS, as the worker's settings
               "mcp_servers": {"demo": {"command": sys.executable, "args": [str(server)]}}}
    together, alone = tmp_path / "together", tmp_path / "alone"
    together.mkdir()
    alone.mkdir()
    with LocalKernel(base_settings(tmp_path / "kernel", worker_concurrency=4, **plugins), resources=["tool"]) as lk:
        with authorized(lk.settings, "caller") as k:
            # What an LLM's tool_calls look like; every call is a syscall of its own, all in flight at once.
            calls = [{"name": "meet", "arguments": {"folder": str(together), "parties": 3, "me": m}} for m in "abc"]
            calls += [{"name": "demo__add", "arguments": {"a": 2, "b": 40}},
                      {"name": "calculator", "arguments": {"expression": 7}},
                      {"name": "no_such_tool", "arguments": {}}]
            got = k.call_tools(calls)
            assert got[:4] == [{"me": "a"}, {"me": "b"}, {"me": "c"}, {"result": 42}]
            assert isinstance(got[4], InvalidToolArguments) and "arguments.expression: 7 is not of type" in str(got[4])
            assert "unknown tool 'no_such_tool'" in str(got[5])
            # A concurrency limit of 1 is kept across the worker's threads: the two calls cannot meet. The first
            # gives up alone; the second then finds the first's mark and returns.
            pair = [{"name": "meet_alone", "arguments": {"folder": str(alone), "parties": 2, "me": m, "within_s": 1}}
                    for m in "xy"]
            got = k.call_tools(pair)
            failed = [r for r in got if isinstance(r, ToolError)]
            assert len(failed) == 1 and "1 of 2 calls arrived" in str(failed[0]), got
