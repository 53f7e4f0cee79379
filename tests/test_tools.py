"""The tool manager: schemas validated before running, errors naming the field, a safe calculator."""

from __future__ import annotations

import pytest

from aios.errors import InvalidToolArguments, ToolError, UnknownTool
from aios.tools import Tool, ToolRegistry, builtin_registry, calculate


@pytest.mark.parametrize(("expr", "value"), [("17 * 23", 391), ("2^10", 1024), ("(1 + 2) / 4", 0.75),
                                             ("sqrt(16) + floor(2.7)", 6), ("factorial(5)", 120)])
def test_calculator(expr: str, value: float) -> None:
    assert calculate(expr)["value"] == value


@pytest.mark.parametrize("expr", ["__import__('os').system('true')", "open('/etc/passwd')", "9 ** 9 ** 9",
                                  "factorial(100000)", "(1).__class__", "x" * 600, "1 +"])
def test_calculator_refuses_anything_but_bounded_arithmetic(expr: str) -> None:
    with pytest.raises(ToolError):
        calculate(expr)


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
