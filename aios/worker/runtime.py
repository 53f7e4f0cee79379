"""Per worker process: the connections, the service, and the pipeline every syscall goes through.

A message reaches the service only after two gates: :mod:`aios.worker.gate` looks at the raw broker message
before Celery decodes it (JSON only, size, envelope shape, task name); then the pipeline
(:mod:`aios.worker.steps`) decodes the syscall against its schema, checks its signature, claims it (not answered,
not running elsewhere), checks its deadline, approval and quotas, runs it, and answers. Whatever is refused gets an error reply (when the
message names a syscall id), a count in ``aios:stats:rejected`` and a copy in the dead-letter list
(:mod:`aios.worker.refusals`). The worker goes on serving.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery

from aios.broker.queues import queue_depth
from aios.broker.reply_queues import replies_for
from aios.policy.governor import Governor
from aios.policy.identity import KeyRing
from aios.policy.placement import Placement
from aios.services.base import Service
from aios.settings import Settings, worker_queue
from aios.state.connections import broker_client, shares_broker, state_client
from aios.state.context import ContextStore
from aios.state.replies import Ack
from aios.wire.errors import AIOSError
from aios.wire.priority import is_redis_url
from aios.worker.affinity import Affinity
from aios.worker.call import Call, Done, Refuse
from aios.worker.cancels import Cancels
from aios.worker.claims import Claims, Preload
from aios.worker.delayed import Delayed
from aios.worker.pipeline import Pipeline, Step
from aios.worker.refusals import Refusals
from aios.worker.requeue import Requeue
from aios.worker.streams import Streams

log = logging.getLogger("aios.worker")


class Runtime:
    def __init__(self, settings: Settings, resource: str, service_factory: Callable[[Settings], Service],
                 steps: Callable[["Runtime"], list[Step]] | None = None,
                 state: redis.Redis | None = None) -> None:
        """``steps``: the pipeline (default :func:`aios.worker.steps.default_steps`); ``state``: a connection to
        the kernel's Redis to use instead of a new one (tests, the overhead benchmark's profile)."""
        from aios.worker.steps import default_steps

        self.settings = settings
        self.resource = resource
        self.task_name = f"aios.{resource}"
        self.queue = worker_queue(settings, resource)
        """The queue this worker serves: its resource's (an LLM worker: its core's, ``aios.llm.<core>``)."""
        self.redis = state if state is not None else state_client(settings)
        self.broker_redis: redis.Redis | None = (
            broker_client(settings) if is_redis_url(settings.require_broker()) else None)
        self.keyring: KeyRing | None = KeyRing(settings) if settings.security.auth == "required" else None
        """Agents' keys, derived from the kernel's master key: to check signatures and seal replies."""
        self.governor = Governor(settings, self.redis, resource)
        self.placement = Placement(settings, lambda: self.redis)
        self.replies = replies_for(self.redis, settings)
        self.streams = Streams(self.replies)
        """Chunks of streamed LLM syscalls, on their way to the callers."""
        self.refusals = Refusals(self)
        self.claims = Claims(self)
        self.cancels = Cancels(self)
        self.checkpoints = ContextStore(self.redis, settings.broker.result_ttl_s)
        """Where a running generation's checkpoints go (``aios:ctx:<id>``, what a suspension stores)."""
        self.delayed = Delayed(self)
        self.requeue = Requeue(self)
        self.arrivals: dict[str, int] = {}
        """Message id -> the kernel priority the gate saw it served at (popped by the placement step)."""
        self.acks_with_answer = shares_broker(settings)
        """The reply script acknowledges a message on the broker with its answer (one round trip less per
        syscall): the broker's lists share the state's Redis database."""
        self.unacked: dict[str, Ack] = {}
        """Message id -> its delivery, to acknowledge with its answer (set by the gate, popped by the reply step)."""
        self.preloads: dict[str, Preload] = {}
        """Message id -> the claim reading sent as it arrived (:meth:`preload`, popped by the load step)."""
        self.arrived_from: dict[str, str] = {}
        """Message id -> the queue it came from (LLM workers with affinity; popped by the affinity step)."""
        self.affinity: Affinity | None = None
        """An LLM worker's affinity (:mod:`aios.worker.affinity`): its own queue, heartbeat and counters."""
        if resource == "llm" and settings.llm.backend == "llamacpp":
            self.affinity = Affinity(self)
        self.app: Celery | None = None
        """The worker's Celery app (set by :func:`aios.worker.app.create_worker_app`): requeues go through it."""
        self._service_factory = service_factory
        self._service: Service | None = None
        self._lock = threading.Lock()
        self.pipeline = Pipeline((steps or default_steps)(self))

    @property
    def service(self) -> Service:
        if self._service is None:
            with self._lock:
                if self._service is None:
                    service = self._service_factory(self.settings)
                    service.watch_queue(self.queue_waiting)
                    service.keep_checkpoints(self.checkpoints.save)
                    self._service = service
        return self._service

    def execute(self, message_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], worker: str) -> None:
        """Run one delivered message through the pipeline."""
        call = Call(message_id=message_id, args=args, kwargs=kwargs, worker=worker)
        try:
            self.pipeline.run(call)
        except Refuse as refusal:
            self.refusals.reject(refusal.exc.code, refusal.exc.message, message_id, call.raw, started=call.started,
                                 answer=call if call.verified else None)
        except Done:
            pass
        except Exception as exc:  # a step's own failure (a kernel bug, the state Redis gone): say so, if we can
            log.exception("the pipeline failed on syscall %s", message_id)
            if call.syscall is None or not call.verified:
                raise
            response = call.error(AIOSError(f"the {self.resource} worker failed: {type(exc).__name__}: {exc}; "
                                            "see the worker log"))
            self.replies.write_reply(response, agent_id=call.syscall.agent_id, key=call.agent_key,
                                     kind=call.syscall.kind, once=True)  # raises if Redis is gone
        finally:
            self.arrivals.pop(message_id, None)
            self.arrived_from.pop(message_id, None)
            self.unacked.pop(message_id, None)
            self.drop_preload(message_id)

    def preload(self, message_id: str, body: Any) -> None:
        """As an accepted message arrives (the gate, on the worker's event loop), send its claim reading
        (:meth:`aios.worker.claims.Claims.send_reading`), so that the round trip overlaps the handing over of the
        message to a pool thread. Read from the message as published, unchecked: the load step uses it only if it
        fits the syscall once decoded (else, and for a message refused before the load step, it is discarded and
        its claim given up)."""
        payload = body[0][0] if body and body[0] and isinstance(body[0][0], dict) else None
        if payload is None or message_id in self.preloads:
            return
        agent, kind = payload.get("agent_id"), payload.get("kind")
        if payload.get("id") != message_id or not isinstance(agent, str) or not 0 < len(agent) <= 128:
            return
        pre = self.claims.send_reading(message_id, agent, credential=self.settings.security.auth == "required",
                                       snapshot=kind == "llm")
        if pre is not None:
            self.preloads[message_id] = pre

    def drop_preload(self, message_id: str) -> None:
        """Discard the claim reading of a message no load step will read (refused on the way, revoked)."""
        pre = self.preloads.pop(message_id, None)
        if pre is not None:
            try:
                self.claims.discard(pre)
            except redis.RedisError as exc:  # the claim lapses with its lease
                log.warning("could not give up the claim of syscall %s: %s", message_id, exc)

    def queue_waiting(self) -> bool:
        """Whether messages wait on this worker's queue (on Redis, every priority step), beyond those held."""
        if self.broker_redis is None and self.app is None:
            return False
        return (queue_depth(self.app, self.settings, self.queue, self.broker_redis) or 0) > 0
