"""AIOS: an operating system for LLM agents on a message broker.

The SDK is :class:`Kernel` (synchronous) and :class:`AsyncKernel` (asyncio); errors derive from :class:`AIOSError`.

``import aios`` is light: the clients (and with them Celery and redis) are imported when first named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aios.settings import Settings
from aios.wire.errors import (
    AccessDenied,
    AIOSError,
    ApprovalDenied,
    AuthError,
    BackendError,
    Cancelled,
    ConfigError,
    Conflict,
    DeadlineExceeded,
    Interrupted,
    InvalidSyscall,
    InvalidToolArguments,
    KernelBusy,
    KernelUnavailable,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    SyscallTimeout,
    ToolError,
    UnknownTool,
)
from aios.wire.syscalls import ChatMessage, LLMSyscall, MemorySyscall, Response, StorageSyscall, ToolSpec, ToolSyscall

if TYPE_CHECKING:
    from aios.sdk import AsyncKernel, Kernel, Pending

__version__ = "0.1.0"
__all__ = [
    "AIOSError", "AccessDenied", "ApprovalDenied", "AsyncKernel", "AuthError", "BackendError", "Cancelled", "ChatMessage", "ConfigError", "Conflict", "DeadlineExceeded",
    "Interrupted", "InvalidSyscall", "InvalidToolArguments", "Kernel", "KernelBusy", "KernelUnavailable", "LLMSyscall", "MemorySyscall",
    "NotFound", "PayloadTooLarge", "Pending", "QuotaExceeded", "Response", "Settings", "StorageSyscall", "SyscallTimeout", "ToolError",
    "ToolSpec", "ToolSyscall", "UnknownTool",
]
_SDK = ("AsyncKernel", "Kernel", "Pending")


def __getattr__(name: str) -> Any:
    if name in _SDK:
        import aios.sdk

        value = getattr(aios.sdk, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'aios' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SDK})
