"""What the LLM core asks of a model and how it reads the answer, the same for every backend: the messages with
their output instruction (JSON schema, tool calls), and the parsing and re-validation of structured output."""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from aios.wire.errors import BackendError, InvalidSyscall
from aios.wire.syscalls import LLMSyscall, ToolSpec

Message = dict[str, str]


ANSWER = "answer"
"""With ``tool_choice='auto'`` the model may reply ``{"answer": <text>}`` instead of calling a tool."""


def offered(syscall: LLMSyscall) -> tuple[ToolSpec, ...]:
    """The tools the model may call: all, or the one ``tool_choice`` names."""
    return tuple(t for t in syscall.tools if syscall.tool_choice in (None, "auto", "required", t.name))


def tool_call_schema(tools: tuple[ToolSpec, ...], *, parallel: bool = False, auto: bool = False) -> dict[str, Any]:
    """One JSON schema that matches exactly one call of one of ``tools``: ``{"name": ..., "arguments": {...}}``;
    ``parallel``: or a list of such calls; ``auto``: or ``{"answer": <text>}``."""
    call: dict[str, Any] = {"anyOf": [{"type": "object", "properties": {"name": {"const": t.name},
                                                                        "arguments": t.parameters},
                                       "required": ["name", "arguments"], "additionalProperties": False}
                                      for t in tools]}
    forms = [call]
    if parallel:
        forms.append({"type": "array", "items": call, "minItems": 1, "maxItems": 8})
    if auto:
        forms.append({"type": "object", "properties": {ANSWER: {"type": "string"}}, "required": [ANSWER],
                      "additionalProperties": False})
    return call if len(forms) == 1 else {"anyOf": forms}


def tool_instruction(tools: tuple[ToolSpec, ...], *, auto: bool = False) -> str:
    # Argument names only: the grammar (or the server) enforces the schema, and small models follow a short
    # signature list better than a schema dump (measured on SmolLM2-135M), at a fraction of the prompt tokens.
    # Several calls at once (a JSON list) are allowed by the grammar but not suggested: told of lists,
    # SmolLM2-135M wrote prose inside the first call's strings instead (measured).
    lines = ["Available tools:"]
    for t in tools:
        args = ", ".join(t.parameters.get("properties", {}))
        lines.append(f"- {t.name}({args}): {t.description}".rstrip(": "))
    lines.append('Reply with a JSON object: {"name": <tool>, "arguments": {<argument>: <value>}}.')
    if auto:
        lines.append(f'To answer without a tool, reply {{"{ANSWER}": <your answer>}}.')
    return "\n".join(lines)


def cut_at_stop(text: str, stops: tuple[str, ...] | list[str]) -> tuple[str, bool]:
    """``text`` up to the first of ``stops``, and whether one was found."""
    cut = min((text.index(x) for x in stops if x and x in text), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)


def schema_instruction(schema: dict[str, Any]) -> str:
    return f"Reply only with a JSON object valid against this JSON schema: {json.dumps(schema, separators=(',', ':'))}"


def check_schema(schema: dict[str, Any], what: str) -> None:
    """Refuse a broken schema before spending a generation on it."""
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidSyscall(f"{what} is not a valid JSON schema: {exc.message}") from None


def schema_error(schema: dict[str, Any], instance: Any) -> str | None:
    """The most relevant validation problem, naming the field (``at 'a.b': ...``), or None when valid."""
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is None:
        return None
    where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    return f"at {where!r}: {error.message}"


def build_messages(syscall: LLMSyscall, instruction: str | None = None) -> list[Message]:
    """Wire messages, with ``instruction`` merged into the leading system message (or prepended as one).

    ``tool`` messages become user messages: the syscall carries no tool_call_id, which OpenAI servers require,
    and small local chat templates were never trained on a tool role.
    """
    out = [{"role": "user", "content": f"Tool result:\n{m.content}"} if m.role == "tool"
           else {"role": m.role, "content": m.content} for m in syscall.messages]
    if instruction and out[0]["role"] == "system":
        out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{instruction}"}
    elif instruction:
        out.insert(0, {"role": "system", "content": instruction})
    return out


def _unusable(what: str, finish_reason: str, max_tokens: int, detail: str) -> BackendError:
    why = f"was cut off at max_tokens={max_tokens}" if finish_reason == "length" else "did not match the schema"
    return BackendError(f"the model's {what} {why}: {detail}; raise max_tokens or simplify the schema")


