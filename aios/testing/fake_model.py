"""A FAKE LLM backend for tests: no model, no llama.cpp, instant and deterministic.

:class:`FakeModel` speaks the :class:`~aios.services.llm.service.LLMBackend` protocol and answers with the same
result dict as the real backends (``content``, ``json``, ``tool_calls``, ``finish_reason``, ``model``, ``usage``),
built by the service's own :func:`~aios.services.llm.service.finish`, so structured output is re-validated
exactly as it is for a real model. What it "generates" is a pure function of the rendered prompt:

- ``text``: ``fake:<digest>`` (12 hex digits of the prompt's SHA-256), then the last user message echoed word
  by word (with ``length``, padded with more words to exactly that many);
- ``json``: a value synthesized from ``json_schema`` (:func:`example`), as compact-ish JSON text;
- ``tool_call``: ``{"name": ..., "arguments": ...}`` for the first offered tool named in the last user message
  (else the first tool), its arguments synthesized from the tool's parameters schema.

A *token* is one word with its trailing whitespace (:func:`words`). ``max_tokens`` cuts the output (finish reason
``length``; cut JSON fails validation as a real cut-off does). ``usage`` counts prompt words and generated tokens.

Time slices: with ``quantum`` tokens, at the end of each slice that leaves tokens to generate, the model asks
whether to yield (``preempt``, else the worker's queue probe ``others_waiting``) and, if so, raises
:class:`~aios.state.context.Preempted` with a :class:`~aios.state.context.Snapshot` (``backend="fake"``, the
tokens' indices and the text so far). Given that snapshot back, it continues where it stopped, so a sliced
generation ends with exactly the text an uninterrupted one has.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aios.services.llm.output import build_messages, finish, prepare
from aios.services.llm.service import LLMService
from aios.settings import Settings
from aios.state.context import Preempted, Snapshot
from aios.wire.errors import ConfigError
from aios.wire.syscalls import LLMSyscall

FAKE_BACKEND = "fake"
FAKE_MODEL_NAME = "fake-model"
_WORD = re.compile(r"\S+\s*")


def words(text: str) -> list[str]:
    """The fake model's tokens: each word with the whitespace after it (``"".join(words(t))`` is ``t`` stripped
    of leading whitespace)."""
    return _WORD.findall(text)


def render(messages: list[dict[str, str]]) -> str:
    """The fake chat template: one ``<role>: <content>`` line per message."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def example(schema: Any, seed: str = "fake") -> Any:
    """A small value valid against common JSON schemas (``const``, ``enum``, ``anyOf``/``oneOf``/``allOf``, types,
    ``properties``/``required``, ``items``, string length and number bounds). Not a general solver: ``pattern``,
    ``format`` and the like are ignored (the output is re-validated anyway, so a miss shows as a clear error)."""
    if not isinstance(schema, dict) or not schema:
        return {"fake": seed}
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return example(schema[key][0], seed)
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            for k, v in part.items():
                merged[k] = {**merged[k], **v} if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
        return example(merged, seed)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        props: dict[str, Any] = schema.get("properties", {})
        if not props and schema.get("additionalProperties", True) is not False:
            return {"fake": seed}
        return {name: example(sub, seed) for name, sub in props.items()}
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        if "maxItems" in schema:
            count = min(count, int(schema["maxItems"]))
        return [example(schema.get("items", {"type": "string"}), seed) for _ in range(count)]
    if kind == "string":
        text = seed
        min_len, max_len = int(schema.get("minLength", 0)), schema.get("maxLength")
        while len(text) < min_len:
            text += seed
        return text[: int(max_len)] if max_len is not None else text
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        value = 1 if low is None else low + (1 if "exclusiveMinimum" in schema and "minimum" not in schema else 0)
        if high is not None and value > high:
            value = high - (1 if "exclusiveMaximum" in schema and "maximum" not in schema else 0)
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    return None


@dataclass(frozen=True)
class FakeCall:
    """One ``chat`` the fake model answered (or stopped): what a test asserts on."""

    syscall_id: str
    resumed_from: int
    """Tokens already generated in earlier slices (0: a fresh start)."""
    generated: int
    """Tokens generated in this call."""
    outcome: str
    """``stop``, ``length``, ``tool_calls``, ``preempted`` or ``error``."""


