"""Noticing an HTTP client that went away while its request waits for the kernel, and the response that streams
server-sent events.

:class:`DisconnectWatch` cancels the task that opened it when the client disconnects, with one watcher task per
request: the request's own task does the work (no task for the work itself, no ``asyncio.wait``), so a request
that runs to its end costs one task more, not three. :class:`EventStream` streams an async iterator of
``data: ...`` events in the request's own task under such a watch; Starlette's ``StreamingResponse`` would, on
an ASGI server that reports spec 2.3 (uvicorn), run an anyio task group of two tasks per stream, and its own
listener for the disconnect besides the route's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class ClientGone(Exception):
    """The HTTP client disconnected before its answer was ready (its syscall was cancelled)."""


async def disconnected(receive: Receive) -> None:
    """Returns once the client has disconnected (or the response is complete: the ASGI server says so alike)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class DisconnectWatch:
    """``with DisconnectWatch(receive): ...``: while the block runs, the client's disconnect cancels the task that
    runs it; the block then raises :class:`ClientGone` instead of ``CancelledError`` (a cancellation that came from
    anywhere else stays one). Open it in the task that does the work."""

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None, "DisconnectWatch needs a running task"
        self._task = task
        self._open = True
        self._watch = asyncio.ensure_future(disconnected(receive))
        self._watch.add_done_callback(self._fire)

    def _fire(self, watch: asyncio.Future[None]) -> None:
        if watch.cancelled() or watch.exception() is not None:
            return  # closed, or the server's receive failed: no disconnect seen
        if self._open:
            self._task.cancel()

    @property
    def gone(self) -> bool:
        """Whether the client disconnected while the watch was open."""
        return self._watch.done() and not self._watch.cancelled() and self._watch.exception() is None

    def close(self) -> None:
        self._open = False
        if not self._watch.done():
            self._watch.cancel()

    def __enter__(self) -> DisconnectWatch:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        was_open = self._open
        self.close()
        if exc_type is asyncio.CancelledError and was_open and self.gone:
            self._task.uncancel()
            raise ClientGone() from None


class EventStream(Response):
    """``text/event-stream`` from an async iterator of ``str`` events, sent by the request's own task. When the
    client disconnects the iterator is cancelled where it waits and closed either way (its ``finally`` cleans up:
    the chat route cancels the syscall it was streaming)."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[str], headers: Mapping[str, str] | None = None) -> None:
        self.body_iterator = content
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with DisconnectWatch(receive):
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                async for event in self.body_iterator:
                    await send({"type": "http.response.body", "body": event.encode(), "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (ClientGone, OSError):
            pass  # nobody to answer (an ASGI 2.4 server raises OSError on a send to a client that went away)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
