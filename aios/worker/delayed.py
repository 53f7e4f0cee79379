"""Syscalls the kernel puts off: a retry after a back-off, a quota wait, a copy whose id another delivery holds.

The kernel never delays a syscall with Celery's ``eta``/``countdown``: the gate refuses those (an agent could set
them, and Celery would hold such messages in the worker's memory beyond the prefetch limit). Instead the signed
message goes to the kernel's own Redis, in a sorted set per queue (``aios:delayed:<queue>``, by due time, and the
messages in ``aios:delayed-msg:<queue>``), and a thread of every worker of that queue moves due ones back onto it
through the one publish path (:func:`aios.broker.publish.publish_syscall`), at the priority its policy gives it
then. Only the kernel writes there: an agent cannot forge a delay.

Each id is there at most once (a second delay of it keeps the earlier due time). Moving one back is
at-least-once: it stays in the set, leased, until it is published; a worker that dies in between leaves it to
another one, and a copy published twice is stopped by the syscall's claim (:mod:`aios.worker.claims`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from aios.broker.publish import publish_syscall
from aios.state import keys, scripts
from aios.state.periodic import Periodic
from aios.wire.errors import AIOSError
from aios.wire.syscalls import Syscall, decode_syscall

if TYPE_CHECKING:
    from aios.worker.runtime import Runtime

log = logging.getLogger("aios.worker")

POLL_S = 0.25
"""How often a worker looks for due syscalls (a delay is this much late at most, on an idle worker)."""
TAKE_LEASE_S = 30.0
"""A due syscall taken by a worker that died before publishing it is taken again after this long."""
BATCH = 100


class Delayed:
    """One per worker process, for its queue."""

    def __init__(self, rt: "Runtime") -> None:
        self.rt = rt
        self.redis = rt.redis
        self.keys = [keys.delayed(rt.queue), keys.delayed_messages(rt.queue)]
        self._take = scripts.register(rt.redis, "delay_take")
        self._done = scripts.register(rt.redis, "delay_done")
        self._thread = Periodic(f"aios-delayed-{rt.queue}", POLL_S, self.move_due)

    def add(self, syscall: Syscall, payload: dict[str, Any], delay_s: float, note: str) -> None:
        """Put ``syscall`` (its signed ``payload``) back on this queue in ``delay_s`` seconds."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.keys[1], syscall.id, json.dumps({"payload": payload, "note": note}))
        pipe.zadd(self.keys[0], {syscall.id: time.time() + max(0.0, delay_s)}, lt=True)
        pipe.execute()

    def due(self) -> list[tuple[str, float]]:
        """What waits, soonest first: ``(syscall id, due time)``."""
        got: list[tuple[bytes, float]] = self.redis.zrange(self.keys[0], 0, -1, withscores=True)  # type: ignore[assignment]  # redis-py: sync client
        return [(k.decode(), float(v)) for k, v in got]

    def move_due(self, now: float | None = None) -> int:
        """Publish every syscall due by ``now`` back onto its queue; how many were published."""
        now = time.time() if now is None else now
        lease = round(now + TAKE_LEASE_S, 3)
        got = self._take(keys=self.keys, args=[now, lease, BATCH])
        moved = 0
        for syscall_id, raw in zip(got[::2], got[1::2], strict=True):
            sid = syscall_id.decode() if isinstance(syscall_id, bytes) else str(syscall_id)
            if raw is not None:
                entry = json.loads(raw)
                try:
                    syscall = decode_syscall(entry["payload"], max_bytes=self.rt.settings.syscalls.max_payload_bytes)
                except AIOSError as exc:  # it was decoded before it was put off: nothing to publish
                    log.error("delayed syscall %s cannot be decoded any more, dropped: %s", sid, exc)
                else:
                    self._publish(syscall, entry["payload"], entry.get("note", "delayed"))
                    moved += 1
            self._done(keys=self.keys, args=[sid, lease])
        return moved

    def _publish(self, syscall: Syscall, payload: dict[str, Any], note: str) -> None:
        if self.rt.app is None:
            raise RuntimeError("a runtime without a Celery app cannot publish a delayed syscall")
        publish_syscall(self.rt.app, payload, syscall_id=syscall.id, kind=syscall.kind, agent_id=syscall.agent_id,
                        route=self.rt.placement.route(syscall), note=note)

    def start(self) -> "Delayed":
        """Move due syscalls back every :data:`POLL_S` (a failed pass is retried: what it took is taken again)."""
        self._thread.start()
        return self

    def stop(self) -> None:
        self._thread.stop()