class FakeModel:
    """A FAKE LLM backend (see the module docstring). Thread-safe.

    ``script(syscall)``: the raw text the "model" emits instead of the built-in one (for output a test wants:
    malformed JSON, an unknown tool...); ``max_tokens``, slicing and validation still apply.
    ``length``: make the built-in text output exactly this many tokens (before ``max_tokens``), for long
    generations. ``quantum``: tokens per time slice (0: never preempted). ``preempt``: whether to yield at the
    end of a slice (``True``/``False``, or a callable asked each time); ``None`` asks the worker's queue probe
    (``others_waiting``), as the real backends do. ``errors``: exceptions raised, one per call, before anything
    is generated (a ``BackendError(..., transient=True)`` is a provider's 429).
    """

    name = FAKE_BACKEND
    streams = True

    def __init__(self, *, model_name: str = FAKE_MODEL_NAME, script: Callable[[LLMSyscall], str] | None = None,
                 length: int | None = None, quantum: int = 0, preempt: bool | Callable[[], bool] | None = None,
                 errors: Iterable[BaseException] = ()) -> None:
        if quantum < 0 or (length is not None and length < 1):
            raise ValueError("quantum must be >= 0 and length >= 1")
        self.model_name = model_name
        self.script = script
        self.length = length
        self.quantum = quantum
        self.preempt = preempt
        self.errors = list(errors)
        self.others_waiting: Callable[[], bool] | None = None
        """Set by the LLM service from the worker: whether syscalls wait on its queue."""
        self.calls: list[FakeCall] = []
        self._lock = threading.Lock()

    # -- what the model says ------------------------------------------------------------------------------

    def prompt(self, syscall: LLMSyscall) -> str:
        """The rendered prompt, as the real backends render it (the same system instruction for structured
        output), through the fake chat template."""
        _, instruction = prepare(syscall)
        return render(build_messages(syscall, instruction))

    def plan(self, syscall: LLMSyscall) -> list[str]:
        """Every token the model would generate for ``syscall`` with no ``max_tokens`` limit."""
        prompt = self.prompt(syscall)
        seed = digest(prompt)
        if self.script is not None:
            return words(self.script(syscall))
        if syscall.output == "json":
            return words(json.dumps(example(syscall.json_schema or {"type": "object"}, f"fake-{seed}")))
        if syscall.output == "tool_call":
            last = _last_user(syscall)
            tool = next((t for t in syscall.tools if t.name in last), syscall.tools[0])
            return words(json.dumps({"name": tool.name, "arguments": example(tool.parameters, f"fake-{seed}")}))
        base = [f"fake:{seed} ", *(f"{w.rstrip()} " for w in words(_last_user(syscall)))]
        if self.length is None:
            return base
        return [base[i] if i < len(base) else f"{seed[i % len(seed)]}{i} " for i in range(self.length)]

    # -- the LLMBackend protocol --------------------------------------------------------------------------

    def _should_yield(self) -> bool:
        if callable(self.preempt):
            return bool(self.preempt())
        if self.preempt is not None:
            return self.preempt
        return self.others_waiting is not None and self.others_waiting()

    def _record(self, call: FakeCall) -> None:
        with self._lock:
            self.calls.append(call)

    def chat(self, syscall: LLMSyscall, snapshot: Snapshot | None = None) -> dict[str, Any]:
        if syscall.model not in (None, self.model_name):
            raise ConfigError(f"this LLM worker serves {self.model_name!r}, not {syscall.model!r}: leave model unset")
        with self._lock:
            error = self.errors.pop(0) if self.errors else None
        if error is not None:
            self._record(FakeCall(syscall.id, 0, 0, "error"))
            raise error
        schema, _ = prepare(syscall)
        prompt_tokens = len(words(self.prompt(syscall)))
        plan = self.plan(syscall)[: syscall.max_tokens]
        done = 0
        # Continue only a snapshot of this very generation; anything else starts over (as llama.cpp's does).
        if (snapshot is not None and snapshot.backend == self.name and snapshot.model == self.model_name
                and len(snapshot.tokens) <= len(plan) and snapshot.text == "".join(plan[: len(snapshot.tokens)])):
            done = len(snapshot.tokens)
        start, slices = done, (snapshot.slices if snapshot is not None else 0)
        while done < len(plan):
            step = len(plan) - done if self.quantum == 0 else min(self.quantum, len(plan) - done)
            done += step
            if done < len(plan) and self.quantum and self._should_yield():
                self._record(FakeCall(syscall.id, start, done - start, "preempted"))
                raise Preempted(Snapshot(self.name, self.model_name, tokens=list(range(done)),
                                         text="".join(plan[:done]), slices=slices + 1,
                                         usage={"prompt_tokens": prompt_tokens, "completion_tokens": done}))
        full = len(self.plan(syscall))
        reason = "length" if full > len(plan) else "stop"
        text = "".join(plan)
        if syscall.output == "text" and self.script is None:
            text = text.rstrip()  # every built-in token ends in a space; the reply does not
        try:
            result = finish(syscall, text, reason, schema, model=self.model_name, prompt_tokens=prompt_tokens,
                            completion_tokens=len(plan))
        except Exception:
            self._record(FakeCall(syscall.id, start, len(plan) - start, "error"))
            raise
        self._record(FakeCall(syscall.id, start, len(plan) - start, result["finish_reason"]))
        return result


def _last_user(syscall: LLMSyscall) -> str:
    return next((m.content for m in reversed(syscall.messages) if m.role == "user"), syscall.messages[-1].content)


def fake_llm_service(settings: Settings | None = None, model: FakeModel | None = None) -> LLMService:
    """An :class:`LLMService` answering with ``model`` (a fresh :class:`FakeModel` by default): no llama.cpp."""
    return LLMService(settings or Settings(), backend=model or FakeModel())


def fake_llm_factory(model: FakeModel | None = None) -> Callable[[Settings], LLMService]:
    """A ``service_factory`` for :class:`~aios.worker.runtime.Runtime` (``Runtime(settings, "llm", factory)``)."""
    shared = model or FakeModel()
    return lambda settings: fake_llm_service(settings, shared)
