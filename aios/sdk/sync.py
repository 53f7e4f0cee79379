"""The synchronous client: each call blocks (BLPOP on its reply list) until its syscall is answered."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, Self, TypeVar

import redis

from aios.broker.reply_queues import ReplyInbox
from aios.sdk.core import Pending
from aios.sdk.operations import Call, Operation, Operations
from aios.sdk.streaming import TokenStream
from aios.state.connections import state_client
from aios.wire.errors import KernelUnavailable
from aios.wire.syscalls import LLMSyscall, Response, Syscall

P = ParamSpec("P")
Stream = TokenStream
"""This client's token stream (both clients name it so: their signatures read the same)."""
T = TypeVar("T")


class Kernel(Operations):
    """The SDK for one agent, synchronous: every call returns its value. Thread-safe: share one per process or
    make one per thread. A context manager (:meth:`close`).

    ``Kernel(agent_id, *, settings=None, priority=5, timeout_s=None, credential=None)``: ``settings`` default to
    the ``AIOS_*`` environment, else a running ``aios up`` on this machine; ``priority`` (0..9, 9 most urgent)
    and ``timeout_s`` are this client's defaults per syscall; ``credential`` is the agent's secret (default:
    ``AIOS_AGENT_SECRET``, else the file ``aios agent create <agent_id>`` wrote).
    """

    _redis: redis.Redis | None = None
    _inbox: ReplyInbox | None = None

    def _open_replies(self) -> None:
        if self._amqp_replies:
            self._inbox = ReplyInbox(self.settings.require_broker(), self.agent_id)
        else:
            # No socket timeout: BLPOP waits as long as the syscall may take (redis-py's default would cut it at 5 s).
            self._redis = state_client(self.settings, socket_timeout_s=None)

    def _next_reply(self, pending: Pending) -> bytes | str | None:
        if self._inbox is not None:
            return self._inbox.get(pending.id, self._wait_s(pending))
        assert self._redis is not None
        got = self._redis.blpop([self._reply_key(pending)], timeout=self._wait_s(pending))
        return None if got is None else got[1]

    def _next_reply_or_raise(self, pending: Pending) -> bytes | str | None:
        try:
            return self._next_reply(pending)
        except redis.ConnectionError as exc:
            raise KernelUnavailable(f"cannot reach the kernel's Redis: {exc}; check AIOS_REDIS_URL") from None

    def stream(self, syscall: LLMSyscall) -> Stream:
        """Publish ``syscall`` (made with ``stream=True``) and iterate over its text as it is decoded."""
        if not syscall.stream:
            syscall = syscall.model_copy(update={"stream": True})
        return TokenStream(self, self.submit(syscall))

    def submit(self, syscall: Syscall) -> Pending:
        """Publish ``syscall`` and return at once; :meth:`wait` for its answer."""
        return self._publish(syscall)

    def wait_response(self, pending: Pending) -> Response:
        """The whole ``Response``, error or not. Raises only ``SyscallTimeout``, ``KernelUnavailable`` and
        ``AuthError`` (only forged replies came); an irreversible syscall nobody approved in time is answered
        ``ApprovalDenied`` by the kernel."""
        while True:
            if (response := self._accept(pending, self._next_reply_or_raise(pending))) is not None:
                return response

    def wait(self, pending: Pending) -> Any:
        """The raw result dict; a service error is raised as its typed error."""
        return self._unwrap(self.wait_response(pending))

    def call(self, syscall: Syscall) -> Any:
        """``wait(submit(syscall))``."""
        return self.wait(self.submit(syscall))

    def gather(self, syscalls: Iterable[Syscall], *, return_exceptions: bool = False) -> list[Any]:
        """Submit all, then collect the raw results in order: they run concurrently on the workers."""
        pendings = [self.submit(s) for s in syscalls]
        out: list[Any] = []
        for p in pendings:
            try:
                out.append(self.wait(p))
            except Exception as exc:
                if not return_exceptions:
                    raise
                out.append(exc)
        return out

    def _run(self, call: Call[T]) -> T:
        if call.stream:
            return self.stream(call.syscalls[0])  # type: ignore[arg-type, return-value]  # see llm_chat
        return call.post(self.gather(call.syscalls, return_exceptions=call.each_may_fail))

    def _bind(self, op: Operation[P, T]) -> Callable[P, T]:
        def bound(*args: P.args, **kwargs: P.kwargs) -> T:
            return self._run(op.plan(self, *args, **kwargs))
        return op.dress(self, bound)

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
        if self._inbox is not None:
            self._inbox.close()
        self._close_shared()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
