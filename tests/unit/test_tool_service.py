"""The tool service in-process, through the worker pipeline: built-in tools, and the errors an agent gets back
for an unknown tool or arguments that do not match its schema."""

from __future__ import annotations

from typing import Any

import pytest

from aios.services.tools.service import Tool, ToolRegistry, ToolService
from aios.testing import Harness
from aios.wire.errors import InvalidSyscall
from aios.wire.syscalls import MemorySyscall
from tests.unit.conftest import MakeHarness, tools


@pytest.fixture
def h(harness: MakeHarness, settings: Any) -> Harness:
    return harness("tool", tools(settings))


def call(h: Harness, name: str, **arguments: Any) -> Any:
    answer = h.run(h.sdk.tool_syscall(name, arguments))
    assert answer is not None
    return answer


def test_calculator(h: Harness) -> None:
    assert call(h, "calculator", expression="17 * 23").result == {"expression": "17 * 23", "value": 391}
    assert call(h, "calculator", expression="2 ^ 10 / 4").result["value"] == 256
    assert call(h, "calculator", expression="sqrt(2) * sqrt(2)").result["value"] == pytest.approx(2)


def test_echo_word_count_and_noop(h: Harness) -> None:
    assert call(h, "echo", text="hello  world").result == {"text": "hello  world"}
    assert call(h, "word_count", text="one two three").result == {"words": 3, "characters": 13}
    assert call(h, "noop").result is None


def test_a_calculator_error_names_the_expression(h: Harness) -> None:
    error = call(h, "calculator", expression="17 *").error
    assert error.code == "tool_error" and "could not parse '17 *'" in error.message
    error = call(h, "calculator", expression="__import__('os')").error
    assert error.code == "tool_error"


def test_an_unknown_tool_lists_the_registered_ones(h: Harness) -> None:
    error = call(h, "teleport").error
    assert error.code == "unknown_tool" and "calculator" in error.message and "echo" in error.message


@pytest.mark.parametrize("arguments, where", [
    ({}, "arguments: 'expression' is a required property"),
    ({"expression": 17}, "arguments.expression: 17 is not of type 'string'"),
    ({"expression": "1", "extra": True}, "Additional properties are not allowed ('extra' was unexpected)"),
])
def test_invalid_arguments_name_the_field(h: Harness, arguments: dict[str, Any], where: str) -> None:
    error = call(h, "calculator", **arguments).error
    assert error.code == "invalid_arguments" and where in error.message


def test_a_tool_declared_irreversible_is_parked_under_approvals(harness: MakeHarness, make_settings: Any) -> None:
    ran: list[str] = []
    reg = ToolRegistry()
    reg.register(Tool("send_email", "sends mail", {"type": "object"}, lambda: ran.append("sent"), irreversible=True))
    h = harness("tool", ToolService(reg, make_settings()), settings=make_settings(approvals="required"))
    assert h.run(h.sdk.tool_syscall("send_email")) is None and ran == []


def test_a_result_over_the_limit_is_refused_and_not_stored(harness: MakeHarness, make_settings: Any) -> None:
    reg = ToolRegistry()
    reg.register(Tool("big", "returns n bytes", {"type": "object", "properties": {"n": {"type": "integer"}}},
                      lambda n: "x" * n))
    h = harness("tool", ToolService(reg, make_settings(max_result_bytes=10_000)))
    assert call(h, "big", n=9_000).result == "x" * 9_000
    syscall = h.sdk.tool_syscall("big", {"n": 20_000})
    answer = h.run(syscall)
    assert answer is not None and answer.error is not None and answer.error.code == "tool_error"
    assert "returned 20,002 bytes of JSON, more than AIOS_MAX_RESULT_BYTES (10,000)" in answer.error.message
    stored = h.stored(syscall.id)
    assert stored is not None and stored.result is None and "x" * 100 not in stored.model_dump_json()


def test_a_calculator_too_large_a_number_is_refused_at_once(h: Harness) -> None:
    error = call(h, "calculator", expression="9**4000000*9**4000000").error
    assert error.code == "tool_error" and "a power would have about 3,816,970 digits" in error.message


def test_the_service_refuses_other_kinds(settings: Any) -> None:
    with pytest.raises(InvalidSyscall, match="serves tool syscalls, not 'memory'"):
        tools(settings).handle(MemorySyscall(agent_id="a", op="list"))  # type: ignore[arg-type]
