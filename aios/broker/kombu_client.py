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

And it takes each message atomically. Stock kombu BRPOPs a message off its list and records it as unacknowledged
(the ``unacked`` hash and ``unacked_index``) in a second command: a worker SIGKILLed between the two lost the
message for good (nothing in Redis held it any more). Here one script (``lua/take_message.lua``) pops the
highest-priority message of the worker's lists and records it in the same step, so a taken message is always in
``unacked``, where the lease sweep (:mod:`aios.worker.leases`) or the visibility timeout gives it back. A script
cannot block, so when every list is empty the worker waits with ``BLMOVE l l RIGHT RIGHT`` on the list it last
took from (the default priority's at first): it blocks until that list has a message without taking it (a
rotation of one element onto itself), for at most :data:`WAIT_S`, then takes again. A message on that list is
taken at once; one on another priority's list within :data:`WAIT_S`. A server without ``BLMOVE`` (Redis < 6.2) or
that refuses the script keeps kombu's BRPOP (and its window).

And a message answered by the kernel's reply script, where the broker's lists share the state's database, is
acknowledged by that script (:data:`ACKED`): kombu's acknowledgement after the task then drops only its in-memory
record, without the MULTI/EXEC round trip of its own that cost the worker's event loop about a quarter of its CPU
per no-op syscall.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from typing import Any

_lock = threading.Lock()
_installed = False


def install() -> None:
    global _installed
    with _lock:
        if _installed:
            return
        from kombu.transport import redis as kombu_redis
        from kombu.transport import virtual

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
        consume: Any = kombu_redis.Channel.basic_consume

        def _basic_consume(self: Any, queue: str, *args: Any, **kwargs: Any) -> Any:
            no_ack = kwargs.get("no_ack", args[0] if args else False)
            held: set[str] = self.__dict__.setdefault("_aios_no_ack", set())
            if no_ack:  # nothing to record for a consumer that never acknowledges (Celery's control replies)
                held.add(queue)
            else:
                held.discard(queue)
            return consume(self, queue, *args, **kwargs)

        kombu_redis.Channel.basic_consume = _basic_consume  # type: ignore[method-assign]
        global _stock_brpop_start
        _stock_brpop_start = kombu_redis.Channel._brpop_start
        kombu_redis.Channel._brpop_start = _brpop_start  # type: ignore[method-assign]
        kombu_redis.Channel._brpop_read = _brpop_read  # type: ignore[method-assign]
        append: Any = kombu_redis.QoS.append
        base_append: Any = virtual.QoS.append

        def _append(self: Any, message: Any, delivery_tag: Any) -> None:
            info = message.delivery_info
            if isinstance(info, dict) and info.get(RECORDED):  # the take script recorded it already
                base_append(self, message, delivery_tag)  # the in-memory record only
            else:
                append(self, message, delivery_tag)

        kombu_redis.QoS.append = _append  # type: ignore[method-assign]
        stock_ack: Any = kombu_redis.QoS.ack
        base_ack: Any = virtual.QoS.ack

        def _ack(self: Any, delivery_tag: Any) -> None:
            try:
                ACKED.remove(delivery_tag)
            except KeyError:
                stock_ack(self, delivery_tag)
            else:  # the reply script acknowledged it with its answer: the in-memory record only
                base_ack(self, delivery_tag)

        kombu_redis.QoS.ack = _ack  # type: ignore[method-assign]
        _installed = True


ACKED: set[str] = set()
"""Delivery tags whose messages the kernel's reply script acknowledged on the broker already, with their answers
(:meth:`aios.state.replies.Replies.write_reply`): kombu's acknowledgement of one then only drops its in-memory
record, with no second round trip (the worker's pipeline thread adds the tag before the task returns; kombu's
event loop acknowledges after it returned)."""


def acked_with_answer(delivery_tag: str) -> None:
    """Say that ``delivery_tag``'s message was acknowledged on the broker with its answer."""
    ACKED.add(delivery_tag)


GIVE_BACK_S = 30.0
"""How long a worker keeps trying to put back a message it took while Redis went away."""


def _give_back(channel: Any, lane: str, item: bytes) -> None:
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


WAIT_S = 0.05
"""How long an idle worker waits on one of its lists before it tries them all again (a message on another
priority's list waits at most this long)."""
RECORDED = "aios_recorded"
"""The key of ``delivery_info`` saying that the take script recorded the message as unacknowledged already."""
TAKE, WAIT = "take", "wait"
_stock_brpop_start: Any = None
log = logging.getLogger("aios.worker")


@functools.cache
def _take_script() -> tuple[str, str]:
    """The take script's text and SHA1."""
    from aios.state import scripts

    source = scripts.source("take_message")  # cached
    return source, hashlib.sha1(source.encode()).hexdigest()


