"""The SDK: how an agent (any Python process) makes syscalls, synchronously or with asyncio.

    from aios import Kernel
    with Kernel("my-agent") as k:
        k.llm_chat("What is the capital of France?")
        k.call_tool("calculator", expression="17 * 23")

The package, bottom up:

- :mod:`aios.sdk.core`: ``_Core``, what both clients share below the calls: settings and credential, the
  syscall builders (``llm_syscall``, ``tool_syscall``, ...), signing, admission control, publishing (through
  :func:`aios.broker.publish.publish_syscall`, the kernel's one publish path) and decoding the answer.
- :mod:`aios.sdk.operations`: every SDK call (``llm_chat``, ``call_tool``, ``read_file``, ``create_memory``,
  ...) written once, as a method that builds its syscall(s) and says how their results become its value.
- :mod:`aios.sdk.sync` (:class:`Kernel`) and :mod:`aios.sdk.asyncio` (:class:`AsyncKernel`): the only
  difference between the clients, how they wait: a blocking BLPOP on the reply list, or redis.asyncio's. Each
  has ``submit`` / ``wait`` / ``wait_response`` / ``call`` / ``gather`` and runs the calls with them.

How the one definition is typed for both clients is explained in :mod:`aios.sdk.operations`.
The SDK imports nothing of the worker side (``aios.worker``, ``aios.services``, ``aios.ops``).
"""

from aios.sdk.asyncio import AsyncKernel
from aios.sdk.core import Messages, Pending, resolve_settings
from aios.sdk.streaming import AsyncTokenStream, TokenStream
from aios.sdk.sync import Kernel

__all__ = ["AsyncKernel", "AsyncTokenStream", "Kernel", "Messages", "Pending", "TokenStream", "resolve_settings"]
