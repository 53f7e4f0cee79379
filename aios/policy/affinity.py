"""Where an agent's LLM syscall should run when a core has several LLM workers: the pure decision.

Each LLM worker keeps its own conversation cache (:mod:`aios.services.llm.kv_cache`), so an agent's next turn
prefills only its new tokens on the worker that served its last one, and its whole conversation on any other.
The kernel's Redis records which worker holds an agent's context (``aios:llm:owner:<queue>:<agent>``) and what
each worker said in its last heartbeat (``aios:llm:workers:<queue>``); :func:`decide` turns that into a route.
The worker that took the syscall from the core's shared queue calls it (:mod:`aios.worker.affinity`): the
publisher, an untrusted agent, chooses nothing here, and cannot even reach a worker's own queue (its broker user
may push only onto the kernel's shared queues).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True)
class WorkerView:
    """An LLM worker as its last heartbeat described it."""

    worker: str
    queue: str
    """Its own queue (consumed only by it, besides the core's shared queue)."""
    seen: float
    """When it last beat (Unix time)."""
    running: int
    """Syscalls it was running."""
    slots: int
    """Syscalls it can run at once (its engine's sequences)."""
    left: bool = False
    """It stopped (said so at ``seen``)."""


class Outcome(StrEnum):
    HIT = "hit"
    """Runs here, on the worker holding its agent's context."""
    HAND_OVER = "handover"
    """Goes to the queue of the worker holding the context (alive, with a free slot)."""
    MISS = "miss"
    """Another worker holds the context but is busy or gone (or handed it here already): runs here."""
    NEW = "new"
    """No worker holds its agent's context: runs here."""


@dataclass(frozen=True)
class Route:
    outcome: Outcome
    queue: str | None = None
    """The queue to hand it over to (``HAND_OVER`` only)."""
    why: str = ""


def alive(view: WorkerView | None, now: float, gone_after_s: float) -> bool:
    return view is not None and not view.left and now - view.seen <= gone_after_s


def decide(me: str, owner: str | None, workers: Mapping[str, WorkerView], *, from_shared: bool, now: float,
           gone_after_s: float, hand_over: bool = True) -> Route:
    """The route of a syscall that worker ``me`` took, whose agent's context ``owner`` holds (``None``: nobody).

    ``from_shared``: it came from the core's shared queue. A syscall that came through ``me``'s own queue was
    handed over already and runs here whatever the record says now: a syscall moves at most once. Without
    ``hand_over`` (affinity off) it runs where it was taken, and the route only says whether that was a hit."""
    if owner is None:
        return Route(Outcome.NEW, why="no worker holds its agent's context")
    if owner == me:
        return Route(Outcome.HIT)
    if not from_shared:
        return Route(Outcome.MISS, why=f"handed over here, but worker {owner} holds its context now")
    if not hand_over:
        return Route(Outcome.MISS, why=f"worker {owner} holds its context (affinity off)")
    view = workers.get(owner)
    if not alive(view, now, gone_after_s):
        return Route(Outcome.MISS, why=f"worker {owner}, which holds its context, is gone")
    assert view is not None
    if view.running >= view.slots:
        return Route(Outcome.MISS, why=f"worker {owner}, which holds its context, is busy "
                                       f"({view.running}/{view.slots})")
    return Route(Outcome.HAND_OVER, queue=view.queue)


def gone(workers: Mapping[str, WorkerView], now: float, gone_after_s: float, forget_after_s: float
         ) -> tuple[list[WorkerView], list[str]]:
    """The workers whose own queues a live worker should drain back onto the shared queue (gone, not yet
    forgotten: a message the lease sweep or the visibility timeout puts back onto a dead worker's queue still
    comes back), and those to forget (gone longer than ``forget_after_s``)."""
    drain = [v for v in workers.values() if not alive(v, now, gone_after_s)]
    forget = [v.worker for v in drain if now - v.seen > forget_after_s]
    return drain, forget
