"""Wire format, priority translation and settings: pure unit tests, no server."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from aios.settings import Settings
from aios.wire import errors
from aios.wire.errors import InvalidSyscall, PayloadTooLarge
from aios.wire.priority import DEFAULT_PRIORITY, from_broker, to_broker
from aios.wire.syscalls import LLMSyscall, Response, ToolSyscall, decode_syscall

REDIS = "redis://127.0.0.1:6379/0"
AMQP = "amqp://guest:guest@127.0.0.1:5672//"


def test_syscall_ids_are_random_hex_and_a_forked_child_draws_its_own() -> None:
    import os

    from aios.wire.syscalls import new_syscall_id

    ids = [new_syscall_id() for _ in range(1000)]  # several reads of the OS's randomness (256 ids each)
    assert len(set(ids)) == 1000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child's next id, while the parent's buffer still holds unused ones
        os.write(write, new_syscall_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert len(child) == 32 and child != new_syscall_id()


def tool(**over: object) -> dict:
    d = ToolSyscall(agent_id="a1", tool="noop").model_dump(mode="json")
    d.update(over)
    return d


def test_syscalls_are_frozen_versioned_and_carry_ids_priority_deadline() -> None:
    s = ToolSyscall(agent_id="a1", tool="noop", timeout_s=10)
    assert s.v == 1 and s.kind == "tool" and len(s.id) == 32
    assert s.priority == DEFAULT_PRIORITY
    assert s.deadline == pytest.approx(s.created_at + 10)
    with pytest.raises(ValidationError):
        s.priority = 9  # type: ignore[misc]
    assert ToolSyscall(agent_id="a1", tool="noop").id != s.id


def test_round_trip_through_json() -> None:
    s = LLMSyscall(agent_id="a1", messages=[{"role": "user", "content": "hi"}], output="json",
                   json_schema={"type": "object"})
    assert decode_syscall(s.model_dump_json(), max_bytes=10_000) == s
    assert decode_syscall(json.loads(s.model_dump_json()), max_bytes=10_000) == s


@pytest.mark.parametrize(
    ("data", "code", "fragment"),
    [
        ('{"kind": "tool", ', "malformed", "not valid JSON"),
        (tool(kind="teleport"), "unknown_kind", "known kinds: llm, tool, memory, storage"),
        (tool(priority=42), "invalid_syscall", "priority"),
        (tool(agent_id="../x"), "invalid_syscall", "agent_id"),
        (tool(surprise=1), "invalid_syscall", "surprise"),
        (tool(v=2), "invalid_syscall", "v:"),
        ([1, 2], "invalid_syscall", "JSON object"),
        ({"kind": "llm", "agent_id": "a", "messages": []}, "invalid_syscall", "messages"),
        ({"kind": "llm", "agent_id": "a", "messages": [{"role": "user", "content": "x"}], "output": "tool_call"},
         "invalid_syscall", "needs at least one entry in tools"),
        ({"kind": "memory", "agent_id": "a", "op": "get"}, "invalid_syscall", "needs a key"),
    ],
)
def test_bad_syscalls_get_errors_that_say_what_is_wrong(data: object, code: str, fragment: str) -> None:
    with pytest.raises(InvalidSyscall) as info:
        decode_syscall(data, max_bytes=10_000)
    assert info.value.code == code
    assert fragment in str(info.value)


def test_payload_limit() -> None:
    big = json.dumps(tool(arguments={"text": "x" * 5000}))
    with pytest.raises(PayloadTooLarge, match="AIOS_MAX_PAYLOAD_BYTES"):
        decode_syscall(big, max_bytes=4096)


def test_one_meaning_of_priority_translated_per_broker() -> None:
    # Kernel: 9 is most urgent. Redis (kombu): 0 is served first. RabbitMQ: 9 is served first.
    assert to_broker(9, REDIS) == 0 and to_broker(0, REDIS) == 9
    assert to_broker(9, AMQP) == 9 and to_broker(0, AMQP) == 0
    assert to_broker(DEFAULT_PRIORITY, "redis+socket:///tmp/r.sock") == 4
    for p in range(10):
        assert from_broker(to_broker(p, REDIS), REDIS) == p
    with pytest.raises(ValueError):
        to_broker(10, REDIS)


def test_settings_refuse_a_visibility_timeout_below_the_longest_syscall() -> None:
    with pytest.raises(errors.ConfigError, match="AIOS_VISIBILITY_TIMEOUT_S"):
        Settings(visibility_timeout_s=60, max_syscall_timeout_s=120)


def test_rabbitmq_needs_a_redis_for_state_and_says_so() -> None:
    with pytest.raises(errors.ConfigError, match="AIOS_REDIS_URL"):
        Settings(broker_url=AMQP).state_redis_url()
    assert Settings(broker_url="redis+socket:///tmp/s.sock").state_redis_url() == "unix:///tmp/s.sock"


def test_settings_survive_the_trip_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings(broker_url=REDIS, max_payload_bytes=5000, llm_n_gpu_layers=-1)
    for k, v in s.to_env().items():
        monkeypatch.setenv(k, v)
    assert Settings.from_env() == s


def test_errors_are_rebuilt_by_code() -> None:
    e = errors.from_code("invalid_arguments", "arguments.x: bad")
    assert isinstance(e, errors.InvalidToolArguments) and isinstance(e, errors.AIOSError)
    assert isinstance(errors.from_code("content_type", "no pickle"), InvalidSyscall)
    assert type(errors.from_code("never-heard-of-it", "?")) is errors.AIOSError


def test_response_timing() -> None:
    r = Response.model_validate({"id": "abcdefgh", "status": "ok", "result": 1,
                                 "timing": {"created_at": 1.0, "started_at": 1.5, "finished_at": 3.0}})
    assert r.timing.queue_wait_s == 0.5 and r.timing.service_s == 1.5
