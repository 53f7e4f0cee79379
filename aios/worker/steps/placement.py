"""Serve a syscall only at a priority its signed fields entitle it to.

A publisher chooses where its message waits: on Redis the priority list it pushes onto (its broker user may push
only onto lists up to its agent's ``max_priority``), on RabbitMQ the message's priority; headers such as
``aios_priority`` and ``aios_enqueued`` are its to write as well. None of that is trusted here. The gate notes the
priority a message was actually served at (the Redis list it came from, or the RabbitMQ priority the broker
ordered it by); this step compares it with what the kernel computes from the signed syscall and the agent's
credential (:meth:`aios.policy.placement.Placement.entitled`). A syscall served above its entitlement goes back
to its queue at the priority it is entitled to (counted ``<kind>:demoted``), so a queue jump gains nothing.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from aios.broker.publish import Route, publish_syscall
from aios.state import keys
from aios.wire.priority import MAX_PRIORITY
from aios.worker.call import Call, Done
from aios.worker.pipeline import Step

if TYPE_CHECKING:
    from aios.worker.runtime import Runtime

log = logging.getLogger("aios.worker")


class PlacementStep(Step):
    name = "placement"

    def __init__(self, rt: "Runtime") -> None:
        self.rt = rt

    def before(self, call: Call) -> None:
        served = self.rt.arrivals.pop(call.message_id, None)
        if served is None or self.rt.app is None:  # delivered without the gate (tests' harness)
            return
        syscall = call.need()
        grant = call.credential.max_priority if call.credential is not None else MAX_PRIORITY
        entitled = self.rt.placement.entitled(syscall, grant, time.time())
        if served <= entitled:
            return
        assert call.payload is not None
        log.warning("syscall %s of %s was served at priority %d, above the %d it is entitled to: requeued at %d",
                    syscall.id, syscall.agent_id, served, entitled, entitled)
        route = self.rt.placement.route(syscall)
        publish_syscall(self.rt.app, call.payload, syscall_id=syscall.id, kind=syscall.kind,
                        agent_id=syscall.agent_id, route=Route(route.resource, route.queue, entitled), note="demoted")
        self.rt.redis.hincrby(keys.STATS_DONE, f"{syscall.kind}:demoted", 1)
        raise Done()
