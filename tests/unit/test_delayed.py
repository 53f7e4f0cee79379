"""The kernel's own delays (aios.worker.delayed): syscalls put off in its Redis, moved back onto their queue when
due through the one publish path (never with a Celery eta, which the gate refuses), at least once."""

from __future__ import annotations

import time

from aios.state import keys
from aios.testing import Harness, StubService
from aios.worker.delayed import TAKE_LEASE_S
from tests.unit.conftest import MakeHarness


def test_a_delayed_syscall_goes_back_when_due_and_runs(harness: MakeHarness) -> None:
    h = harness("tool", StubService(), app=True)
    syscall = h.sdk.tool_syscall("noop")
    h.runtime.delayed.add(syscall, h.payload(syscall), 0.3, "test")
    assert h.move_delayed(now=time.time()) == 0 and h.queued() == []
    assert h.move_delayed(now=time.time() + 0.5) == 1 and h.delayed() == []
    [queued] = h.queued()
    assert queued.payload == h.payload(syscall) and queued.headers["eta"] is None
    assert "test" in queued.headers["argsrepr"]
    assert h.deliver() is not None and h.reply(syscall.id).status.value == "ok"  # type: ignore[union-attr]
    assert not h.redis.exists(keys.delayed_messages("aios.tool"))


def test_one_entry_per_id_at_its_earliest_due_time(harness: MakeHarness) -> None:
    h = harness("tool", StubService(), app=True)
    syscall = h.sdk.tool_syscall("noop")
    h.runtime.delayed.add(syscall, h.payload(syscall), 5.0, "later")
    h.runtime.delayed.add(syscall, h.payload(syscall), 1.0, "sooner")
    h.runtime.delayed.add(syscall, h.payload(syscall), 9.0, "latest")
    [(sid, due)] = h.delayed()
    assert sid == syscall.id and due < time.time() + 1.5


def taken_but_not_published(h: Harness, now: float) -> list[object]:
    """What a worker that died between taking and publishing leaves: the take script run, nothing else."""
    return list(h.runtime.delayed._take(keys=h.runtime.delayed.keys, args=[now, round(now + TAKE_LEASE_S, 3), 10]))


def test_one_taken_by_a_worker_that_died_is_taken_again_after_the_lease(harness: MakeHarness) -> None:
    h = harness("tool", StubService(), app=True)
    syscall = h.sdk.tool_syscall("noop")
    h.runtime.delayed.add(syscall, h.payload(syscall), 0.0, "test")
    now = time.time()
    assert len(taken_but_not_published(h, now)) == 2
    assert h.move_delayed(now=now + 1) == 0  # leased to the dead worker
    assert h.move_delayed(now=now + TAKE_LEASE_S + 1) == 1 and len(h.queued()) == 1


def test_one_put_off_again_while_it_was_being_moved_is_kept(harness: MakeHarness) -> None:
    h = harness("tool", StubService(), app=True)
    syscall = h.sdk.tool_syscall("noop")
    delayed = h.runtime.delayed
    delayed.add(syscall, h.payload(syscall), 0.0, "first")
    now = time.time()
    lease = round(now + TAKE_LEASE_S, 3)
    delayed._take(keys=delayed.keys, args=[now, lease, 10])
    delayed.add(syscall, h.payload(syscall), 2.0, "again")  # put off again meanwhile (earlier than the lease)
    assert int(delayed._done(keys=delayed.keys, args=[syscall.id, lease])) == 0
    assert [sid for sid, _ in h.delayed()] == [syscall.id]
