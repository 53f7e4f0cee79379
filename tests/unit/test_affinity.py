"""The routing decision of LLM affinity (aios.policy.affinity) alone: which worker runs an agent's syscall."""

from __future__ import annotations

from aios.policy.affinity import Outcome, Route, WorkerView, decide, gone
from aios.worker.affinity import parse_workers

NOW = 1000.0
GONE = 3.0


def view(worker: str, *, seen: float = NOW - 0.5, running: int = 0, slots: int = 2, left: bool = False) -> WorkerView:
    return WorkerView(worker=worker, queue=f"aios.llm.w-{worker}", seen=seen, running=running, slots=slots, left=left)


def route(owner: str | None, workers: list[WorkerView], *, me: str = "a", from_shared: bool = True) -> Route:
    return decide(me, owner, {w.worker: w for w in workers}, from_shared=from_shared, now=NOW, gone_after_s=GONE)


def test_the_worker_holding_the_context_runs_it_and_another_hands_it_over() -> None:
    workers = [view("a"), view("b")]
    assert route("a", workers).outcome is Outcome.HIT
    handed = route("b", workers)
    assert handed.outcome is Outcome.HAND_OVER and handed.queue == "aios.llm.w-b"
    assert route(None, workers).outcome is Outcome.NEW  # nobody holds it: the taker runs it


def test_a_busy_or_gone_holder_is_passed_over() -> None:
    assert route("b", [view("a"), view("b", running=2, slots=2)]).outcome is Outcome.MISS  # its slots are full
    assert route("b", [view("a"), view("b", running=1, slots=2)]).outcome is Outcome.HAND_OVER
    assert route("b", [view("a"), view("b", seen=NOW - GONE - 0.1)]).outcome is Outcome.MISS  # no heartbeat
    assert route("b", [view("a"), view("b", left=True)]).outcome is Outcome.MISS  # it stopped
    assert route("b", [view("a")]).outcome is Outcome.MISS  # never heard of (forgotten)


def test_with_affinity_off_nothing_moves_but_hits_are_still_told_apart() -> None:
    workers = {w.worker: w for w in [view("a"), view("b")]}
    for owner, outcome in (("b", Outcome.MISS), ("a", Outcome.HIT), (None, Outcome.NEW)):
        assert decide("a", owner, workers, from_shared=True, now=NOW, gone_after_s=GONE,
                      hand_over=False).outcome is outcome


def test_a_syscall_moves_at_most_once() -> None:
    """One that came through this worker's own queue runs here, even if the record changed meanwhile."""
    r = route("b", [view("a"), view("b")], from_shared=False)
    assert r.outcome is Outcome.MISS and "handed over here" in r.why
    assert route("a", [view("a")], from_shared=False).outcome is Outcome.HIT


def test_gone_workers_are_drained_then_forgotten() -> None:
    workers = {w.worker: w for w in [view("a"), view("b", seen=NOW - 10), view("c", seen=NOW - 100, left=True)]}
    drain, forget = gone(workers, NOW, GONE, forget_after_s=60)
    assert [v.worker for v in drain] == ["b", "c"] and forget == ["c"]


def test_heartbeats_are_read_back_and_bad_ones_skipped() -> None:
    raw = {b"a": b'{"queue": "aios.llm.w-a", "seen": 5, "running": 1, "slots": 4, "cache_hits": 3}',
           b"b": b"not json", b"c": b'{"queue": "q"}'}
    assert parse_workers(raw) == {"a": WorkerView("a", "aios.llm.w-a", 5.0, 1, 4)}
