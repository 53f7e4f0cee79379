"""The tool manager: schemas validated before running, errors naming the field, time and concurrency limits,
the calculator, file tools in the agent's own storage, and http_fetch behind its allow-list."""

from __future__ import annotations

import http.server
import math
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from aios.services.tools.service import (
    Tool,
    ToolContext,
    ToolRegistry,
    ToolService,
    builtin_registry,
    calculate,
)
from aios.settings import Settings
from aios.wire.errors import (
    AccessDenied,
    InvalidToolArguments,
    NotFound,
    ToolError,
    UnknownTool,
)
from aios.wire.syscalls import ToolSyscall
from tests.conftest import base_settings


def env_ctx() -> ToolContext:
    """A tool context whose settings come from the environment now (the tests set AIOS_HTTP_ALLOW as they go)."""
    return ToolContext(agent_id="tester", syscall_id="t1", settings=Settings.from_env())


@pytest.mark.parametrize(("expr", "value"), [("17 * 23", 391), ("2^10", 1024), ("(1 + 2) / 4", 0.75),
                                             ("sqrt(16) + floor(2.7)", 6), ("factorial(5)", 120)])
def test_calculator(expr: str, value: float) -> None:
    assert calculate(expr)["value"] == value


@pytest.mark.parametrize("expr", ["__import__('os').system('true')", "open('/etc/passwd')", "9 ** 9 ** 9",
                                  "factorial(100000)", "(1).__class__", "x" * 600, "1 +"])
def test_calculator_refuses_anything_but_bounded_arithmetic(expr: str) -> None:
    with pytest.raises(ToolError):
        calculate(expr)


@pytest.mark.parametrize(("expr", "why"), [
    ("9**4000000*9**4000000", "a power would have about 3,816,970 digits"),  # froze the tool worker for 5 s
    ("2**10001", "a power would have about 3,010 digits"),
    ("(2**5000)*(2**5000)", "a product"), ("factorial(1000)*factorial(1000)*factorial(1000)", "a product"),
    ("(1<<9000)<<9000", "a shift"), ("2**9999+2**9999", "the result"), ("1e308*10", "is inf, not a finite number"),
])
def test_calculator_refuses_numbers_too_large_before_computing_them(expr: str, why: str) -> None:
    started = time.monotonic()
    with pytest.raises(ToolError, match=re.escape(why)):
        calculate(expr)
    assert time.monotonic() - started < 0.1


def test_calculator_computes_integers_up_to_its_limit() -> None:
    assert calculate("2**9999")["value"] == 2**9999 and calculate("(2**5000)*(2**4999)")["value"] == 2**9999
    assert len(str(calculate("10**3010")["value"])) == 3011 and calculate("1**4000000")["value"] == 1
    assert calculate("factorial(1000)")["value"] == math.factorial(1000)


def test_invalid_arguments_name_the_field() -> None:
    reg = builtin_registry()
    with pytest.raises(InvalidToolArguments, match=r"arguments\.expression: 3 is not of type 'string'"):
        reg.call("calculator", {"expression": 3})
    with pytest.raises(InvalidToolArguments, match="'expression' is a required property"):
        reg.call("calculator", {})
    with pytest.raises(InvalidToolArguments, match=r"'nope' was unexpected"):
        reg.call("echo", {"text": "a", "nope": 1})
    with pytest.raises(InvalidToolArguments, match=r"arguments\.seconds: 60 is greater than the maximum of 10"):
        reg.call("sleep", {"seconds": 60})


def test_unknown_tool_lists_known_ones() -> None:
    with pytest.raises(UnknownTool, match="calculator"):
        builtin_registry().call("rm", {})


def test_registry_refuses_bad_schemas_and_duplicates() -> None:
    reg = ToolRegistry()
    with pytest.raises(ValueError, match="invalid JSON schema"):
        reg.register(Tool("bad", "", {"type": "no-such-type"}, lambda: None))
    reg.register(Tool("t", "", {"type": "object"}, lambda: 1))
    with pytest.raises(ValueError, match="already registered"):
        reg.register(Tool("t", "", {"type": "object"}, lambda: 1))


def test_a_crashing_tool_is_an_error_not_a_crash() -> None:
    reg = ToolRegistry()

    @reg.tool("boom", "always fails", {"type": "object"})
    def boom() -> None:
        raise RuntimeError("kaput")

    with pytest.raises(ToolError, match="RuntimeError: kaput"):
        reg.call("boom", {})
    assert [s.name for s in builtin_registry().specs()][:2] == ["calculator", "current_time"]


# -- validation of every kind, time limits, concurrency, context --------------------------------------------