def _brpop_start(self: Any, timeout: Any = None) -> None:
    """kombu's ``Channel._brpop_start``, sending the take script (or, after it found nothing, the wait) instead of
    BRPOP; kombu's own where the server lacks what they need."""
    state = self.__dict__
    no_ack = state.get("_aios_no_ack")
    if state.get("_aios_stock") or self.global_keyprefix or (no_ack and not no_ack.isdisjoint(self.active_queues)):
        # kombu's BRPOP: the server lacks what the take needs, or a consumer that never acknowledges (the take
        # would record its messages as unacknowledged for good, and the visibility timeout give them back)
        state["_aios_mode"] = None
        _stock_brpop_start(self, timeout)
        return
    queues = self._queue_cycle.consume(len(self.active_queues))
    if not queues:
        return
    lanes = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
    connection = self.client.connection
    self._in_poll = connection
    self._brpop_sent_at = time.monotonic()
    if state.get("_aios_idle"):
        lane = state.get("_aios_lane")
        if lane not in lanes:
            from aios.wire.priority import DEFAULT_PRIORITY, to_broker

            lane = self._q_for_pri(queues[0], to_broker(DEFAULT_PRIORITY, "redis://"))
        state["_aios_mode"] = WAIT
        connection.send_command("BLMOVE", lane, lane, "RIGHT", "RIGHT", WAIT_S)
        return
    state["_aios_mode"] = TAKE
    args = [len(lanes) + 2, *lanes, self.unacked_key, self.unacked_index_key, repr(time.time())]
    source, sha = _take_script()
    if state.pop("_aios_load", False):
        connection.send_command("EVAL", source, *args)
    else:
        connection.send_command("EVALSHA", sha, *args)


LANE = "aios_lane"
"""The key of ``delivery_info`` that names the Redis list a message was popped from."""
SIZE = "aios_size"
"""The key of ``delivery_info`` that holds the size of the whole message as it was stored in that list (its body
base64-encoded, with its headers and properties): the gate bounds it without serializing the headers again."""


def _brpop_read(self: Any, **options: Any) -> bool:
    """kombu's ``Channel._brpop_read`` (5.x) for the take script, the wait and BRPOP, plus the list's name in the
    message's ``delivery_info``."""
    import redis
    from kombu.transport.virtual import Empty
    from kombu.utils import encoding

    bytes_to_str: Any = encoding.bytes_to_str  # kombu ships no type hints
    state = self.__dict__
    mode = state.get("_aios_mode")
    try:
        try:
            reply = self.client.parse_response(self.client.connection, "BRPOP" if mode is None else mode.upper(),
                                               **options)
        except redis.exceptions.NoScriptError:  # a restarted server: send the script's text once
            state["_aios_load"] = True
            raise Empty() from None
        except redis.ResponseError as exc:  # no BLMOVE (Redis < 6.2), or the script refused: kombu's BRPOP
            log.warning(
                "the broker refused the atomic take of a message (%s): back to kombu's BRPOP, which loses a "
                "message taken by a worker killed before it is recorded", exc)
            state["_aios_stock"] = True
            raise Empty() from None
        except self.connection_errors:
            self.client.connection.disconnect()
            raise
        if mode == WAIT:  # a message came to the list waited on, or the wait ran out: take again
            state["_aios_idle"] = False
            raise Empty()
        if not reply:
            if mode == TAKE:
                state["_aios_idle"] = True
            raise Empty()
        dest, item = reply
        lane = bytes_to_str(dest)
        state["_aios_lane"] = lane
        return _deliver(self, lane, item, recorded=mode == TAKE)
    finally:
        self._in_poll = None
        flush = getattr(self, "_flush_brpop_reauth", None)
        if flush is not None:
            flush()


def _deliver(self: Any, lane: str, item: bytes, *, recorded: bool) -> bool:
    from kombu.utils import encoding, json

    bytes_to_str: Any = encoding.bytes_to_str  # kombu ships no type hints
    loads: Any = json.loads
    queue = lane.rsplit(self.sep, 1)[0]
    self._queue_cycle.rotate(queue)
    message = loads(bytes_to_str(item))
    if isinstance(message, dict) and isinstance(message.get("properties"), dict):
        info = message["properties"].setdefault("delivery_info", {})
        if isinstance(info, dict):
            info[LANE] = lane
            info[SIZE] = len(item)
            # Always set: a message put back from memory may carry the flag of its last delivery.
            info[RECORDED] = recorded and isinstance(message["properties"].get("delivery_tag"), str)
    if recorded:  # in ``unacked`` already: a failure here leaves it to the lease sweep or the visibility timeout
        self.connection._deliver(message, queue)
        return True
    try:
        self.connection._deliver(message, queue)
    except self.connection_errors:
        # Taken off the list by BRPOP, but kombu could not record it as unacknowledged (Redis went away between
        # the two commands): without this it would be lost. Put it back at the head of its list once Redis answers
        # again; a copy that was recorded after all is stopped by its claim or its stored answer.
        _give_back(self, lane, item)
        raise
    return True
