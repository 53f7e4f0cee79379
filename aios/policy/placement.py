"""Where a syscall goes and at what priority: its resource's queue, and what its scheduling policy says now.

Used by every publisher (:func:`aios.broker.publish.publish_syscall`'s callers): the SDK, a worker requeueing a
preempted or retried syscall, an operator approving a parked one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from aios.broker.publish import Route
from aios.policy.governor import FairState
from aios.policy.scheduler import Policy, aged_priority, make_policy
from aios.settings import KIND_TO_RESOURCE, QUEUES, Settings, llm_queue
from aios.wire.syscalls import LLMSyscall, Syscall


class Placement:
    """Routes syscalls; ``state`` (the kernel's Redis) is opened only if a ``fair`` policy needs it. Without it
    (the SDK: agents do not read the kernel's state), a fair policy places a syscall as if its agent were the
    least served, and the worker that receives it moves it to the level its agent has (:mod:`aios.worker.steps.placement`)."""

    def __init__(self, settings: Settings, state: Callable[[], redis.Redis] | None) -> None:
        self.settings = settings
        self._state = state
        self._policies: dict[str, Policy] = {r: make_policy(settings, r) for r in QUEUES}
        self._fair: FairState | None = None

    def queue(self, syscall: Syscall) -> str:
        """Its resource's queue, or for an LLM syscall naming a configured core, that core's."""
        if isinstance(syscall, LLMSyscall):
            return llm_queue(self.settings, syscall.model)
        return QUEUES[KIND_TO_RESOURCE[syscall.kind]]

    def priority(self, resource: str, syscall: Syscall) -> int:
        """The priority the resource's policy gives the syscall now (``fair``: by its agent's attained service)."""
        policy = self._policies[resource]
        excess = 0.0
        if policy.needs_attained and self._state is not None:
            if self._fair is None:
                self._fair = FairState(self._state())
            excess = self._fair.excess(resource, syscall.agent_id, time.time(), self.settings.scheduling.fair_window_s)
        return policy.priority(syscall.priority, excess)

    def entitled(self, syscall: Syscall, max_priority: int, now: float) -> int:
        """The most urgent priority the syscall may be served at now, by its signed fields alone: its requested
        priority capped at its agent's grant, placed by its resource's policy, plus the aging it has earned
        since it was made (``created_at`` is signed; backdating it shortens its own deadline)."""
        resource = KIND_TO_RESOURCE[syscall.kind]
        capped = syscall if syscall.priority <= max_priority else syscall.model_copy(update={"priority": max_priority})
        base = self.priority(resource, capped)
        aging_s = self._policies[resource].aging_s
        return base if aging_s is None else aged_priority(base, now - syscall.created_at, aging_s)

    def route(self, syscall: Syscall) -> Route:
        resource = KIND_TO_RESOURCE[syscall.kind]
        return Route(resource, self.queue(syscall), self.priority(resource, syscall))
