"""Wire format: the syscalls agents send and the responses workers send back.

Every syscall is a frozen pydantic model tagged by ``kind`` and versioned by ``v``. One ``TypeAdapter``
decodes the union, so an unknown kind or a wrong field fails in one place with a message that names it.
Only JSON crosses the broker; see :mod:`aios.worker.runtime` for what a worker does with a message that is not.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from enum import Enum
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from aios.wire.errors import InvalidSyscall, PayloadTooLarge
from aios.wire.priority import DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY

WIRE_VERSION: Final = 1
STOP_GRACE_S: Final = 1.0
"""A syscall still running this long past its deadline is stopped and answered ``deadline_exceeded``: the SDK
listens 2 s past the deadline, so the answer still reaches the caller, and one that finishes just after its
deadline is not thrown away."""
AGENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


ID_BYTES: Final = 16
_RANDOM_READ: Final = 4096
"""Bytes of the OS's randomness read at a time for syscall ids (256 ids)."""
_ids = threading.local()


def _fresh_ids() -> None:
    global _ids
    _ids = threading.local()  # a forked child must not hand out its parent's ids


os.register_at_fork(after_in_child=_fresh_ids)


def new_syscall_id() -> str:
    """128 random bits from the OS, as 32 hex digits (as unguessable as a uuid4, which has 122). Read 4 KiB at a
    time, per thread: ``os.urandom`` releases the GIL, and an asyncio loop thread that does so while other threads
    want it (the SDK's publishing threads) waits for them each time; once per 256 ids it costs little."""
    ids = _ids
    buf: bytes = getattr(ids, "buf", b"")
    at: int = getattr(ids, "at", 0)
    if at + ID_BYTES > len(buf):
        buf, at = os.urandom(_RANDOM_READ), 0
        ids.buf = buf
    ids.at = at + ID_BYTES
    return buf[at:at + ID_BYTES].hex()


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SyscallBase(_Wire):
    v: Literal[1] = WIRE_VERSION
    """Wire version; a worker refuses versions it does not know."""
    id: str = Field(default_factory=new_syscall_id, min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")
    """Syscall id, also the idempotency key: a redelivered syscall with a known id is answered, not rerun."""
    agent_id: str
    """The calling agent (letters, digits, ``_.-``; at most 64 characters)."""
    priority: int = Field(default=DEFAULT_PRIORITY, ge=MIN_PRIORITY, le=MAX_PRIORITY)
    """Kernel priority, 0 (least urgent) to 9 (most urgent); see :mod:`aios.wire.priority`."""
    timeout_s: float = Field(default=120.0, gt=0, le=86_400)
    """How long the caller waits, counted from ``created_at``; the worker skips a syscall whose deadline passed."""
    created_at: float = Field(default_factory=time.time)
    """Unix time at which the SDK made the syscall."""
    sig: str | None = Field(default=None, max_length=128)
    """HMAC-SHA256 of the other fields with the agent's credential (see :mod:`aios.policy.identity`)."""

    @field_validator("agent_id")
    @classmethod
    def _agent_id_ok(cls, value: str) -> str:
        if not AGENT_ID_RE.fullmatch(value):
            raise ValueError("agent_id must be 1-64 characters of letters, digits, '_', '.', '-', starting alphanumeric")
        return value

    @property
    def deadline(self) -> float:
        return self.created_at + self.timeout_s

    @property
    def stop_at(self) -> float:
        """When a worker stops it if it is still running: :data:`STOP_GRACE_S` past its deadline."""
        return self.deadline + STOP_GRACE_S


class ChatMessage(_Wire):
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class ToolSpec(_Wire):
    """A tool the model may call: name, description and a JSON schema for its arguments."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class LLMSyscall(SyscallBase):
    kind: Literal["llm"] = "llm"
    messages: tuple[ChatMessage, ...] = Field(min_length=1)
    output: Literal["text", "json", "tool_call"] = "text"
    """``json``: the reply is JSON valid against ``json_schema``; ``tool_call``: the reply names one of ``tools``."""
    json_schema: dict[str, Any] | None = None
    tools: tuple[ToolSpec, ...] = ()
    max_tokens: int = Field(default=256, ge=1, le=32_768)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    model: str | None = None
    """Model name; ``None`` means the worker's default model."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling (with ``temperature`` > 0): draw only from the most likely tokens of this much mass."""
    seed: int | None = Field(default=None, ge=1, le=2**31 - 1)
    """The seed of a sampled generation; ``None``: the kernel's fixed one (replies do not depend on the order)."""
    stop: tuple[str, ...] = Field(default=(), max_length=4)
    """The reply ends before the first of these strings (which is not part of it)."""
    tool_choice: str | None = None
    """``output='tool_call'``: ``None`` / ``required`` (call one of ``tools``), ``auto`` (call one, or answer
    in text: the result's ``content``), or a tool's name (call that one)."""
    parallel_tool_calls: bool = False
    """``output='tool_call'``: the model may call several tools in one reply."""
    stream: bool = False
    """Send the reply's text to the caller as it is decoded, before the reply (see :mod:`aios.wire.stream`)."""

    @field_validator("tools")
    @classmethod
    def _unique_tools(cls, tools: tuple[ToolSpec, ...]) -> tuple[ToolSpec, ...]:
        names = [t.name for t in tools]
        if len(names) != len(set(names)):
            raise ValueError("tool names must be unique")
        return tools

    @model_validator(mode="after")
    def _tools_for_tool_call(self) -> "LLMSyscall":
        if self.output == "tool_call" and not self.tools:
            raise ValueError("output='tool_call' needs at least one entry in tools")
        names = {t.name for t in self.tools}
        if self.tool_choice not in (None, "auto", "required", *names):
            raise ValueError(f"tool_choice {self.tool_choice!r} is none of 'auto', 'required' or a tool's name "
                             f"({', '.join(sorted(names)) or 'no tools given'})")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")
        return self


class ToolSyscall(SyscallBase):
    kind: Literal["tool"] = "tool"
    tool: str = Field(min_length=1, max_length=64)
    arguments: dict[str, Any] = Field(default_factory=dict)


def _check_owner(value: str | None) -> str | None:
    """``owner`` names an agent exactly as ``agent_id`` does (it selects that agent's storage folder)."""
    if value is not None and not AGENT_ID_RE.fullmatch(value):
        raise ValueError("owner must be 1-64 characters of letters, digits, '_', '.', '-', starting alphanumeric")
    return value


class MemorySyscall(SyscallBase):
    """Per-agent memory items: ``put`` (create or replace), ``create``, ``get``, ``update``, ``delete``, ``list``,
    ``search`` (by meaning, ``query`` and ``k``) and ``stats`` (fast-tier use against the budget)."""

    kind: Literal["memory"] = "memory"
    op: Literal["put", "get", "delete", "list", "create", "update", "search", "stats"]
    key: str | None = Field(default=None, min_length=1, max_length=256)
    value: Any = None
    query: str | None = Field(default=None, min_length=1, max_length=10_000)
    """``search``: the text to match by meaning."""
    k: int = Field(default=5, ge=1, le=100)
    """``search``: how many items at most."""
    owner: str | None = None
    """Whose memory: ``None`` is the calling agent's own; another agent's needs its grant (:mod:`aios.policy.access`)."""

    @field_validator("owner")
    @classmethod
    def _owner_ok(cls, value: str | None) -> str | None:
        return _check_owner(value)

    @model_validator(mode="after")
    def _key_needed(self) -> "MemorySyscall":
        if self.op in ("put", "get", "delete", "update") and self.key is None:
            raise ValueError(f"memory op {self.op!r} needs a key")
        if self.op == "search" and self.query is None:
            raise ValueError("memory op 'search' needs a query")
        return self


class StorageSyscall(SyscallBase):
    """Per-agent files; ``path`` is relative to the agent's folder.

    ``write`` (keeps a version; ``if_version`` makes it a compare-and-set), ``read`` (``with_version``),
    ``list``, ``delete``, ``create`` (a new file; fails if it exists), ``mkdir``, ``rollback`` (to ``version``
    or to the version current at time ``at``), ``versions``, ``share`` (with ``with_agent``, ``mode``),
    ``search`` (by meaning over the agent's files: ``query``, ``k``), ``mount``, ``embed`` (``texts`` through
    the kernel's embedding model: vectors, nothing stored)."""

    kind: Literal["storage"] = "storage"
    op: Literal["write", "read", "list", "delete", "create", "mkdir", "rollback", "versions", "share", "search",
                "mount", "embed"]
    path: str = Field(default="", max_length=1024)
    content: str | None = None
    if_version: int | None = Field(default=None, ge=0)
    """``write``: only if the file's current version is this one (0: only if it has none); else ``conflict``."""
    with_version: bool = False
    """``read``: also return the file's current version (for a later ``if_version`` write)."""
    version: int | None = Field(default=None, ge=1)
    at: float | None = Field(default=None, ge=0)
    """``rollback``: the version current at this Unix time."""
    with_agent: str | None = None
    """``share``: the agent the file is shared with."""
    mode: Literal["read", "write"] = "read"
    query: str | None = Field(default=None, min_length=1, max_length=10_000)
    k: int = Field(default=5, ge=1, le=100)
    texts: tuple[str, ...] = Field(default=(), max_length=256)
    """``embed``: the texts to embed with the kernel's embedding model (nothing is stored)."""
    owner: str | None = None
    """Whose files: ``None`` is the calling agent's own; another agent's needs its grant (:mod:`aios.policy.access`)."""

    @field_validator("owner", "with_agent")
    @classmethod
    def _owner_ok(cls, value: str | None) -> str | None:
        return _check_owner(value)

    @model_validator(mode="after")
    def _args_needed(self) -> "StorageSyscall":
        if self.op == "write" and self.content is None:
            raise ValueError("storage op 'write' needs content")
        if self.op in ("read", "delete", "write", "create", "mkdir", "rollback", "versions", "share") and not self.path:
            raise ValueError(f"storage op {self.op!r} needs a path")
        if self.op == "rollback" and (self.version is None) == (self.at is None):
            raise ValueError("storage op 'rollback' needs exactly one of version or at")
        if self.op == "share" and self.with_agent is None:
            raise ValueError("storage op 'share' needs with_agent")
        if self.op == "search" and self.query is None:
            raise ValueError("storage op 'search' needs a query")
        if self.op == "embed" and not self.texts:
            raise ValueError("storage op 'embed' needs texts")
        return self


class CancelSyscall(SyscallBase):
    """Cancel ``target``, one of this agent's own syscalls (a control syscall: signed like any other, so the worker
    that verifies it records the cancel under the verified agent's name, and only a syscall of that agent heeds it)."""

    kind: Literal["cancel"] = "cancel"
    target: str = Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")


Syscall = Annotated[LLMSyscall | ToolSyscall | MemorySyscall | StorageSyscall | CancelSyscall,
                    Field(discriminator="kind")]
SYSCALL_ADAPTER: TypeAdapter[Syscall] = TypeAdapter(Syscall)
KINDS = ("llm", "tool", "memory", "storage", "cancel")


# StrEnum would change str()/format() of a member ('ok', not 'Status.OK') on a public wire type.
class Status(str, Enum):  # noqa: UP042
    OK = "ok"
    ERROR = "error"


class ErrorInfo(_Wire):
    code: str
    """Machine-readable: ``invalid_syscall``, ``payload_too_large``, ``unknown_kind``, ``content_type``,
    ``malformed``, ``tool_error``, ``deadline_exceeded``, ``backend_error``, ``not_found``, ``internal``..."""
    message: str
    """What went wrong and what to do about it."""


class Timing(_Wire):
    created_at: float
    started_at: float
    finished_at: float

    @property
    def queue_wait_s(self) -> float:
        return max(0.0, self.started_at - self.created_at)

    @property
    def service_s(self) -> float:
        return max(0.0, self.finished_at - self.started_at)


class Response(_Wire):
    v: Literal[1] = WIRE_VERSION
    id: str
    status: Status
    result: Any = None
    error: ErrorInfo | None = None
    timing: Timing
    worker: str = ""


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem, naming the field: ``messages.0.role: Input should be 'system', ...``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p not in KINDS) or "(message)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def decode_syscall(data: Any, *, max_bytes: int, size: int | None = None) -> Syscall:
    """Decode a syscall from JSON text or an already-parsed object.

    Raises :class:`InvalidSyscall` (with a ``code``) or :class:`PayloadTooLarge`.
    """
    if isinstance(data, (bytes, str)):
        size = len(data)
        if size > max_bytes:
            raise PayloadTooLarge(f"syscall is {size} bytes; the limit is {max_bytes} (AIOS_MAX_PAYLOAD_BYTES)")
        try:
            data = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidSyscall(f"syscall is not valid JSON: {exc}", code="malformed") from None
    elif size is not None and size > max_bytes:
        raise PayloadTooLarge(f"syscall is {size} bytes; the limit is {max_bytes} (AIOS_MAX_PAYLOAD_BYTES)")
    if not isinstance(data, dict):
        raise InvalidSyscall(f"a syscall must be a JSON object, got {type(data).__name__}", code="invalid_syscall")
    try:
        return SYSCALL_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise _invalid(exc, data) from None


def _invalid(exc: ValidationError, data: Any) -> InvalidSyscall:
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        return InvalidSyscall(f"syscall is not valid JSON: {first['msg']}", code="malformed")
    if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
        kind = data.get("kind") if isinstance(data, dict) else None
        return InvalidSyscall(
            f"unknown syscall kind {kind!r}; known kinds: {', '.join(KINDS)}", code="unknown_kind"
        )
    return InvalidSyscall(f"syscall does not match its schema: {format_validation_error(exc)}", code="invalid_syscall")
