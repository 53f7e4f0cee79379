"""The tool manager: a registry of tools, each declaring a JSON schema that its arguments must satisfy.

Arguments are validated before a tool runs; an invalid one gets an error naming the field. The built-in tools
are offline and side-effect free.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from simpleeval import SimpleEval

from aios.errors import InvalidToolArguments, ToolError, UnknownTool
from aios.syscalls import ToolSpec, ToolSyscall


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any]
    irreversible: bool = False
    validator: Draft202012Validator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            Draft202012Validator.check_schema(self.parameters)
        except SchemaError as exc:
            raise ValueError(f"tool {self.name!r} declares an invalid JSON schema: {exc.message}") from None
        object.__setattr__(self, "validator", Draft202012Validator(self.parameters))

    def spec(self) -> ToolSpec:
        """What an LLM syscall needs to offer this tool to a model."""
        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters)


class ToolRegistry:
    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def register(self, tool: Tool) -> Tool:
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} is already registered")
        self._tools[tool.name] = tool
        return tool

    def tool(self, name: str, description: str, parameters: dict[str, Any], *, irreversible: bool = False
             ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator form of :meth:`register`; the function receives the validated arguments as keywords."""
        def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.register(Tool(name, description, parameters, fn, irreversible))
            return fn
        return wrap

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            known = ", ".join(sorted(self._tools)) or "none"
            raise UnknownTool(f"unknown tool {name!r}; registered tools: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._tools)

    def specs(self) -> list[ToolSpec]:
        return [self._tools[n].spec() for n in self.names()]

    def validate(self, name: str, arguments: dict[str, Any]) -> Tool:
        tool = self.get(name)
        errors = sorted(tool.validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
        if errors:
            parts = []
            for err in errors:
                where = ".".join(str(p) for p in err.absolute_path)
                parts.append(f"arguments.{where}: {err.message}" if where else f"arguments: {err.message}")
            raise InvalidToolArguments(f"invalid arguments for tool {name!r}: " + "; ".join(parts))
        return tool

    def call(self, name: str, arguments: dict[str, Any]) -> Any:
        tool = self.validate(name, arguments)
        try:
            return tool.fn(**arguments)
        except ToolError:
            raise
        except Exception as exc:  # the tool's own failure is the caller's answer, not a worker crash
            raise ToolError(f"tool {name!r} failed: {type(exc).__name__}: {exc}") from None


class ToolService:
    """The tool worker's service."""

    def __init__(self, registry: ToolRegistry | None = None) -> None:
        self.registry = registry or builtin_registry()

    def handle(self, syscall: ToolSyscall) -> Any:
        return self.registry.call(syscall.tool, syscall.arguments)


# -- built-in tools -------------------------------------------------------------------------------------------

_MATH_FUNCTIONS = {
    name: getattr(math, name)
    for name in ("sqrt", "log", "log10", "log2", "exp", "sin", "cos", "tan", "asin", "acos", "atan", "floor",
                 "ceil", "factorial", "gcd", "hypot", "degrees", "radians")
}
_MATH_FUNCTIONS.update(abs=abs, round=round, min=min, max=max)


def _bounded_factorial(n: int) -> int:
    if not isinstance(n, int) or not 0 <= n <= 1000:
        raise ValueError("factorial takes an integer from 0 to 1000")
    return math.factorial(n)


_MATH_FUNCTIONS["factorial"] = _bounded_factorial
_MAX_EXPRESSION_CHARS = 500


def calculate(expression: str) -> dict[str, Any]:
    """Evaluate arithmetic safely: no names but math constants, no attributes, bounded powers and strings."""
    if len(expression) > _MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression is {len(expression)} characters; the calculator takes at most {_MAX_EXPRESSION_CHARS}")
    evaluator = SimpleEval(functions=_MATH_FUNCTIONS, names={"pi": math.pi, "e": math.e, "tau": math.tau})
    try:
        value = evaluator.eval(expression.replace("^", "**"))
    except SyntaxError as exc:
        raise ToolError(f"calculator could not parse {expression!r}: {exc.msg}; write arithmetic like '17 * (3 + 4)'") from None
    except Exception as exc:
        raise ToolError(f"calculator could not evaluate {expression!r}: {exc}") from None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ToolError(f"calculator result of {expression!r} is not a number")
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    return {"expression": expression, "value": value}


def builtin_registry() -> ToolRegistry:
    reg = ToolRegistry()
    reg.register(Tool(
        "calculator", "Evaluate an arithmetic expression, e.g. '17 * (3 + 4) / sqrt(2)'.",
        {"type": "object", "properties": {"expression": {"type": "string", "minLength": 1}},
         "required": ["expression"], "additionalProperties": False},
        calculate,
    ))
    reg.register(Tool(
        "noop", "Do nothing and return null (used to measure the kernel's own overhead).",
        {"type": "object", "properties": {}, "additionalProperties": False},
        lambda: None,
    ))
    reg.register(Tool(
        "echo", "Return the given text unchanged.",
        {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"],
         "additionalProperties": False},
        lambda text: {"text": text},
    ))
    reg.register(Tool(
        "word_count", "Count the words and characters of a text.",
        {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"],
         "additionalProperties": False},
        lambda text: {"words": len(text.split()), "characters": len(text)},
    ))
    reg.register(Tool(
        "sleep", "Wait the given number of seconds (at most 10), then return them.",
        {"type": "object", "properties": {"seconds": {"type": "number", "minimum": 0, "maximum": 10}},
         "required": ["seconds"], "additionalProperties": False},
        lambda seconds: (time.sleep(seconds), {"slept_s": seconds})[1],
    ))
    reg.register(Tool(
        "current_time", "The current UTC time in ISO 8601.",
        {"type": "object", "properties": {}, "additionalProperties": False},
        lambda: {"utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    ))
    return reg
