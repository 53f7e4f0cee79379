"""The built-in ``calculator`` tool: arithmetic evaluated safely with ``simpleeval`` (no names but math constants,
no attributes), with every integer bounded before it is computed."""

from __future__ import annotations

import ast
import math
from typing import Any

import simpleeval
from simpleeval import SimpleEval

from aios.wire.errors import ToolError

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
MAX_INT_BITS = 10_000
"""The largest integer the calculator computes, in bits (about 3000 digits): every power, product and shift is
sized from its operands' bit lengths before it is computed, so none takes more than microseconds, and every result
stays below Python's 4300-digit limit on turning an integer into text."""


class _TooLarge(ValueError):
    pass


def _check_bits(bits: float, what: str) -> None:
    if bits > MAX_INT_BITS:
        raise _TooLarge(f"{what} would have about {int(bits * math.log10(2)):,} digits; the calculator computes "
                        f"integers of at most {int(MAX_INT_BITS * math.log10(2)):,} digits ({MAX_INT_BITS} bits)")


def _ints(*values: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _power(a: Any, b: Any) -> Any:
    if _ints(a, b) and b > 0 and abs(a) > 1:
        _check_bits(b * math.log2(abs(a)), "a power")
    return simpleeval.safe_power(a, b)


def _product(a: Any, b: Any) -> Any:
    if _ints(a, b):
        _check_bits(a.bit_length() + b.bit_length() - 1, "a product")
    return simpleeval.safe_mult(a, b)


def _shift(a: Any, b: Any) -> Any:
    if _ints(a, b) and a:
        _check_bits(a.bit_length() + b, "a shift")
    return simpleeval.safe_lshift(a, b)


_OPERATORS = {**simpleeval.DEFAULT_OPERATORS, ast.Pow: _power, ast.Mult: _product, ast.LShift: _shift}


def calculate(expression: str) -> dict[str, Any]:
    """Evaluate arithmetic safely: no names but math constants, no attributes, bounded powers, integers
    (:data:`MAX_INT_BITS`) and strings."""
    if len(expression) > _MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression is {len(expression)} characters; the calculator takes at most {_MAX_EXPRESSION_CHARS}")
    evaluator = SimpleEval(operators=_OPERATORS, functions=_MATH_FUNCTIONS,
                           names={"pi": math.pi, "e": math.e, "tau": math.tau})
    try:
        value = evaluator.eval(expression.replace("^", "**"))
        if _ints(value):  # sums of bounded terms, the one way left to grow
            _check_bits(value.bit_length(), "the result")
    except SyntaxError as exc:
        raise ToolError(f"calculator could not parse {expression!r}: {exc.msg}; write arithmetic like '17 * (3 + 4)'") from None
    except _TooLarge as exc:
        raise ToolError(f"calculator refused {expression!r}: {exc}") from None
    except Exception as exc:
        raise ToolError(f"calculator could not evaluate {expression!r}: {exc}") from None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ToolError(f"calculator result of {expression!r} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError(f"calculator result of {expression!r} is {value}, not a finite number")
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    return {"expression": expression, "value": value}
