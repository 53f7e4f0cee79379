"""The asyncio client: each call is a coroutine that awaits its reply list (redis.asyncio BLPOP)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, ParamSpec, Self, TypeVar

import redis.asyncio as aredis

from aios.broker.publish import label
from aios.broker.reply_queues import ReplyInbox
from aios.sdk.core import Pending
from aios.sdk.operations import Call, Operation, Operations
from aios.sdk.streaming import AsyncTokenStream
from aios.state.connections import async_publish_client, async_state_client
from aios.wire.errors import KernelUnavailable
from aios.wire.syscalls import LLMSyscall, Response, Syscall

P = ParamSpec("P")
Stream = AsyncTokenStream
"""This client's token stream (both clients name it so: their signatures read the same)."""
T = TypeVar("T")


class AsyncKernel(Operations):
    """The SDK for one agent, asyncio: every call is a coroutine; ``asyncio.gather`` keeps many in flight.
    The same calls, arguments and values as :class:`~aios.sdk.Kernel`. An async context manager (:meth:`aclose`).
    """

    _redis: aredis.Redis | None = None
    _inbox: ReplyInbox | None = None
    _abroker: aredis.Redis | None = None
    _no_abroker = False

    def _open_replies(self) -> None:
        if self._amqp_replies:
            self._inbox = ReplyInbox(self.settings.require_broker(), self.agent_id)
        else:
            self._redis = async_state_client(self.settings)

    async def _next_reply(self, pending: Pending) -> bytes | str | None:
        if self._inbox is not None:
            return await self._inbox.aget(pending.id, self._wait_s(pending))
        assert self._redis is not None
        got = await self._redis.blpop([self._reply_key(pending)], timeout=self._wait_s(pending))
        return None if got is None else got[1]

    async def _next_reply_or_raise(self, pending: Pending) -> bytes | str | None:
        try:
            return await self._next_reply(pending)
        except aredis.ConnectionError as exc:
            raise KernelUnavailable(f"cannot reach the kernel's Redis: {exc}; check AIOS_REDIS_URL") from None

    async def stream(self, syscall: LLMSyscall) -> Stream:
        """Publish ``syscall`` (made with ``stream=True``); ``async for`` over its text as it is decoded."""
        if not syscall.stream:
            syscall = syscall.model_copy(update={"stream": True})
        return AsyncTokenStream(self, await self.submit(syscall))

    async def submit(self, syscall: Syscall) -> Pending:
        """Publish ``syscall`` and return at once; :meth:`wait` for its answer."""
        client = self._async_publisher()
        if client is not None:
            # A Redis broker, no admission control: the message Celery would send, pushed from the event loop
            # (no thread hop). If the broker fails it, the thread path below publishes it as ever (retries included).
            payload = self._payload(syscall)
            route = self._placement.route(syscall)
            direct = self._direct_publisher()
            assert direct is not None
            lane, message = direct.message(self._app, payload, syscall.id, route, label(payload))
            try:
                await client.lpush(lane, message)
                return Pending(syscall)
            except (aredis.RedisError, ConnectionError):
                pass  # away, failing or refusing: the thread path retries as it always does, and says what went wrong
        # Publishing is a blocking kombu call; keep it off the event loop.
        return await asyncio.to_thread(self._publish, syscall)

    def _async_publisher(self) -> aredis.Redis | None:
        """The broker's Redis for :meth:`submit` on the event loop, where it may be used: a Redis broker, a message
        Celery's machinery need not send (:class:`~aios.broker.publish.DirectRedis`), no admission control (its
        waits block)."""
        if self._abroker is None and not self._no_abroker:
            if self.settings.scheduling.max_queue_depth is None and self._direct_publisher() is not None:
                self._abroker = async_publish_client(self.settings)
            else:
                self._no_abroker = True
        return self._abroker

    async def wait_response(self, pending: Pending) -> Response:
        """The whole ``Response``, error or not. Raises only ``SyscallTimeout``, ``KernelUnavailable`` and
        ``AuthError`` (only forged replies came); an irreversible syscall nobody approved in time is answered
        ``ApprovalDenied`` by the kernel."""
        while True:
            if (response := self._accept(pending, await self._next_reply_or_raise(pending))) is not None:
                return response

    async def wait(self, pending: Pending) -> Any:
        """The raw result dict; a service error is raised as its typed error."""
        return self._unwrap(await self.wait_response(pending))

    async def call(self, syscall: Syscall) -> Any:
        """``await wait(await submit(syscall))``."""
        return await self.wait(await self.submit(syscall))

    async def gather(self, syscalls: Iterable[Syscall], *, return_exceptions: bool = False) -> list[Any]:
        """``asyncio.gather`` over :meth:`call`: the raw results, in order."""
        return await asyncio.gather(*(self.call(s) for s in syscalls), return_exceptions=return_exceptions)

    async def _run(self, call: Call[T]) -> T:
        if call.stream:
            return await self.stream(call.syscalls[0])  # type: ignore[arg-type, return-value]  # see llm_chat
        return call.post(await self.gather(call.syscalls, return_exceptions=call.each_may_fail))

    def _bind(self, op: Operation[P, T]) -> Callable[P, Coroutine[Any, Any, T]]:
        async def bound(*args: P.args, **kwargs: P.kwargs) -> T:
            return await self._run(op.plan(self, *args, **kwargs))
        return op.dress(self, bound)

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
        if self._abroker is not None:
            await self._abroker.aclose()
        if self._inbox is not None:
            self._inbox.close()
        self._close_shared()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
