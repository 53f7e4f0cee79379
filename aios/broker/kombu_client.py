"""One Redis client per kombu channel, instead of a new one per operation.

kombu's Redis transport builds a fresh ``redis.Redis`` object (its response-callback tables included) for every
synchronous operation of a channel: every publish, every acknowledgement, every unacked-index update. Profiled on
the kernel's tool worker (py-spy, no-op syscalls), building those objects was 16 % of the main thread's time, and
the main thread (kombu's event loop) is what bounds a worker's throughput. The client object is only a handle on
the channel's connection pool, safe to share between threads, so a kernel worker keeps one per channel (and a new
one when the channel's pool is replaced, after a fork or a reconnect). :func:`install` patches kombu's Redis
channel in the calling process: the kernel's worker processes call it (aios.worker.app); the SDK and the
benchmarks' raw-Celery contenders run stock kombu.

It also records the Redis list each message was popped from (``delivery_info["aios_lane"]``): on Redis the list
*is* the priority a message was served at, whatever priority its publisher wrote into it, and the worker checks
that lane against what the syscall's signed fields and its agent's grant entitle it to
(:mod:`aios.worker.steps.placement`).
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
            if getattr(getattr(self, "connection", None), "client", None) is None:
                # The channel outlived its connection (a Redis restart: kombu's close restores unacked messages
                # through a new client). kombu would fail with an AttributeError, which Celery takes as
                # unrecoverable and the worker exits; a connection error it reconnects from.
                import redis

                raise redis.ConnectionError("the kombu channel's connection is closed")
            if asynchronous:
                return create(self, asynchronous=True)
            pool = self.pool  # a new one after a fork or a reconnect: the cached client must follow it
            cached = self.__dict__.get("_aios_sync_client")
            if cached is None or cached[0] is not pool:
                cached = self.__dict__["_aios_sync_client"] = (pool, create(self, asynchronous=False))
            return cached[1]

        kombu_redis.Channel._create_client = _create_client  # type: ignore[method-assign]  # the patch itself
        kombu_redis.Channel._brpop_read = _brpop_read  # type: ignore[method-assign]
        _installed = True


GIVE_BACK_S = 30.0
"""How long a worker keeps trying to put back a message it took while Redis went away."""


def _give_back(channel: Any, lane: str, item: bytes) -> None:
    import time

    import redis

    # The channel's own pool (its URL, socket, credentials); it opens fresh connections once Redis is back.
    client = redis.Redis(connection_pool=channel.pool)
    deadline = time.monotonic() + GIVE_BACK_S
    pause = 0.1
    while True:
        try:
            client.rpush(lane, item)  # kombu pops from the right: the head of the list
            return
        except (redis.ConnectionError, redis.TimeoutError):
            if time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(1.0, pause * 2)


LANE = "aios_lane"
"""The key of ``delivery_info`` that names the Redis list a message was popped from."""
SIZE = "aios_size"
"""The key of ``delivery_info`` that holds the size of the whole message as it was stored in that list (its body
base64-encoded, with its headers and properties): the gate bounds it without serializing the headers again."""


def _brpop_read(self: Any, **options: Any) -> bool:
    """kombu's ``Channel._brpop_read`` (5.x), plus the list's name in the message's ``delivery_info``."""
    from kombu.transport.virtual import Empty
    from kombu.utils import encoding, json

    bytes_to_str: Any = encoding.bytes_to_str  # kombu ships no type hints
    loads: Any = json.loads

    try:
        try:
            dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
        except self.connection_errors:
            self.client.connection.disconnect()
            raise
        if not dest__item:
            raise Empty()
        dest, item = dest__item
        lane = bytes_to_str(dest)
        queue = lane.rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(queue)
        message = loads(bytes_to_str(item))
        if isinstance(message, dict) and isinstance(message.get("properties"), dict):
            info = message["properties"].setdefault("delivery_info", {})
            if isinstance(info, dict):
                info[LANE] = lane
                info[SIZE] = len(item)
        try:
            self.connection._deliver(message, queue)
        except self.connection_errors:
            # Taken off the list, but kombu could not record it as unacknowledged (Redis went away between the
            # two commands): without this it would be lost. Put it back at the head of its list once Redis answers
            # again; a copy that was recorded after all is stopped by its claim or its stored answer.
            _give_back(self, lane, item)
            raise
        return True
    finally:
        self._in_poll = None
        flush = getattr(self, "_flush_brpop_reauth", None)
        if flush is not None:
            flush()
