"""Affinity across the LLM workers of one core: an agent's syscalls go to the worker whose conversation cache holds
its context, or to any worker when that one is busy or gone. The decision is :func:`aios.policy.affinity.decide`.

Each LLM worker (llama.cpp backend; with ``AIOS_LLM_AFFINITY``) has an id and a queue of its own,
``<core queue>.w-<id>``, which it consumes besides the core's shared queue; agents cannot push onto it (their
broker users may push only onto the kernel's shared queues, docs/security.md). The kernel's Redis holds:

- ``aios:llm:owner:<queue>:<agent>`` -> the id of the worker that last ran a syscall of the agent and keeps its
  conversation (set after the syscall, for ``AIOS_LLM_AFFINITY_TTL_S``);
- ``aios:llm:workers:<queue>``: each worker's heartbeat (every ``HEARTBEAT_S``): its queue, slots in use, and its
  cache's counters, which ``aios status`` shows.

The worker that takes a syscall from the shared queue reads both (one round trip, after the syscall was verified
and claimed: :class:`aios.worker.steps.affinity.AffinityStep`). If another worker holds the agent's context, beat
within ``GONE_AFTER_S`` and had a free slot, the syscall goes to that worker's queue (its claim given up first, as any requeue; counted
``handovers``); a syscall that came through a worker's own queue runs there, so it moves at most once. Otherwise it
runs here. The worker that runs it counts an affinity ``hit`` (it holds the context), ``miss`` (another does, busy
or gone) or ``new`` (nobody does). With ``AIOS_LLM_AFFINITY=false`` the workers still record and count (the hit
rate of chance, for comparison: ``aios bench conversations --workers 2``), but hand nothing over.

A worker that dies leaves its queue: on Redis the live workers move what waits there back onto the shared queue
once its heartbeat is ``GONE_AFTER_S`` old (and keep doing so for a visibility timeout, for messages the lease
sweep or kombu puts back there); on RabbitMQ the queue sends a message that waited ``OWN_QUEUE_TTL_MS`` back to
the shared queue itself (dead-lettering, :func:`aios.broker.app.own_queue`).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from aios.broker.app import own_queue
from aios.broker.publish import Route as BrokerRoute
from aios.broker.publish import publish_syscall
from aios.broker.queues import step_lists
from aios.policy.affinity import Outcome, Route, WorkerView, decide, gone
from aios.state import keys
from aios.state.connections import as_text
from aios.state.periodic import Periodic
from aios.worker.call import Call

if TYPE_CHECKING:
    from aios.worker.runtime import Runtime

log = logging.getLogger("aios.worker")

HEARTBEAT_S = 1.0
"""How often an LLM worker says it is alive, and how busy (and flushes its counters)."""
GONE_AFTER_S = 3.0
"""A worker that has not beat for this long is gone: no syscall is handed to it, and its queue is drained."""
FAREWELL_S = 2.0
"""How long a stopping worker waits for its last heartbeat (it says it left) before it exits anyway."""
COUNTERS = ("affinity_hit", "affinity_miss", "affinity_new", "handovers", "reclaimed")
"""This worker's own counters (with its cache's: :meth:`aios.services.llm.service.LLMService.cache_counters`)."""


def parse_workers(raw: dict[Any, Any]) -> dict[str, WorkerView]:
    """The heartbeats of ``aios:llm:workers:<queue>`` as :class:`WorkerView` (unreadable entries skipped)."""
    out: dict[str, WorkerView] = {}
    for k, v in raw.items():
        try:
            d = json.loads(v)
            out[as_text(k)] = WorkerView(worker=as_text(k), queue=str(d["queue"] or ""), seen=float(d["seen"]),
                                         running=int(d["running"]), slots=int(d["slots"]), left=bool(d.get("left")))
        except (ValueError, KeyError, TypeError):
            continue
    return out


class Affinity:
    """One per LLM worker process: its id and own queue, its heartbeat, the lookups and records of the owners."""

    def __init__(self, rt: "Runtime") -> None:
        self.rt = rt
        self.shared = rt.queue
        self.worker_id = secrets.token_hex(4)
        self.queue = f"{rt.queue}.w-{self.worker_id}"
        self.hands_over = rt.settings.llm.affinity
        """``AIOS_LLM_AFFINITY``; off, the worker only records and counts (no own queue, no hand-over)."""
        self.slots = rt.settings.llm.batch_size
        self.ttl_s = rt.settings.llm.affinity_ttl_s
        self.forget_after_s = rt.settings.broker.visibility_timeout_s + 60.0
        self.registry = keys.llm_workers(rt.queue)
        self.running = 0
        self.counts: Counter[str] = Counter()
        self._flushed: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._periodic = Periodic("aios-llm-affinity", HEARTBEAT_S, self.beat)

    def queue_entity(self) -> Any:
        return own_queue(self.rt.settings, self.queue, self.shared)

    # -- per syscall ---------------------------------------------------------------------------------------------

    def route(self, agent_id: str, from_shared: bool) -> Route:
        pipe = self.rt.redis.pipeline(transaction=False)
        pipe.get(keys.llm_owner(self.shared, agent_id))
        pipe.hgetall(self.registry)
        owner, raw = pipe.execute()
        return decide(self.worker_id, as_text(owner) if owner is not None else None, parse_workers(raw),
                      from_shared=from_shared, now=time.time(), gone_after_s=GONE_AFTER_S, hand_over=self.hands_over)

    def hand_over(self, call: Call, queue: str) -> None:
        """Send the syscall to another worker's own ``queue``; this delivery is acknowledged when the step ends."""
        app = self.rt.app
        assert app is not None and call.payload is not None
        syscall = call.need()
        if queue not in app.amqp.queues:
            app.amqp.queues.add(own_queue(self.rt.settings, queue, self.shared))
        self.rt.requeue.release(call)
        priority = self.rt.placement.route(syscall).priority
        publish_syscall(app, call.payload, syscall_id=syscall.id, kind=syscall.kind, agent_id=syscall.agent_id,
                        route=BrokerRoute("llm", queue, priority), note="handed over")
        self.count("handovers")

    def count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def started(self, outcome: Outcome) -> None:
        with self._lock:
            self.running += 1
            self.counts[f"affinity_{outcome.value}"] += 1

    def finished(self, agent_id: str, outcome: Outcome) -> None:
        with self._lock:
            self.running -= 1
        service: Any = self.rt.service
        if service.holds(agent_id):
            self.rt.redis.set(keys.llm_owner(self.shared, agent_id), self.worker_id, ex=max(1, int(self.ttl_s)))
        elif outcome is Outcome.HIT:  # the record says here, but the cache let the conversation go
            self.rt.redis.delete(keys.llm_owner(self.shared, agent_id))

    # -- the heartbeat --------------------------------------------------------------------------------------------

    def totals(self) -> dict[str, int]:
        """This worker's counters since it started: its own and its conversation cache's."""
        with self._lock:
            out = {name: self.counts[name] for name in COUNTERS}
        cache = getattr(self.rt.service, "cache_counters", lambda: None)()
        out.update(cache or {})
        return out

    def beat(self, left: bool = False) -> None:
        now = time.time()
        totals = self.totals()
        delta = {k: v - self._flushed[k] for k, v in totals.items() if v != self._flushed[k]}
        entry = {"queue": self.queue if self.hands_over else None, "pid": os.getpid(), "seen": now, "running": self.running, "slots": self.slots, "left": left,
                 "started": self._started, **totals}
        pipe = self.rt.redis.pipeline(transaction=True)
        pipe.hset(self.registry, self.worker_id, json.dumps(entry))
        for k, v in delta.items():
            pipe.hincrby(keys.STATS_LLM, k, v)
        pipe.execute()
        self._flushed.update(delta)
        if not left:
            self.reclaim(now)

    def reclaim(self, now: float) -> int:
        """Drain the own queues of the gone workers back onto the shared queue (Redis brokers); forget the workers
        gone longer than a visibility timeout. Returns how many messages moved."""
        drain, forget = gone(parse_workers(self.rt.redis.hgetall(self.registry)), now, GONE_AFTER_S,
                             self.forget_after_s)
        moved = 0
        broker = self.rt.broker_redis
        if broker is not None:
            for view in (v for v in drain if v.queue):
                for src, dst in zip(step_lists(view.queue), step_lists(self.shared), strict=True):
                    while broker.lmove(src, dst, "LEFT", "RIGHT") is not None:  # oldest stays first to be served
                        moved += 1
        if moved:
            log.warning("moved %d syscalls from the queues of gone LLM workers back to %s", moved, self.shared)
            with self._lock:
                self.counts["reclaimed"] += moved
        if forget:
            self.rt.redis.hdel(self.registry, *forget)
        return moved

    def start(self) -> "Affinity":
        self._started = time.time()
        try:
            self.beat()
        except Exception as exc:  # the kernel's Redis away at start: the periodic beat tries again
            log.warning("the LLM worker's first heartbeat failed (retrying): %s", exc)
        self._periodic.start()
        return self

    def stop(self) -> None:
        self._periodic.stop()
        # The farewell beat waits at most FAREWELL_S: at shutdown the kernel's Redis may be going away too (Ctrl-C
        # of `aios run` stops both), and its connection would retry for AIOS_RECONNECT_S, keeping the worker alive.
        farewell = threading.Thread(target=self._farewell, name="aios-llm-affinity-farewell", daemon=True)
        farewell.start()
        farewell.join(FAREWELL_S)

    def _farewell(self) -> None:
        try:
            self.beat(left=True)
        except Exception as exc:  # the kernel's Redis away: the others see the heartbeat age instead
            log.warning("the LLM worker's last heartbeat failed: %s", exc)

    _started = 0.0