@pytest.mark.parametrize(("tool", "args", "message"), [
    ("calculator", {}, r"arguments: 'expression' is a required property"),
    ("calculator", {"expression": 3}, r"arguments\.expression: 3 is not of type 'string'"),
    ("calculator", {"expression": ""}, r"arguments\.expression: '' should be non-empty"),
    ("echo", {"text": "a", "nope": 1}, r"arguments: Additional properties are not allowed \('nope' was unexpected\)"),
    ("sleep", {"seconds": -1}, r"arguments\.seconds: -1 is less than the minimum of 0"),
    ("sleep", {"seconds": 60}, r"arguments\.seconds: 60 is greater than the maximum of 10"),
    ("sleep", {"seconds": "1"}, r"arguments\.seconds: '1' is not of type 'number'"),
    ("python", {"code": "x" * 20_001}, r"arguments\.code: .* is too long"),
    ("python", {"code": "1", "timeout_s": 31}, r"arguments\.timeout_s: 31 is greater than the maximum of 30"),
    ("python", {"code": "1", "timeout_s": 0}, r"arguments\.timeout_s: 0 is less than or equal to the minimum of 0"),
    ("read_file", {"path": ["a"]}, r"arguments\.path: \['a'\] is not of type 'string'"),
    ("write_file", {"path": "a"}, r"'content' is a required property"),
    ("write_file", {"path": "a" * 1025, "content": ""}, r"arguments\.path: .* is too long"),
    ("http_fetch", {"url": "http://x", "timeout_s": 99}, r"arguments\.timeout_s: 99 is greater than the maximum"),
])
def test_invalid_arguments_of_every_kind_name_the_field(tool: str, args: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidToolArguments, match=message):
        builtin_registry().call(tool, args)


def test_several_errors_are_all_named() -> None:
    with pytest.raises(InvalidToolArguments) as info:
        builtin_registry().call("write_file", {"path": 1, "content": 2, "x": 3})
    assert all(s in info.value.message for s in ("arguments.path:", "arguments.content:", "'x' was unexpected"))


def test_a_slow_tool_hits_its_time_limit() -> None:
    reg = ToolRegistry()
    reg.register(Tool("slow", "", {"type": "object"}, lambda: time.sleep(3), timeout_s=0.2))
    started = time.monotonic()
    with pytest.raises(ToolError, match=r"tool 'slow' exceeded its time limit of 0\.2 s"):
        reg.call("slow", {})
    assert time.monotonic() - started < 1.0


def test_a_tools_own_timeout_error_is_not_mistaken_for_the_time_limit() -> None:
    reg = ToolRegistry()

    @reg.tool("flaky", "", {"type": "object"})
    def flaky() -> None:
        raise TimeoutError("upstream slow")

    with pytest.raises(ToolError, match="failed: TimeoutError: upstream slow"):
        reg.call("flaky", {})


def test_concurrency_limit_is_respected_and_bounded_by_the_time_limit() -> None:
    reg, running, peak, lock = ToolRegistry(), [0], [0], threading.Lock()

    def work() -> str:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.15)
        with lock:
            running[0] -= 1
        return "done"

    reg.register(Tool("one", "", {"type": "object"}, work, timeout_s=5, max_concurrency=1))
    reg.register(Tool("two", "", {"type": "object"}, work, timeout_s=5, max_concurrency=2))
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda _: reg.call("one", {}), range(3))) == ["done"] * 3
        assert peak[0] == 1
        peak[0] = 0
        list(pool.map(lambda _: reg.call("two", {}), range(4)))
        assert peak[0] == 2
    reg.register(Tool("busy", "", {"type": "object"}, lambda: time.sleep(0.5), timeout_s=0.1, max_concurrency=1))
    with ThreadPoolExecutor(2) as pool:
        outcomes = [f.exception() for f in [pool.submit(reg.call, "busy", {}) for _ in range(2)]]
    assert any(isinstance(e, ToolError) and "busy" in e.message for e in outcomes)


def test_a_tool_that_takes_ctx_gets_the_callers_context(tmp_path: Path) -> None:
    reg, seen = ToolRegistry(), []

    def who(ctx: ToolContext) -> str:
        seen.append(ctx)
        return ctx.agent_id

    reg.register(Tool("who", "", {"type": "object"}, who))
    service = ToolService(reg, base_settings(tmp_path))
    assert service.handle(ToolSyscall(agent_id="alice", tool="who")) == "alice"
    assert isinstance(seen[0], ToolContext) and seen[0].settings.data_dir == tmp_path
    with pytest.raises(ToolError, match="needs its context"):
        reg.call("who", {})
    with pytest.raises(InvalidToolArguments, match="arguments.ctx: 'ctx' is reserved"):
        reg.call("who", {"ctx": 1}, ctx=seen[0])
    with pytest.raises(ValueError, match="'ctx' is reserved"):
        Tool("bad", "", {"type": "object", "properties": {"ctx": {}}}, lambda ctx: None)


@pytest.mark.parametrize("name", ["a.b", "1st", "", "x" * 65, "sp ace"])
def test_tool_names_must_be_offerable_to_a_model(name: str) -> None:
    with pytest.raises(ValueError, match="must be 1-64 letters"):
        Tool(name, "", {"type": "object"}, lambda: None)


# -- file tools: the calling agent's own storage --------------------------------------------------------------