def parse_json_output(text: str | None, schema: dict[str, Any], finish_reason: str, max_tokens: int) -> Any:
    try:
        value = json.loads(text or "")
    except ValueError as exc:
        raise _unusable("JSON output", finish_reason, max_tokens, f"not valid JSON ({exc})") from None
    problem = schema_error(schema, value)
    if problem:
        raise _unusable("JSON output", finish_reason, max_tokens, problem)
    return value


def check_tool_call(name: str, arguments: Any, tools: tuple[ToolSpec, ...]) -> dict[str, Any]:
    """Validate one call against the syscall's tools; the error names the tool and the offending field."""
    tool = next((t for t in tools if t.name == name), None)
    if tool is None:
        raise BackendError(f"the model called unknown tool {name!r}; the syscall offered: "
                           f"{', '.join(t.name for t in tools)}")
    if not isinstance(arguments, dict):
        raise BackendError(f"the model's arguments for tool {name!r} are {type(arguments).__name__}, not an object")
    problem = schema_error(tool.parameters, arguments)
    if problem:
        raise BackendError(f"the model's arguments for tool {name!r} do not match its parameters schema {problem}")
    return {"name": name, "arguments": arguments}


def parse_tool_output(text: str | None, tools: tuple[ToolSpec, ...], finish_reason: str,
                      max_tokens: int) -> list[dict[str, Any]] | str:
    """Parse the constrained-decoding form ``{"name": ..., "arguments": {...}}`` (or a list of them) into checked
    calls; ``{"answer": <text>}`` (``tool_choice='auto'``) is returned as the text."""
    try:
        value = json.loads(text or "")
    except ValueError as exc:
        raise _unusable("tool call", finish_reason, max_tokens, f"not valid JSON ({exc})") from None
    if isinstance(value, dict) and set(value) == {ANSWER} and isinstance(value[ANSWER], str):
        return str(value[ANSWER])
    calls = value if isinstance(value, list) and value else [value]
    if not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls):
        raise _unusable("tool call", finish_reason, max_tokens, 'expected {"name": <tool>, "arguments": {...}}')
    return [check_tool_call(c["name"], c.get("arguments"), tools) for c in calls]


def make_result(*, content: str | None, json_value: Any = None, tool_calls: list[dict[str, Any]] | None = None,
                finish_reason: str | None, model: str, prompt_tokens: int = 0,
                completion_tokens: int = 0) -> dict[str, Any]:
    return {"content": content, "json": json_value, "tool_calls": tool_calls or [],
            "finish_reason": finish_reason or "stop", "model": model,
            "usage": {"prompt_tokens": int(prompt_tokens or 0), "completion_tokens": int(completion_tokens or 0)}}


def prepare(syscall: LLMSyscall) -> tuple[dict[str, Any] | None, str | None]:
    """The schema to constrain decoding to and the system instruction to add, by output mode."""
    if syscall.output == "json":
        schema = syscall.json_schema or {"type": "object"}
        check_schema(schema, "json_schema")
        return schema, None
    if syscall.output == "tool_call":
        for t in syscall.tools:
            check_schema(t.parameters, f"parameters of tool {t.name!r}")
        tools, auto = offered(syscall), syscall.tool_choice == "auto"
        return (tool_call_schema(tools, parallel=syscall.parallel_tool_calls, auto=auto),
                tool_instruction(tools, auto=auto))
    return None, None


def finish(syscall: LLMSyscall, text: str | None, finish_reason: str | None, schema: dict[str, Any] | None,
           **meta: Any) -> dict[str, Any]:
    """The result dict from a reply whose text carries the output (plain, or constrained JSON)."""
    reason = finish_reason or "stop"
    if syscall.output == "json" and schema is not None:
        value = parse_json_output(text, schema, reason, syscall.max_tokens)
        return make_result(content=text, json_value=value, finish_reason=reason, **meta)
    if syscall.output == "tool_call":
        calls = parse_tool_output(text, offered(syscall), reason, syscall.max_tokens)
        if isinstance(calls, str):  # tool_choice='auto' and the model answered
            return make_result(content=calls, finish_reason=reason, **meta)
        return make_result(content=None, tool_calls=calls, finish_reason="tool_calls", **meta)
    if syscall.stop:
        text, stopped = cut_at_stop(text or "", syscall.stop)
        reason = "stop" if stopped else reason
    return make_result(content=text, finish_reason=reason, **meta)


# -- backends ----------------------------------------------------------------------------------------------
