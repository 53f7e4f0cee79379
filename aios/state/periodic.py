"""A pass over the kernel's state repeated on a daemon thread: the ager, the approval expiry, the mover of
delayed syscalls. A pass that fails (Redis or the broker away for a moment) is logged and tried again next time."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("aios.worker")


class Periodic:
    """Calls ``step()`` every ``interval_s`` on a thread named ``name``, from :meth:`start` until :meth:`stop`."""

    def __init__(self, name: str, interval_s: float, step: Callable[[], Any]) -> None:
        self.name = name
        self.interval_s = interval_s
        self.step = step
        self._stop = threading.Event()

    def start(self) -> "Periodic":
        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                try:
                    self.step()
                except Exception as exc:  # the next pass retries; a worker's background thread must not die
                    log.warning("%s pass failed (retrying): %s", self.name, exc)

        self._stop.clear()
        threading.Thread(target=loop, name=self.name, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
