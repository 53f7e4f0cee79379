"""Streamed LLM syscalls on the SDK's side: ``k.llm_chat(..., stream=True)`` and ``k.stream(syscall)``.

A :class:`TokenStream` (sync) or :class:`AsyncTokenStream` (asyncio) iterates over the reply's text as the
LLM worker decodes it, and ends when the reply comes (then :attr:`~_Stream.result` holds the whole result:
content, finish reason, usage). What arrives is reassembled by :class:`aios.wire.stream.Assembler`, written once;
the two classes differ only in how they wait for the next message, as the clients do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from aios.sdk.core import Pending
from aios.wire.stream import Assembler
from aios.wire.syscalls import Response

if TYPE_CHECKING:
    from aios.sdk.asyncio import AsyncKernel
    from aios.sdk.sync import Kernel


class _Stream:
    def __init__(self, pending: Pending, key: str | None) -> None:
        self.pending = pending
        self.assembler = Assembler(pending.id, key)

    @property
    def id(self) -> str:
        """The syscall id (to cancel it, or find it in the audit log)."""
        return self.pending.id

    @property
    def response(self) -> Response | None:
        """The reply, once the iteration ended."""
        return self.assembler.response

    @property
    def result(self) -> dict[str, Any]:
        """The whole result (as ``llm_chat`` without ``stream`` would see it), once the iteration ended."""
        if self.assembler.response is None:
            raise RuntimeError("the stream has not ended yet: iterate over it first")
        result: dict[str, Any] = self.assembler.response.result
        return result

    @property
    def text(self) -> str:
        """The text handed on so far."""
        return self.assembler.text


class TokenStream(_Stream):
    """The text of a streamed syscall as it is decoded (``for piece in stream``); a service error is raised
    as its typed error at the end, as :meth:`~aios.sdk.Kernel.wait` would."""

    def __init__(self, kernel: "Kernel", pending: Pending) -> None:
        super().__init__(pending, kernel._seal_key)
        self._kernel = kernel

    def __iter__(self) -> Iterator[str]:
        k = self._kernel
        while self.assembler.response is None:
            new = k._stream_step(self.pending, self.assembler, k._next_reply_or_raise(self.pending))
            if new:
                yield new
        k._unwrap(self.assembler.response)


class AsyncTokenStream(_Stream):
    """:class:`TokenStream` for asyncio: ``async for piece in stream``."""

    def __init__(self, kernel: "AsyncKernel", pending: Pending) -> None:
        super().__init__(pending, kernel._seal_key)
        self._kernel = kernel

    async def __aiter__(self) -> AsyncIterator[str]:
        k = self._kernel
        while self.assembler.response is None:
            new = k._stream_step(self.pending, self.assembler, await k._next_reply_or_raise(self.pending))
            if new:
                yield new
        k._unwrap(self.assembler.response)
