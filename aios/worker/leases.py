"""Requeue the syscalls of a dead worker one lease after it died, not after the visibility timeout (Redis).

On a Redis broker, kombu keeps each message a worker took and has not acknowledged in the broker's ``unacked``
hash (by delivery tag; ``unacked_index`` says when it was taken) and puts it back on its queue only after the
visibility timeout (``AIOS_VISIBILITY_TIMEOUT_S``, 900 s by default): longer than a caller waits. But a running
syscall holds a lease, its claim (:mod:`aios.worker.claims`), that its worker renews every
``AIOS_LEASE_RENEW_S`` while alive. So every worker sweeps as often: a delivery taken more than one lease ago
whose syscall has neither a live claim nor an answer lost its worker, and the sweeper puts the message back at
the front of its priority list with kombu's own restore: one WATCH/MULTI transaction on the ``unacked`` hash, so
that of two workers sweeping at once one restores it and the other finds it gone. The copy runs on the next free
worker (its claim has lapsed), about ``AIOS_LEASE_S`` + ``AIOS_LEASE_RENEW_S`` after the death.

A dead worker of the same host is found sooner: a claim names the worker process holding it
(:func:`aios.worker.claims.holder`), and a delivery whose claim is held by a process of this host that is gone
(SIGKILLed, OOM-killed) goes back at the next sweep, its stale claim deleted first so that the copy runs at once:
within ``AIOS_LEASE_RENEW_S`` of the death instead of a lease. A live process is never taken for dead, however
long it stalls; a holder on another host is left to its lease.

A message taken but not yet claimed (at most ``worker_prefetch_multiplier`` x threads are ever taken, and each
is claimed within milliseconds), and one answered but not yet acknowledged, are left alone. The visibility
timeout stays as the last resort (a worker that restores nothing because every worker died).

RabbitMQ needs no sweep: it redelivers a consumer's unacknowledged messages as soon as its connection closes, and
the copy finds the dead holder's claim and is put off until that lease ends (at most one lease).
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from aios.state import keys
from aios.state.periodic import Periodic
from aios.worker.claims import holder_dead

if TYPE_CHECKING:
    from aios.worker.runtime import Runtime

log = logging.getLogger("aios.worker")

BATCH = 100
"""Lapsed deliveries looked at per sweep (the rest wait for the next one)."""


def syscall_id_of(raw: "bytes | str | None") -> str | None:
    """The syscall id of a kernel message as kombu keeps it in ``unacked`` (``[message, exchange, routing key]``),
    or ``None`` for anything else (left to the visibility timeout)."""
    if raw is None:
        return None
    try:
        message = json.loads(raw)[0]
        headers = message["headers"]
        task, syscall_id = headers["task"], headers["id"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if not (isinstance(task, str) and task.startswith("aios.") and isinstance(syscall_id, str)):
        return None
    return syscall_id if 8 <= len(syscall_id) <= 64 else None


class LeaseSweeper:
    """One per worker process on a Redis broker: puts back the messages whose syscall's lease lapsed unanswered."""

    def __init__(self, rt: "Runtime") -> None:
        self.rt = rt
        self.grace_s = rt.claims.lease_s
        self.periodic = Periodic("aios-lease-sweep", rt.claims.renew_s, self.sweep)
        self.restored = 0
        self._ids: dict[Any, str | None] = {}
        """Delivery tag -> the syscall id of its message (``None``: not a kernel syscall)."""
        """Messages this worker put back (also counted ``<kind>:lease_requeued`` in ``aios:stats:done``)."""

    def start(self) -> "LeaseSweeper":
        self.periodic.start()
        return self

    def stop(self) -> None:
        self.periodic.stop()

    def sweep(self, now: float | None = None) -> int:
        """One pass; how many messages it put back."""
        app = self.rt.app
        if app is None or self.rt.broker_redis is None:
            return 0
        now = time.time() if now is None else now
        with app.connection_for_write() as conn:
            channel: Any = conn.default_channel  # kombu's Redis channel (kombu ships no type hints)
            client = channel.client
            scored = client.zrangebyscore(channel.unacked_index_key, 0, now, start=0, num=BATCH, withscores=True)
            self._learn(client, channel, [tag for tag, _ in scored])
            taken = [(tag, sid, float(score)) for tag, score in scored if (sid := self._ids.get(tag)) is not None]
            if not taken:
                return 0
            pipe = self.rt.redis.pipeline(transaction=False)
            for _, sid, _ in taken:
                pipe.get(keys.claim(sid))
                pipe.exists(keys.result(sid))
            got = pipe.execute()
            lapsed: list[tuple[Any, str, Any]] = []
            for i, (tag, sid, when) in enumerate(taken):
                claim, answered = got[2 * i], int(got[2 * i + 1])
                if answered:
                    continue
                if claim is None and when <= now - self.grace_s:  # its lease lapsed
                    lapsed.append((tag, sid, None))
                elif claim is not None and holder_dead(claim):  # its holder is gone: no need to wait for the lease
                    lapsed.append((tag, sid, claim))
            restored = 0
            for tag, sid, stale in lapsed:
                if stale is not None:  # the copy must find the claim free, not wait out the dead holder's lease
                    self.rt.claims.release_stale(sid, stale)
                kind = self._restore(channel, client, tag)
                if kind is not None:
                    restored += 1
                    log.warning("syscall %s: %s: its message is back on its queue", sid,
                                "its worker's lease lapsed (the worker died?)" if stale is None
                                else "the worker process running it is gone")
                    self.rt.redis.hincrby(keys.STATS_DONE, f"{kind}:lease_requeued", 1)
        self.restored += restored
        return restored

    def _learn(self, client: Any, channel: Any, tags: "list[Any]") -> None:
        """Remember the syscall id of each delivery tag (read once per delivery, not at every sweep: the messages
        may be large), and forget the tags no longer taken."""
        unknown = [tag for tag in tags if tag not in self._ids]
        if unknown:
            for tag, raw in zip(unknown, client.hmget(channel.unacked_key, unknown), strict=True):
                self._ids[tag] = syscall_id_of(raw)
        if len(self._ids) > len(tags):
            keep = set(tags)
            for tag in [t for t in self._ids if t not in keep]:
                del self._ids[tag]

    @staticmethod
    def _restore(channel: Any, client: Any, tag: "bytes | str") -> str | None:
        """kombu's ``QoS.restore_by_tag`` (the same transaction), saying whether this call put the message back:
        the kind of the kernel task it was (``tool``...), or ``None`` when another sweeper or its ack came first."""
        done: list[str] = []

        def transaction(pipe: Any) -> None:
            done.clear()  # redis-py runs this again if the WATCH fails
            raw = pipe.hget(channel.unacked_key, tag)
            pipe.multi()
            channel.qos._remove_from_indices(tag, pipe)
            if raw:
                message, exchange, routing_key = json.loads(raw)
                channel._do_restore_message(message, exchange, routing_key, pipe, False)
                done.append(str(message.get("headers", {}).get("task", "aios.?")).split(".", 1)[-1])

        client.transaction(transaction, channel.unacked_key)
        return done[0] if done else None
