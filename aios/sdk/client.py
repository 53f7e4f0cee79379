"""The SDK's former single module, kept so that ``from aios.sdk.client import Kernel`` still works: the SDK is
the package :mod:`aios.sdk` now."""

from aios.sdk.asyncio import AsyncKernel
from aios.sdk.core import Messages, Pending, resolve_settings
from aios.sdk.sync import Kernel

__all__ = ["AsyncKernel", "Kernel", "Messages", "Pending", "resolve_settings"]
