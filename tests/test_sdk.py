"""The SDK's own checks, before anything reaches a broker (no server needed: nothing is sent)."""

from __future__ import annotations

import pytest

from aios import ConfigError, Kernel, PayloadTooLarge
from aios.settings import Settings

NOWHERE = Settings(broker_url="redis://127.0.0.1:1/0", max_payload_bytes=2048)
SECRET = "ab" * 32


@pytest.fixture
def k() -> Kernel:
    return Kernel("alice", settings=NOWHERE, priority=3, timeout_s=7, credential=SECRET)


def test_builders_fill_in_the_agent_and_its_defaults(k: Kernel) -> None:
    s = k.tool_syscall("calculator", {"expression": "1+1"})
    assert (s.agent_id, s.priority, s.timeout_s) == ("alice", 3, 7)
    s = k.memory_syscall("get", "x", priority=9, timeout_s=1.5)
    assert (s.priority, s.timeout_s) == (9, 1.5)
    assert k.llm_syscall("hi").messages[0].content == "hi"


def test_a_client_acts_for_one_agent_only(k: Kernel) -> None:
    with Kernel("mallory", settings=NOWHERE, credential=SECRET) as other:
        with pytest.raises(ValueError, match="acts for agent 'alice'"):
            k.submit(other.tool_syscall("noop"))


def test_oversized_syscall_is_refused_before_sending(k: Kernel) -> None:
    with pytest.raises(PayloadTooLarge, match="write_file"):
        k.submit(k.tool_syscall("echo", {"text": "x" * 5000}))


def test_unknown_options_are_typos_not_silently_ignored(k: Kernel) -> None:
    with pytest.raises(TypeError):
        k.memory_get("key", timeout=5)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        k.read_file("a.txt", priorty=9)  # type: ignore[call-arg]


def test_tool_arguments_may_be_a_dict_when_named_like_options(k: Kernel) -> None:
    captured = []
    k._run = lambda call: captured.extend(call.syscalls)  # type: ignore[method-assign,assignment,misc]
    k.call_tool("schedule", {"priority": "high", "timeout_s": 3}, priority=1)
    assert captured[0].arguments == {"priority": "high", "timeout_s": 3} and captured[0].priority == 1


def test_an_llms_tool_calls_become_one_syscall_each(k: Kernel) -> None:
    calls = [{"name": "calculator", "arguments": {"expression": "1+1"}}, {"name": "noop"}]
    got = k.tool_syscalls(calls, priority=8)
    assert [(s.tool, s.arguments, s.priority) for s in got] == [("calculator", {"expression": "1+1"}, 8),
                                                                ("noop", {}, 8)]
    assert len({s.id for s in got}) == 2
    for bad in ({"arguments": {}}, "calculator", {"name": 3}):
        with pytest.raises(ValueError, match="tool call 0 must be a dict with a 'name'"):
            k.tool_syscalls([bad])  # type: ignore[list-item]


def test_no_broker_and_no_running_kernel_says_what_to_do(tmp_path) -> None:
    with pytest.raises(Exception, match="aios up"):
        Kernel("alice", settings=Settings(data_dir=tmp_path))


def test_without_a_credential_the_client_says_how_to_get_one(tmp_path) -> None:
    with pytest.raises(ConfigError, match="aios agent create bob"):
        Kernel("bob", settings=Settings(broker_url="redis://127.0.0.1:1/0", data_dir=tmp_path))
    Kernel("bob", settings=Settings(broker_url="redis://127.0.0.1:1/0", data_dir=tmp_path, auth="off")).close()


def test_signature_covers_every_field(k: Kernel) -> None:
    from aios.policy.identity import sign

    payload = k.tool_syscall("echo", {"text": "a"}).model_dump(mode="json")
    sig = sign(payload, SECRET)
    assert sign({**payload, "sig": "whatever"}, SECRET) == sig  # the signature itself is not signed
    for field, value in [("agent_id", "mallory"), ("arguments", {"text": "b"}), ("priority", 9),
                         ("created_at", payload["created_at"] + 1), ("id", "f" * 32)]:
        assert sign({**payload, field: value}, SECRET) != sig, field
    assert sign(payload, "cd" * 32) != sig
