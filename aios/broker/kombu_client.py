"""One Redis client per kombu channel, instead of a new one per operation.

kombu's Redis transport builds a fresh ``redis.Redis`` object (its response-callback tables included) for every
synchronous operation of a channel: every publish, every acknowledgement, every unacked-index update. Profiled on
the kernel's tool worker (py-spy, no-op syscalls), building those objects was 16 % of the main thread's time, and
the main thread (kombu's event loop) is what bounds a worker's throughput. The client object is only a handle on
the channel's connection pool, safe to share between threads, so a kernel worker keeps one per channel (and a new
one when the channel's pool is replaced, after a fork or a reconnect). :func:`install` patches kombu's Redis
channel in the calling process: the kernel's worker processes call it (aios.worker.app); the SDK and the
benchmarks' raw-Celery contenders run stock kombu.
"""

from __future__ import annotations

import threading
from typing import Any

_lock = threading.Lock()
_installed = False


def install() -> None:
    global _installed
    with _lock:
        if _installed:
            return
        from kombu.transport import redis as kombu_redis

        create: Any = kombu_redis.Channel._create_client  # kombu ships no type hints

        def _create_client(self: Any, asynchronous: bool = False) -> Any:
            if asynchronous:
                return create(self, asynchronous=True)
            pool = self.pool  # a new one after a fork or a reconnect: the cached client must follow it
            cached = self.__dict__.get("_aios_sync_client")
            if cached is None or cached[0] is not pool:
                cached = self.__dict__["_aios_sync_client"] = (pool, create(self, asynchronous=False))
            return cached[1]

        kombu_redis.Channel._create_client = _create_client  # type: ignore[method-assign]  # the patch itself
        _installed = True