def test_file_tools_work_in_the_agents_own_folder(tmp_path: Path) -> None:
    service = ToolService(settings=base_settings(tmp_path))

    def call(agent: str, tool: str, **args: Any) -> Any:
        return service.handle(ToolSyscall(agent_id=agent, tool=tool, arguments=args))

    assert call("alice", "write_file", path="notes/a.txt", content="hi") == {"path": "notes/a.txt", "bytes": 2,
                                                                             "version": 1}  # versioned here too
    assert (tmp_path / "agents" / "alice" / "files" / "notes" / "a.txt").read_text() == "hi"
    assert call("alice", "read_file", path="notes/a.txt")["content"] == "hi"
    assert call("alice", "list_files")["entries"] == [{"name": "notes", "type": "dir", "bytes": 0}]
    assert call("alice", "list_files", path="notes")["entries"][0]["name"] == "a.txt"
    with pytest.raises(NotFound):  # bob has his own folder: alice's file is not in it
        call("bob", "read_file", path="notes/a.txt")
    for bad in ("../bob/files/x", "/etc/passwd", "a/../../x"):
        with pytest.raises(AccessDenied):
            call("alice", "read_file", path=bad)
    assert call("alice", "delete_file", path="notes/a.txt") == {"path": "notes/a.txt", "deleted": True}
    assert [t.name for t in builtin_registry().specs() if t.name.endswith("_file")] == [
        "delete_file", "read_file", "write_file"]
    assert not builtin_registry().get("write_file").irreversible  # a write keeps a version
    assert builtin_registry().get("delete_file").irreversible
    assert not builtin_registry().get("read_file").irreversible


# -- http_fetch: an allow-list of hosts ---------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        port = self.server.server_port  # type: ignore[attr-defined]
        if self.path.startswith("/redirect-out"):
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{port}/hello")
        elif self.path.startswith("/redirect-in"):
            self.send_response(301)
            self.send_header("Location", "/hello")
        elif self.path == "/big":
            body = b"x" * 1_500_000
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        elif self.path == "/hello":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.end_headers()
            self.wfile.write("héllo".encode())
            return
        else:
            self.send_response(404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def http_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_http_fetch_gets_allowed_hosts(http_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOS_HTTP_ALLOW", "example.org, 127.0.0.1")
    reg = builtin_registry()
    got = reg.call("http_fetch", {"url": f"http://127.0.0.1:{http_port}/hello"}, ctx=env_ctx())
    assert got == {"url": f"http://127.0.0.1:{http_port}/hello", "status": 200, "content_type": "text/plain",
                   "text": "héllo", "truncated": False}
    assert reg.call("http_fetch", {"url": f"http://127.0.0.1:{http_port}/redirect-in"}, ctx=env_ctx())["text"] == "héllo"
    assert reg.call("http_fetch", {"url": f"http://127.0.0.1:{http_port}/missing"}, ctx=env_ctx())["status"] == 404
    big = reg.call("http_fetch", {"url": f"http://127.0.0.1:{http_port}/big"}, ctx=env_ctx())
    assert big["truncated"] and len(big["text"]) == 1_000_000
    monkeypatch.setenv("AIOS_HTTP_ALLOW", f"127.0.0.1:{http_port}")
    assert reg.call("http_fetch", {"url": f"http://127.0.0.1:{http_port}/hello"}, ctx=env_ctx())["status"] == 200


@pytest.mark.parametrize(("allow", "path_or_url", "message"), [
    ("", "/hello", r"host '127\.0\.0\.1' .* not in the allow-list AIOS_HTTP_ALLOW \(empty, so nothing is allowed\)"),
    ("127.0.0.1", "http://localhost:{port}/hello", r"host 'localhost' .* AIOS_HTTP_ALLOW \(127\.0\.0\.1\)"),
    ("127.0.0.1:1", "/hello", r"host '127\.0\.0\.1' \(port \d+\) .* AIOS_HTTP_ALLOW \(127\.0\.0\.1:1\)"),
    ("127.0.0.1", "/redirect-out", r"host 'localhost' .* not in the allow-list AIOS_HTTP_ALLOW"),
    ("127.0.0.1", "http://evil.example@localhost:{port}/", r"host 'localhost'"),
    ("127.0.0.1", "file:///etc/passwd", r"http and https URLs only"),
])
def test_http_fetch_refuses_hosts_not_allowed(allow: str, path_or_url: str, message: str, http_port: int,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOS_HTTP_ALLOW", allow)
    url = path_or_url.format(port=http_port) if "//" in path_or_url else f"http://127.0.0.1:{http_port}{path_or_url}"
    with pytest.raises(ToolError, match=message):
        builtin_registry().call("http_fetch", {"url": url}, ctx=env_ctx())


def test_list_tools_lists_the_registry_with_what_needs_approval() -> None:
    reg = builtin_registry()
    reg.register(Tool("later", "a plugin, registered after the built-ins", {"type": "object"}, lambda: None,
                      irreversible=True))
    listed = {t["name"]: t for t in reg.call("list_tools", {})["tools"]}
    assert set(listed) == set(reg.names())
    assert listed["later"]["irreversible"] is True and listed["delete_file"]["irreversible"] is True
    assert listed["calculator"]["irreversible"] is False
    assert listed["calculator"]["parameters"]["required"] == ["expression"]
    assert listed["later"]["description"] == "a plugin, registered after the built-ins"
