"""AIOS: an operating system for LLM agents on a message broker.

The SDK is :class:`Kernel` (synchronous) and :class:`AsyncKernel` (asyncio); errors derive from :class:`AIOSError`.
"""

from aios.sdk.client import AsyncKernel, Kernel, Pending
from aios.wire.errors import (
    AccessDenied, AIOSError, ApprovalDenied, AuthError, BackendError, ConfigError, Conflict, DeadlineExceeded, InvalidSyscall, InvalidToolArguments,
    KernelBusy, KernelUnavailable, NotFound, PayloadTooLarge, QuotaExceeded, SyscallTimeout, ToolError, UnknownTool,
)
from aios.settings import Settings
from aios.wire.syscalls import ChatMessage, LLMSyscall, MemorySyscall, Response, StorageSyscall, ToolSpec, ToolSyscall

__version__ = "0.1.0"
__all__ = [
    "AIOSError", "AccessDenied", "ApprovalDenied", "AsyncKernel", "AuthError", "BackendError", "ChatMessage", "ConfigError", "Conflict", "DeadlineExceeded",
    "InvalidSyscall", "InvalidToolArguments", "Kernel", "KernelBusy", "KernelUnavailable", "LLMSyscall", "MemorySyscall",
    "NotFound", "PayloadTooLarge", "Pending", "QuotaExceeded", "Response", "Settings", "StorageSyscall", "SyscallTimeout", "ToolError",
    "ToolSpec", "ToolSyscall", "UnknownTool",
]
