"""The ``/v1`` routes: OpenAI's chat completions (streamed or not), models and embeddings, as agents' syscalls.

A request is translated into one syscall of the calling agent (:class:`~aios.wire.syscalls.LLMSyscall`, or a
storage ``embed``), made through that agent's :class:`~aios.sdk.AsyncKernel`, so the kernel sees exactly what the
SDK would send: the agent's signature, priority, quotas, access rules and audit. The answer is translated back.
A field this gateway cannot honour is refused with a 400 that names it, rather than silently ignored.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aios.gateway.disconnect import EventStream
from aios.sdk import AsyncKernel
from aios.wire.errors import AIOSError
from aios.wire.priority import DEFAULT_PRIORITY
from aios.wire.syscalls import LLMSyscall

if TYPE_CHECKING:
    from aios.gateway.auth import Agent
    from aios.gateway.server import GatewayContext

PRIORITY_HEADER = "x-aios-priority"
"""A request may lower its syscall's priority (0..9) with this header, never raise it above its agent's."""

# Accepted and honoured; a field outside these (or an accepted one with a value we cannot honour) is a 400.
CHAT_FIELDS = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop",
               "response_format", "tools", "tool_choice", "parallel_tool_calls", "stream", "stream_options", "n",
               "user", "store", "metadata", "presence_penalty", "frequency_penalty", "logprobs", "service_tier"}
NEUTRAL = {"n": (1,), "store": (False,), "presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0),
           "logprobs": (False,), "service_tier": ("auto", "default")}
"""Fields accepted only with the value that changes nothing (what frameworks send by default)."""
IGNORED = {"user", "metadata"}
"""Accepted and not used: labels for the caller's own bookkeeping (the kernel's audit names the agent)."""
EMBED_FIELDS = {"model", "input", "encoding_format", "user", "dimensions"}


class ApiError(Exception):
    """An error answered in OpenAI's format."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", *, code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


# -- kernel errors -> HTTP ---------------------------------------------------------------------------------

_STATUS = {"invalid_syscall": 400, "invalid_arguments": 400, "config": 400, "malformed": 400,
           "payload_too_large": 413, "access_denied": 403, "approval_denied": 403, "not_found": 404,
           "quota_exceeded": 429, "kernel_busy": 429, "timeout": 504, "deadline_exceeded": 504,
           "backend_error": 502, "unavailable": 503, "broker_refused": 401, "unsigned": 401, "forged": 401,
           "revoked": 401, "unknown_agent": 401, "credential_expired": 401, "unauthenticated": 401,
           "forged_reply": 502, "cancelled": 409, "interrupted": 409}
_RETRY_IN = re.compile(r"retry in ([0-9.]+) s")


def from_kernel(exc: AIOSError) -> ApiError:
    status = _STATUS.get(exc.code, 500)
    type_ = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
             404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error"}.get(status, "api_error")
    headers = {}
    if status == 429:
        found = _RETRY_IN.search(exc.message)
        headers["Retry-After"] = str(max(1, round(float(found.group(1)) + 0.5))) if found else "1"
    return ApiError(status, exc.message, type_, code=exc.code, headers=headers)


# -- requests -> syscalls ------------------------------------------------------------------------------------

