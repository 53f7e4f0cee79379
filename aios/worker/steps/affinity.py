"""Affinity across LLM workers (:mod:`aios.worker.affinity`): hand the syscall over to the worker holding its
agent's context, or run it here and, after it ran, record whether this worker now holds that context."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aios.policy.affinity import Outcome
from aios.worker.call import Call, Done
from aios.worker.pipeline import Step

if TYPE_CHECKING:
    from aios.worker.runtime import Runtime

log = logging.getLogger("aios.worker")


class AffinityStep(Step):
    """After placement, before the quota: hand the syscall over to the worker holding its agent's context, or
    run it here (and, after it ran, record whether this worker now holds the context)."""

    name = "affinity"

    def __init__(self, rt: "Runtime") -> None:
        self.rt = rt
        assert rt.affinity is not None
        self.affinity = rt.affinity

    def before(self, call: Call) -> None:
        syscall = call.need()
        arrived = self.rt.arrived_from.pop(call.message_id, None)
        if arrived is None or self.rt.app is None:  # delivered without the gate (tests' harness)
            return
        route = self.affinity.route(syscall.agent_id, from_shared=arrived != self.affinity.queue)
        if route.outcome is Outcome.HAND_OVER:
            assert route.queue is not None
            self.affinity.hand_over(call, route.queue)
            raise Done()
        if route.why:
            log.info("syscall %s of %s runs here: %s", syscall.id, syscall.agent_id, route.why)
        self.affinity.started(route.outcome)
        call.affinity = route.outcome

    def after(self, call: Call) -> None:
        outcome = call.affinity
        if isinstance(outcome, Outcome):
            self.affinity.finished(call.need().agent_id, outcome)
