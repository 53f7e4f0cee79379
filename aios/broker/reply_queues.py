"""Replies over RabbitMQ: each agent has its own durable queue ``aios.reply.<agent>`` that only its broker user
may read, so an agent on RabbitMQ needs no Redis at all.

The kernel's side publishes a sealed reply there (:class:`AmqpReplies`, the ``deliver`` of
:class:`aios.state.replies.Replies`, built by :func:`replies_for`); the SDK's side consumes its queue on one
thread per client and hands each reply to whoever waits for its syscall id (:class:`ReplyInbox`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import kombu
import redis

from aios.settings import Settings
from aios.state.replies import Replies
from aios.wire.priority import is_redis_url

KOMBU: Any = kombu  # kombu ships no type hints

log = logging.getLogger("aios.replies")

REPLY_QUEUE_EXPIRES_MS = 7 * 24 * 3600 * 1000
"""An agent's reply queue is deleted by RabbitMQ after a week without a consumer (``x-expires``)."""


def reply_queue_name(agent_id: str) -> str:
    return f"aios.reply.{agent_id}"


def reply_queue(agent_id: str) -> Any:
    """The queue, with the same arguments wherever it is declared (the kernel and the agent both may)."""
    return KOMBU.Queue(reply_queue_name(agent_id), KOMBU.Exchange(""), routing_key=reply_queue_name(agent_id), durable=True,
                 queue_arguments={"x-expires": REPLY_QUEUE_EXPIRES_MS})


class AmqpReplies:
    """Publishes sealed replies to agents' reply queues (kernel side, the kernel's broker user)."""

    def __init__(self, url: str, *, confirms: bool = True, reconnect_s: float = 30.0) -> None:
        self.url = url
        self.confirms = confirms
        """Wait for RabbitMQ's publisher confirm of each reply (``AIOS_PUBLISH_CONFIRMS``)."""
        self.reconnect_s = reconnect_s
        """How long to keep trying a broker that is away (a restart) before the reply's publish fails."""
        self._conn: Any = None
        self._producer: Any = None
        self._declared: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, agent_id: str, syscall_id: str, sealed: str) -> None:
        # The answer is stored in the kernel's Redis already; a redelivered copy of the syscall would be dropped as
        # answered, so this publish is the caller's only way to learn it: it keeps trying through a broker restart.
        deadline = time.monotonic() + self.reconnect_s
        pause = 0.1
        with self._lock:
            while True:
                try:
                    if self._producer is None:
                        options = {"confirm_publish": True} if self.confirms else {}
                        self._conn = KOMBU.Connection(self.url, connect_timeout=10, transport_options=options)
                        self._producer = KOMBU.Producer(self._conn.channel())
                        self._declared.clear()
                    queue = reply_queue(agent_id)
                    declare = [] if agent_id in self._declared else [queue]
                    self._producer.publish(sealed, exchange="", routing_key=queue.name, declare=declare,
                                           correlation_id=syscall_id, content_type="text/plain",
                                           content_encoding="utf-8", delivery_mode=2, retry=False)
                    self._declared.add(agent_id)
                    return
                except Exception as exc:  # a dropped connection, a broker restarting: open a new one, try again
                    log.warning("publishing the reply to %s on RabbitMQ failed (%s); reconnecting", syscall_id, exc)
                    self.close_locked()
                    if time.monotonic() + pause > deadline:
                        raise
                    time.sleep(pause)
                    pause = min(1.0, pause * 2)

    def close_locked(self) -> None:
        if self._conn is not None:
            try:
                self._conn.release()
            except Exception:
                pass
        self._conn = self._producer = None

    def close(self) -> None:
        with self._lock:
            self.close_locked()


def replies_for(client: redis.Redis, settings: Settings) -> Replies:
    """The kernel's reply writer for this broker: on Redis, reply lists; on RabbitMQ, the agents' reply queues."""
    broker = settings.require_broker()
    deliver = None if is_redis_url(broker) else AmqpReplies(
        broker, confirms=settings.broker.publish_confirms, reconnect_s=settings.broker.reconnect_s)
    return Replies(client, settings.broker.result_ttl_s, deliver=deliver)


class ReplyInbox:
    """One agent's reply queue, consumed on a background thread; :meth:`get` / :meth:`aget` wait for one id."""

    KEEP_S = 3600.0
    """How long a reply nobody has asked for yet is kept (a caller may wait long after submitting)."""

    def __init__(self, url: str, agent_id: str) -> None:
        self.url = url
        self.queue = reply_queue(agent_id)
        self._cond = threading.Condition()
        self._got: dict[str, tuple[float, list[str]]] = {}
        self._waiters: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future[str]]] = {}
        self._closed = threading.Event()
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"aios-replies-{agent_id}", daemon=True)
        self._thread.start()
        self._ready.wait(15)
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        backoff = 0.2
        while not self._closed.is_set():
            try:
                with KOMBU.Connection(self.url, connect_timeout=10, heartbeat=30) as conn:
                    with KOMBU.Consumer(conn.channel(), queues=[self.queue], on_message=self._on_message, no_ack=False):
                        self._ready.set()
                        backoff = 0.2
                        while not self._closed.is_set():
                            try:
                                conn.drain_events(timeout=0.5)
                            except TimeoutError:
                                conn.heartbeat_check()
            except Exception as exc:
                if not self._ready.is_set():
                    self.error = exc
                    self._ready.set()
                    return
                if self._closed.is_set():
                    return
                log.warning("the reply queue %s: %s; reconnecting", self.queue.name, exc)
                time.sleep(backoff)
                backoff = min(5.0, backoff * 2)

    def _on_message(self, message: Any) -> None:
        sid = message.properties.get("correlation_id")
        body = message.body.decode() if isinstance(message.body, bytes) else str(message.body)
        message.ack()
        if not isinstance(sid, str):
            return
        with self._cond:
            waiter = self._waiters.pop(sid, None)
            if waiter is not None:
                loop, fut = waiter
                loop.call_soon_threadsafe(_settle, fut, body)
                return
            now = time.time()
            self._got.setdefault(sid, (now, []))[1].append(body)
            if len(self._got) > 10_000:  # replies nobody came for: keep the recent ones
                for old in [k for k, (t, _) in self._got.items() if now - t > self.KEEP_S]:
                    del self._got[old]
            self._cond.notify_all()

    def _take(self, sid: str) -> str | None:
        got = self._got.get(sid)
        if got is None:
            return None
        body = got[1].pop(0)
        if not got[1]:
            del self._got[sid]
        return body

    def get(self, sid: str, timeout_s: float) -> str | None:
        """The next reply to ``sid``, or ``None`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                body = self._take(sid)
                if body is not None:
                    return body
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    async def aget(self, sid: str, timeout_s: float) -> str | None:
        loop = asyncio.get_running_loop()
        with self._cond:
            body = self._take(sid)
            if body is not None:
                return body
            fut: asyncio.Future[str] = loop.create_future()
            self._waiters[sid] = (loop, fut)
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            return None
        finally:
            with self._cond:
                self._waiters.pop(sid, None)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)


def _settle(fut: "asyncio.Future[str]", body: str) -> None:
    if not fut.done():
        fut.set_result(body)