def _check_fields(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(k for k, v in body.items() if k not in allowed and v is not None)
    if unknown:
        raise ApiError(400, f"unsupported field(s): {', '.join(unknown)}; this gateway (AIOS) supports "
                            f"{', '.join(sorted(allowed))}", param=unknown[0], code="unsupported_field")
    for name, values in NEUTRAL.items():
        if body.get(name) is not None and body[name] not in values:
            raise ApiError(400, f"unsupported value of {name}: {body[name]!r}; only {values[0]!r} is supported",
                           param=name, code="unsupported_value")


def _text(content: Any, where: str) -> str:
    """A message's content: a string, or a list of text parts (other parts, like images, are refused)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in ("text", "input_text", "output_text"):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ApiError(400, f"{where}: content parts of type {kind!r} are not supported (text only)",
                               param=where, code="unsupported_content")
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise ApiError(400, f"{where}: content must be a string or a list of text parts", param=where)


def _messages(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"{where} must be an object", param=where)
        role = m.get("role")
        text = _text(m.get("content"), f"{where}.content")
        if role in ("system", "developer"):
            out.append({"role": "system", "content": text})
        elif role == "user":
            out.append({"role": "user", "content": text})
        elif role == "assistant":
            calls = m.get("tool_calls") or []
            # The model sees its earlier calls in the form it makes them (aios.services.llm.output).
            shown = [{"name": c["function"]["name"], "arguments": _arguments(c["function"].get("arguments"))}
                     for c in calls if isinstance(c, dict) and isinstance(c.get("function"), dict)]
            if shown:
                text = (text + "\n" if text else "") + json.dumps(shown[0] if len(shown) == 1 else shown)
            out.append({"role": "assistant", "content": text})
        elif role == "tool":
            out.append({"role": "tool", "content": text})
        else:
            raise ApiError(400, f"{where}.role {role!r} is not supported (system, developer, user, assistant, "
                                "tool)", param=f"{where}.role")
    return out


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw or "{}")
        except ValueError:
            return raw
    return raw or {}


def _tools(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise ApiError(400, "tools must be a list", param="tools")
    out = []
    for i, t in enumerate(raw):
        fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ApiError(400, f"tools[{i}] must be {{'type': 'function', 'function': {{'name', ...}}}}",
                           param=f"tools[{i}]")
        out.append({"name": fn["name"], "description": fn.get("description") or "",
                    "parameters": fn.get("parameters") or {"type": "object", "properties": {}}})
    return out


def _tool_choice(raw: Any) -> str | None:
    if raw is None or raw in ("auto", "required", "none"):
        return raw  # type: ignore[no-any-return]
    if isinstance(raw, dict) and isinstance(raw.get("function"), dict) and isinstance(raw["function"].get("name"),
                                                                                      str):
        return str(raw["function"]["name"])
    raise ApiError(400, "tool_choice must be 'auto', 'required', 'none' or {'type': 'function', 'function': "
                        "{'name': ...}}", param="tool_choice")


def chat_syscall(kernel: AsyncKernel, body: dict[str, Any], *, model: str | None, priority: int) -> LLMSyscall:
    """The LLM syscall a chat completion request stands for."""
    _check_fields(body, CHAT_FIELDS)
    messages = _messages(body.get("messages"))
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 256
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    tools = _tools(body["tools"]) if body.get("tools") else []
    choice = _tool_choice(body.get("tool_choice"))
    fmt = body.get("response_format") or {"type": "text"}
    output, schema = "text", None
    if tools and choice != "none":
        if fmt.get("type") != "text":
            raise ApiError(400, "response_format cannot be combined with tools", param="response_format")
        output = "tool_call"
    elif fmt.get("type") == "json_object":
        output = "json"
    elif fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise ApiError(400, "response_format json_schema needs {'json_schema': {'name', 'schema': {...}}}",
                           param="response_format")
        output, schema = "json", spec["schema"]
    elif fmt.get("type") != "text":
        raise ApiError(400, f"response_format type {fmt.get('type')!r} is not supported (text, json_object, "
                            "json_schema)", param="response_format")
    options: dict[str, Any] = {"stop": stops, "stream": bool(body.get("stream")) and output != "tool_call"}
    for name in ("top_p", "seed"):
        if body.get(name) is not None:
            options[name] = body[name]
    if output == "tool_call":
        options["tool_choice"] = choice or "auto"
        options["parallel_tool_calls"] = body.get("parallel_tool_calls") is not False
    try:
        return kernel.llm_syscall(messages, output, json_schema=schema, tools=tools if output == "tool_call" else (),
                                  max_tokens=int(max_tokens), temperature=float(body.get("temperature") or 0.0),
                                  model=model, priority=priority, **options)
    except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError: it names the field
        raise ApiError(400, f"invalid request: {exc}", code="invalid_value") from None


# -- syscall results -> OpenAI ---------------------------------------------------------------------------------

def _usage(result: dict[str, Any]) -> dict[str, int]:
    u = result.get("usage") or {}
    prompt, completion = int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _tool_calls(sid: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"id": f"call_{sid[:20]}_{i}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
            for i, c in enumerate(result.get("tool_calls") or [])]


def _finish(result: dict[str, Any]) -> str:
    reason = str(result.get("finish_reason") or "stop")
    return reason if reason in ("stop", "length", "tool_calls", "content_filter") else "stop"


def completion(sid: str, model: str, result: dict[str, Any]) -> dict[str, Any]:
    calls = _tool_calls(sid, result)
    message: dict[str, Any] = {"role": "assistant", "content": None if calls else (result.get("content") or ""),
                               "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return {"id": f"chatcmpl-{sid}", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": _finish(result), "logprobs": None}],
            "usage": _usage(result), "system_fingerprint": None}


def _chunk(sid: str, model: str, delta: dict[str, Any] | None, finish: str | None = None,
           usage: dict[str, int] | None = None) -> str:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    data: dict[str, Any] = {"id": f"chatcmpl-{sid}", "object": "chat.completion.chunk", "created": int(time.time()),
                            "model": model, "choices": choices, "system_fingerprint": None}
    if usage is not None or delta is None:
        data["usage"] = usage
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


# -- the routes ------------------------------------------------------------------------------------------------

class OpenAIRoutes:
    def __init__(self, ctx: "GatewayContext") -> None:
        self.ctx = ctx

    def routes(self) -> list[Route]:
        return [Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/models/{model:path}", self.model, methods=["GET"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"])]

    async def _caller(self, request: Request) -> tuple["Agent", AsyncKernel, int]:
        agent = await self.ctx.authenticate(request)
        priority = min(DEFAULT_PRIORITY, agent.credential.max_priority)
        header = request.headers.get(PRIORITY_HEADER)
        if header is not None:
            try:
                asked = int(header)
            except ValueError:
                raise ApiError(400, f"{PRIORITY_HEADER} must be an integer 0..9", param=PRIORITY_HEADER) from None
            if not 0 <= asked <= 9:
                raise ApiError(400, f"{PRIORITY_HEADER} must be in 0..9", param=PRIORITY_HEADER)
            priority = min(asked, agent.credential.max_priority)  # never above the agent's own
        return agent, await self.ctx.kernel(agent), priority

    async def _body(self, request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return body

    async def models(self, request: Request) -> Response:
        await self.ctx.authenticate(request)
        return JSONResponse({"object": "list", "data": [_model(m) for m in self.ctx.models()]})

    async def model(self, request: Request) -> Response:
        await self.ctx.authenticate(request)
        name = request.path_params["model"]
        if name not in self.ctx.models():
            raise ApiError(404, f"the model {name!r} does not exist; GET /v1/models lists them",
                           "not_found_error", code="model_not_found", param="model")
        return JSONResponse(_model(name))

    def _core(self, name: Any) -> str | None:
        """The syscall's ``model`` for a request's: ``None`` for the default core."""
        models = self.ctx.models()
        if name is None or name == "":
            return None
        if name not in models:
            raise ApiError(404, f"the model {name!r} does not exist; this kernel serves: {', '.join(models)}",
                           "not_found_error", code="model_not_found", param="model")
        return models[name]

    async def chat(self, request: Request) -> Response:
        body = await self._body(request)
        agent, kernel, priority = await self._caller(request)
        name = body.get("model") or next(iter(self.ctx.models()))
        syscall = chat_syscall(kernel, body, model=self._core(name), priority=priority)
        if body.get("stream"):
            opts = body.get("stream_options") or {}
            return EventStream(self._stream(kernel, syscall, str(name), bool(opts.get("include_usage"))),
                               headers={"Cache-Control": "no-cache"})
        result = await self.ctx.until_disconnect(request, kernel, syscall, kernel.call(syscall))
        return JSONResponse(completion(syscall.id, str(name), result))

    async def _stream(self, kernel: AsyncKernel, syscall: LLMSyscall, model: str,
                      include_usage: bool) -> AsyncIterator[str]:
        sid = syscall.id
        # The client may go away while we wait for the next piece: EventStream then cancels this generator where
        # it waits (and closes it in any case), and the syscall is cancelled below.
        answered = False
        try:
            yield _chunk(sid, model, {"role": "assistant", "content": ""})
            try:
                if syscall.stream:
                    stream = await kernel.stream(syscall)
                    async for piece in stream:
                        yield _chunk(sid, model, {"content": piece})
                    result = stream.result
                else:  # tool calls are sent whole, once the model made them
                    result = await kernel.call(syscall)
                    calls = _tool_calls(sid, result)
                    if calls:
                        yield _chunk(sid, model, {"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]})
                    elif result.get("content"):
                        yield _chunk(sid, model, {"content": result["content"]})
                answered = True
                yield _chunk(sid, model, {}, _finish(result))
                if include_usage:
                    yield _chunk(sid, model, None, usage=_usage(result))
            except AIOSError as exc:
                answered = True
                yield f"data: {json.dumps(from_kernel(exc).body())}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            if not answered:  # closed or cancelled before the answer: the client went away
                self.ctx.cancel(kernel, sid)

    async def embeddings(self, request: Request) -> Response:
        body = await self._body(request)
        agent, kernel, priority = await self._caller(request)
        _check_fields(body, EMBED_FIELDS)
        raw = body.get("input")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ApiError(400, "input must be a string or a non-empty list of strings (token arrays are not "
                                "supported)", param="input")
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise ApiError(400, "encoding_format must be 'float' or 'base64'", param="encoding_format")
        try:
            syscall = kernel.storage_syscall("embed", texts=texts, priority=priority)
        except ValueError as exc:
            raise ApiError(400, f"invalid request: {exc}", param="input") from None
        result = await self.ctx.until_disconnect(request, kernel, syscall, kernel.call(syscall))
        if body.get("dimensions") is not None and body["dimensions"] != result["dim"]:
            raise ApiError(400, f"dimensions: the kernel's embedding model {result['model']!r} makes vectors of "
                                f"{result['dim']}, not {body['dimensions']}", param="dimensions")
        data = [{"object": "embedding", "index": i,
                 "embedding": v if fmt == "float" else base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()}
                for i, v in enumerate(result["vectors"])]
        tokens = int(result.get("tokens") or 0)
        return JSONResponse({"object": "list", "data": data, "model": body.get("model") or result["model"],
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "aios"}


def routes(ctx: "GatewayContext") -> list[Route]:
    return OpenAIRoutes(ctx).routes()


__all__ = ["ApiError", "chat_syscall", "completion", "from_kernel", "routes"]
