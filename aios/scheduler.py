"""Scheduling policies: pure objects that decide the broker priority of each syscall, testable without Redis.

The kernel has no central dispatcher: syscalls wait in the broker's priority queues and every worker takes the
most urgent one it can. A policy therefore acts where a syscall enters the queue (:meth:`Policy.priority`,
called by the SDK) and, for aging, while it waits (:func:`aged_priority`, applied on Redis brokers by the
workers' ager, :mod:`aios.governor`). One policy per resource (``AIOS_POLICIES``):

``fifo``      every syscall at the same priority: served in arrival order.
``rr``        round robin: the same, plus a quantum (``AIOS_RR_QUANTUM_TOKENS``) that the LLM worker honours by
              suspending a generation and sending it to the back of the queue.
``priority``  strict priority (the agent's 0..9), with aging: a syscall that has waited ``aging_s`` rises one
              step, so a flood of urgent work delays the rest but never starves it.
``fair``      least attained service (multi-level, as in Autellix' PLAS): an agent's syscalls enter at a level
              set by the service it has already received (decayed with a half-life), so an agent that has had
              less waits in front of one that has had more; a new agent enters at the top.

Attained service is measured in seconds of worker time per agent and resource, recorded by the workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aios.priority import DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY
from aios.settings import PolicyName, Settings, policy_name


@dataclass(frozen=True)
class Attained:
    """An agent's attained service on one resource: ``seconds`` as of ``at`` (Unix time)."""

    seconds: float = 0.0
    at: float = 0.0

    def decayed(self, now: float, half_life_s: float) -> float:
        """The service as of ``now``: halved every ``half_life_s``, so that old service counts for less."""
        if self.seconds <= 0.0:
            return 0.0
        return self.seconds * 0.5 ** (max(0.0, now - self.at) / half_life_s)

    def plus(self, service_s: float, now: float, half_life_s: float) -> "Attained":
        return Attained(self.decayed(now, half_life_s) + max(0.0, service_s), now)

    def encode(self) -> str:
        return f"{self.seconds:.6f} {self.at:.3f}"

    @classmethod
    def decode(cls, raw: bytes | str | None) -> "Attained":
        if not raw:
            return cls()
        try:
            seconds, at = (raw.decode() if isinstance(raw, bytes) else raw).split()
            return cls(float(seconds), float(at))
        except ValueError:  # a damaged entry counts as no service rather than breaking submission
            return cls()


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
    name = "fifo"

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
    """Least attained service in levels: level ``k`` holds agents with ``quantum * (2^k - 1)`` to
    ``quantum * (2^(k+1) - 1)`` seconds of service; level 0 enters at priority 9, level 9 and beyond at 0."""

    name = "fair"
    needs_attained = True

    def __init__(self, quantum_s: float) -> None:
        self.quantum_s = quantum_s

    def level(self, attained_s: float) -> int:
        return min(MAX_PRIORITY, int(math.log2(1.0 + max(0.0, attained_s) / self.quantum_s)))

    def priority(self, requested: int, attained_s: float = 0.0) -> int:
        return MAX_PRIORITY - self.level(attained_s)


def aged_priority(priority: int, waited_s: float, aging_s: float) -> int:
    """A syscall's priority after waiting ``waited_s``: one step up per ``aging_s``, at most the top."""
    if waited_s <= 0:
        return priority
    return min(MAX_PRIORITY, max(MIN_PRIORITY, priority) + int(waited_s // aging_s))


def make_policy(settings: Settings, resource: str) -> Policy:
    name = policy_name(settings, resource)
    if name == "fifo":
        return Fifo()
    if name == "rr":
        return RoundRobin(settings.rr_quantum_tokens)
    if name == "priority":
        return StrictPriority(settings.aging_s)
    return FairShare(settings.fair_quantum_s)


def jain_index(values: list[float]) -> float:
    """Jain's fairness index: 1.0 when all are equal, 1/n when one gets everything."""
    if not values or not any(values):
        return 1.0
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))
