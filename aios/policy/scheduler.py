"""Scheduling policies: pure objects that decide the broker priority of each syscall, testable without Redis.

The kernel has no central dispatcher: syscalls wait in the broker's priority queues and every worker takes the
most urgent one it can. A policy therefore acts where a syscall enters the queue (:meth:`Policy.priority`,
called by the SDK) and, for aging, while it waits (:func:`aged_priority` states the rule; on Redis brokers the
workers' ager applies it in Lua, ``aios/state/lua/age.lua``). One policy per resource (``AIOS_POLICIES``):

``fifo``      every syscall at the same priority: served in arrival order.
``rr``        round robin: the same, plus a time slice on the LLM (``AIOS_LLM_QUANTUM_TOKENS``, 32 if unset) that
              the LLM worker honours by suspending a generation and sending it to the back of the queue.
``priority``  strict priority (the agent's 0..9), with aging: a syscall that has waited ``aging_s`` rises one
              step, so a flood of urgent work delays the rest but never starves it.
``fair``      least attained service (as in Autellix): an agent's syscalls enter at a level set by how much more
              service it has received than the least-served active agent, so an agent that has had more
              waits behind one that has had less. A newcomer, or an agent back from a pause longer than
              ``AIOS_FAIR_WINDOW_S``, starts level with the least-served one (as in start-time fair queuing), so
              it neither starves the others while it "catches up" nor pays for service it had long ago.

Attained service is measured in seconds of worker time per agent and resource, recorded by the workers.
"""

from __future__ import annotations

import math

from aios.settings import PolicyName, Settings, policy_name
from aios.wire.priority import DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY


class Policy:
    name: PolicyName
    needs_attained = False
    """Whether :meth:`priority` reads the agent's attained service (one Redis read per submission)."""
    aging_s: float | None = None
    """Waiting time per step of aging; ``None``: no aging."""
    quantum_tokens: int | None = None
    """LLM tokens a generation runs before it yields to waiting syscalls; ``None``: it runs to the end."""

    def priority(self, requested: int, attained_s: float = 0.0) -> int:
        """The kernel priority (0..9, 9 most urgent) a syscall enters its queue with."""
        raise NotImplementedError


class Fifo(Policy):
    name: PolicyName = "fifo"

    def priority(self, requested: int, attained_s: float = 0.0) -> int:
        return DEFAULT_PRIORITY


class RoundRobin(Fifo):
    name = "rr"

    def __init__(self, quantum_tokens: int) -> None:
        self.quantum_tokens = quantum_tokens


class StrictPriority(Policy):
    name = "priority"

    def __init__(self, aging_s: float) -> None:
        self.aging_s = aging_s

    def priority(self, requested: int, attained_s: float = 0.0) -> int:
        return requested


class FairShare(Policy):
    """Least attained service: ``excess_s`` is the agent's attained service above the least-served agent active
    in the last ``AIOS_FAIR_WINDOW_S``; every ``quantum_s`` of excess is one priority level down from the top.
    The least-served agents (and newcomers, who start level with them) enter at 9; 9 or more quanta ahead, at 0."""

    name = "fair"
    needs_attained = True

    def __init__(self, quantum_s: float) -> None:
        self.quantum_s = quantum_s

    def level(self, excess_s: float) -> int:
        return min(MAX_PRIORITY, int(max(0.0, excess_s) / self.quantum_s))

    def priority(self, requested: int, attained_s: float = 0.0) -> int:
        return MAX_PRIORITY - self.level(attained_s)


def aged_priority(priority: int, waited_s: float, aging_s: float) -> int:
    """A syscall's priority after waiting ``waited_s``: one step up per ``aging_s``, at most the top.

    Steps are ``floor(waited_s / aging_s)``, the division rounded first, exactly as ``lua/age.lua`` computes it
    (Python's ``//`` is the exact floor and disagrees at step boundaries: ``0.5 // 0.1 == 4.0``)."""
    if waited_s <= 0:
        return priority
    return min(MAX_PRIORITY, max(MIN_PRIORITY, priority) + math.floor(waited_s / aging_s))


DEFAULT_RR_QUANTUM_TOKENS = 32


def llm_quantum(settings: Settings) -> int:
    """Tokens an LLM generation runs before it yields to waiting syscalls (0: never): the ``rr`` policy's
    quantum, or ``AIOS_LLM_QUANTUM_TOKENS`` under any other policy."""
    return make_policy(settings, "llm").quantum_tokens or settings.llm.quantum_tokens


def make_policy(settings: Settings, resource: str) -> Policy:
    name = policy_name(settings, resource)
    if name == "fifo":
        return Fifo()
    if name == "rr":
        return RoundRobin(settings.llm.quantum_tokens or DEFAULT_RR_QUANTUM_TOKENS)
    if name == "priority":
        return StrictPriority(settings.scheduling.aging_s)
    return FairShare(settings.scheduling.fair_quantum_s)


def jain_index(values: list[float]) -> float:
    """Jain's fairness index: 1.0 when all are equal, 1/n when one gets everything."""
    if not values or not any(values):
        return 1.0
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))
