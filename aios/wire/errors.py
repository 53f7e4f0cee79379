"""One root error for the kernel, and the tree under it.

Every error that reaches an agent says what went wrong and what to do. Errors that come back from a worker
carry a ``code`` (see :class:`aios.wire.syscalls.ErrorInfo`) and are rebuilt on the SDK side by :func:`from_code`.
"""

from __future__ import annotations


class AIOSError(Exception):
    """Root of every error the kernel raises."""

    code = "internal"
    transient = False
    """A failure worth retrying later (a backend's 429, 5xx, time-out): the worker requeues the syscall."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(AIOSError):
    """A setting is missing or wrong; the message names the environment variable."""

    code = "config"


class InvalidSyscall(AIOSError):
    """The syscall was refused before it ran: malformed, wrong schema, unknown kind, wrong content type."""

    code = "invalid_syscall"


class PayloadTooLarge(InvalidSyscall):
    code = "payload_too_large"


class SyscallTimeout(AIOSError, TimeoutError):
    """No answer before the syscall's deadline."""

    code = "timeout"


class DeadlineExceeded(SyscallTimeout):
    """The worker found the syscall's deadline already passed when it reached it."""

    code = "deadline_exceeded"


class ToolError(AIOSError):
    """A tool refused its arguments or failed while running."""

    code = "tool_error"


class UnknownTool(ToolError):
    code = "unknown_tool"


class InvalidToolArguments(ToolError):
    code = "invalid_arguments"


class AuthError(AIOSError):
    """The syscall's identity could not be verified: unsigned, forged, replayed, revoked or unknown agent."""

    code = "unauthenticated"


class ApprovalDenied(AIOSError):
    """An irreversible operation was denied by an operator, or not approved before its deadline; it did not run."""

    code = "approval_denied"


class NotFound(AIOSError):
    code = "not_found"


class AccessDenied(AIOSError):
    code = "access_denied"


class Conflict(AIOSError):
    """A compare-and-set lost: the item changed since it was read (read it again and retry), or already exists."""

    code = "conflict"


class BackendError(AIOSError):
    """The LLM backend failed (unreachable, refused, or answered something unusable)."""

    code = "backend_error"

    def __init__(self, message: str, *, code: str | None = None, transient: bool = False) -> None:
        super().__init__(message, code=code)
        self.transient = transient
        """A failure worth retrying later (429, 5xx, time-out, dropped connection): the worker requeues the
        syscall with back-off (``AIOS_RETRY_MAX``, ``AIOS_RETRY_BACKOFF_S``) before it answers with it."""


class KernelUnavailable(AIOSError):
    """The broker or the kernel's Redis cannot be reached."""

    code = "unavailable"


class QuotaExceeded(AIOSError):
    """A rate limit, concurrency limit or token budget stopped the syscall (``AIOS_QUOTA_MODE=fail``, a budget
    that is spent, or a limit still reached at the syscall's deadline), or a storage write would pass the agent's
    ``AIOS_STORAGE_QUOTA_BYTES`` (nothing was written); the message names the limit and what is used."""

    code = "quota_exceeded"


class KernelBusy(AIOSError):
    """Admission control: the queue holds more than ``AIOS_MAX_QUEUE_DEPTH`` syscalls (``AIOS_ADMISSION=fail``,
    or no room came free within the syscall's timeout). Nothing was sent; retry later."""

    code = "kernel_busy"


class Interrupted(AIOSError):
    """A syscall of an at-most-once tool (``Tool.at_most_once``) was delivered again after a copy had started it
    (its worker died, or lost its lease): it is not run a second time. Its effect may or may not have happened;
    check before asking again."""

    code = "interrupted"


class Cancelled(AIOSError):
    """The syscall was cancelled (``Kernel.cancel`` by its own agent, ``aios cancel`` or Celery's ``revoke`` by an
    operator) before it was answered: a queued one never ran, a running generation was stopped."""

    code = "cancelled"


_BY_CODE: dict[str, type[AIOSError]] = {}
for _cls in (
    AIOSError, ConfigError, InvalidSyscall, PayloadTooLarge, SyscallTimeout, DeadlineExceeded, ToolError,
    UnknownTool, InvalidToolArguments, AuthError, ApprovalDenied, NotFound, AccessDenied, Conflict, BackendError,
    KernelUnavailable, QuotaExceeded, KernelBusy, Cancelled, Interrupted,
):
    _BY_CODE[_cls.code] = _cls
for _code in ("malformed", "unknown_kind", "content_type", "unknown_task", "wrong_queue", "broker_feature"):
    _BY_CODE[_code] = InvalidSyscall
for _code in ("unsigned", "forged", "replayed", "revoked", "unknown_agent", "credential_expired"):
    _BY_CODE[_code] = AuthError


def from_code(code: str, message: str) -> AIOSError:
    """Rebuild the typed error a worker reported."""
    return _BY_CODE.get(code, AIOSError)(message, code=code)
