"""The lease sweep (aios.worker.leases): a message taken and never acknowledged goes back to its queue once its
syscall's lease lapsed unanswered, once (two sweepers cannot both restore it); a message whose syscall holds a live
claim, or has an answer, stays. Messages are taken with kombu's own channel (as a worker takes them), on the
session's embedded Redis."""

from __future__ import annotations

import time
from typing import Any

from aios.state import keys
from aios.testing import Harness, StubService
from aios.worker.leases import LeaseSweeper, syscall_id_of
from tests.unit.conftest import MakeHarness


def _take_unacked(h: Harness) -> Any:
    """Take the next message of the runtime's queue as a worker does (unacknowledged: it stays in kombu's
    ``unacked``), then drop the connection as a killed worker does: without kombu's restore at a clean close."""
    assert h.runtime.app is not None
    with h.runtime.app.connection_for_write() as conn:
        channel = conn.default_channel
        for _ in range(50):
            message = channel.basic_get(h.runtime.queue, no_ack=False)
            if message is not None:
                channel.qos._delivered.clear()  # what a SIGKILLed worker leaves: no restore on close
                return message
            time.sleep(0.02)
    raise AssertionError("nothing to take")


def _unacked(h: Harness) -> int:
    assert h.broker is not None
    return int(h.broker.hlen("unacked"))


def test_a_lapsed_lease_puts_the_message_back_once(harness: MakeHarness) -> None:
    h = harness("tool", StubService(), app=True, settings=None)
    syscall = h.sdk.tool_syscall("noop")
    h.submit(syscall)
    _take_unacked(h)  # a worker took it, then died: no claim, no answer
    assert h.queued() == [] and _unacked(h) == 1
    sweeper, other = LeaseSweeper(h.runtime), LeaseSweeper(h.runtime)
    assert sweeper.sweep() == 0  # not yet one lease old
    later = time.time() + sweeper.grace_s + 1
    assert sweeper.sweep(now=later) == 1
    assert other.sweep(now=later) == 0  # gone from unacked: the second sweeper restores nothing
    assert [m.message_id for m in h.queued()] == [syscall.id] and _unacked(h) == 0
    assert h.count(keys.STATS_DONE, "tool:lease_requeued") == 1
    h.deliver()  # the copy runs and is answered
    assert h.reply(syscall.id) is not None and h.reply(syscall.id).result == {"ran": syscall.id}  # type: ignore[union-attr]


def test_a_live_claim_or_an_answer_keeps_it_unacked(harness: MakeHarness) -> None:
    h = harness("tool", StubService(), app=True)
    running, answered = h.sdk.tool_syscall("noop"), h.sdk.tool_syscall("noop")
    for s in (running, answered):
        h.submit(s)
        _take_unacked(h)
    h.redis.set(keys.claim(running.id), "token", px=60_000)  # its worker renews it
    h.redis.set(keys.result(answered.id), "{}")  # answered, its ack not yet sent
    sweeper = LeaseSweeper(h.runtime)
    assert sweeper.sweep(now=time.time() + sweeper.grace_s + 1) == 0
    assert h.queued() == [] and _unacked(h) == 2


def test_the_sweep_waits_one_lease_and_renews_as_often_as_the_claims(make_settings: Any, harness: MakeHarness) -> None:
    h = harness("tool", StubService(), app=True, settings=make_settings(lease_s=4, lease_renew_s=3))
    sweeper = LeaseSweeper(h.runtime)
    assert sweeper.grace_s == 4 and h.runtime.claims.renew_s == 4 / 3
    assert sweeper.periodic.interval_s == 4 / 3


def test_only_kernel_messages_are_recognised() -> None:
    ok = '[{"headers": {"task": "aios.tool", "id": "0123456789abcdef"}}, "aios.tool", "aios.tool"]'
    assert syscall_id_of(ok) == "0123456789abcdef"
    assert syscall_id_of(ok.replace("aios.tool", "other.task", 1)) is None
    assert syscall_id_of('[{"headers": {"task": "aios.tool", "id": "short"}}, "", ""]') is None
    assert syscall_id_of("not json") is None and syscall_id_of(None) is None


def test_a_delivery_whose_worker_process_is_gone_goes_back_at_the_next_sweep(harness: MakeHarness) -> None:
    """Not one lease later: its claim names a process of this host that no longer exists. The stale claim is
    deleted with it, so that the copy runs at once; a live holder's delivery stays however long it runs."""
    from aios.worker.claims import holder
    from tests.unit.test_step_idempotency import dead_holder_token

    h = harness("tool", StubService(), app=True)
    dead, alive = h.sdk.tool_syscall("noop"), h.sdk.tool_syscall("noop")
    for s in (dead, alive):
        h.submit(s)
        _take_unacked(h)
    h.redis.set(keys.claim(dead.id), dead_holder_token(), px=60_000)
    h.redis.set(keys.claim(alive.id), f"{holder()}/running", px=60_000)
    sweeper = LeaseSweeper(h.runtime)
    assert sweeper.sweep() == 1  # at once, not after grace_s
    assert [m.message_id for m in h.queued()] == [dead.id] and _unacked(h) == 1
    assert not h.redis.exists(keys.claim(dead.id)) and h.redis.exists(keys.claim(alive.id))
    assert sweeper.sweep(now=time.time() + 3600) == 0  # the live holder's stays
    h.deliver()
    assert h.reply(dead.id) is not None and h.reply(dead.id).result == {"ran": dead.id}  # type: ignore[union-attr]
