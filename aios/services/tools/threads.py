"""Daemon threads for tool calls, reused between calls.

A tool runs on a thread of its own so that the caller can stop waiting at the tool's time limit; a Python
thread cannot be killed, so a tool past its limit is abandoned and keeps its thread until it returns. Starting a
thread per call cost more than a no-op tool itself (about 0.3 ms here), so finished threads wait for the next
call instead (up to ``max_idle`` of them); a call that finds none idle starts a new one. Unlike
``ThreadPoolExecutor``, the threads are daemons and never joined at exit, so a stuck tool cannot hold a worker's
shutdown, and a stuck tool never makes another call queue behind it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable


class _Worker:
    __slots__ = ("job", "ready")

    def __init__(self) -> None:
        self.job: Callable[[], None] | None = None
        self.ready = threading.Event()


class ToolThreads:
    def __init__(self, max_idle: int = 32) -> None:
        self.max_idle = max_idle
        self._idle: deque[_Worker] = deque()
        self._lock = threading.Lock()
        self.started = 0
        """Threads started so far (a measure of reuse)."""

    def run(self, job: Callable[[], None]) -> None:
        """Run ``job`` on an idle thread, or on a new one when none is idle. ``job`` must not raise."""
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            worker = _Worker()
            worker.job = job
            self.started += 1
            threading.Thread(target=self._loop, args=(worker,), name="aios-tool", daemon=True).start()
            return
        worker.job = job
        worker.ready.set()

    def _loop(self, worker: _Worker) -> None:
        while True:
            job, worker.job = worker.job, None
            if job is not None:
                job()
            worker.ready.clear()
            with self._lock:
                if len(self._idle) >= self.max_idle:
                    return
                self._idle.append(worker)
            worker.ready.wait()
