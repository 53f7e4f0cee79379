"""Send streamed syscalls' chunks to their callers, off the engine's thread.

The LLM engine calls a stream's emit for each new piece of text on its own thread, which must never wait on the
network; :class:`Streams` queues the piece and one sender thread per worker process seals it with the agent's
key and pushes it on the syscall's reply channel (:meth:`aios.state.replies.Replies.push_chunk`). Before the
reply is written the run step waits (briefly) until the syscall's chunks are out, so they arrive before it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from aios.services.llm.stream import current_emit
from aios.state.replies import Replies
from aios.wire.stream import seal_chunk
from aios.wire.syscalls import Syscall

log = logging.getLogger("aios.worker")

FLUSH_WAIT_S = 2.0
"""How long a finished syscall's reply waits for its chunks to be sent (they are a courtesy: the reply has all)."""

_Item = tuple[str, str, str | None, int, str] | threading.Event


class Streams:
    def __init__(self, replies: Replies) -> None:
        self.replies = replies
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="aios-streams", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, threading.Event):
                item.set()
                continue
            agent_id, sid, key, off, text = item
            try:
                self.replies.push_chunk(agent_id, sid, seal_chunk(off, text, key, sid))
            except Exception as exc:  # noqa: BLE001 - a lost chunk costs nothing: the reply carries the text
                log.warning("a chunk of streamed syscall %s was not sent: %s", sid, exc)

    @contextmanager
    def streaming(self, syscall: Syscall, key: str | None) -> Iterator[None]:
        """Around the run of ``syscall`` (made with ``stream=True``): what the backend emits goes to its caller."""
        self._start()

        def emit(off: int, text: str) -> None:
            self._queue.put((syscall.agent_id, syscall.id, key, off, text))

        token = current_emit.set(emit)
        try:
            yield
        finally:
            current_emit.reset(token)
            flushed = threading.Event()
            self._queue.put(flushed)
            flushed.wait(FLUSH_WAIT_S)
