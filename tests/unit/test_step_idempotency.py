"""IdempotencyStep: a syscall starts at most once and is answered once. A delivery of an answered id (a
redelivery, a requeued copy, a replay) is dropped: not run, no second reply, counted as a duplicate. A copy that
finds the id claimed by a delivery still running is put off by the kernel, and runs only if that one died."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from aios.state import keys
from aios.testing import StubService
from aios.wire.syscalls import Syscall
from tests.unit.conftest import MakeHarness, MakeSettings


def test_an_answered_duplicate_is_dropped_without_a_second_reply(harness: MakeHarness) -> None:
    service = StubService()
    h = harness("tool", service)
    syscall = h.sdk.tool_syscall("noop")
    first = h.run(syscall)
    h.execute(syscall)
    h.execute(syscall)
    assert h.replies(syscall.id) == [first]
    assert len(service.calls) == 1
    assert h.count(keys.STATS_DONE, "tool:duplicate") == 2
    assert h.count(keys.STATS_DONE, "tool:ok") == 1
    assert h.deadletters() == []  # a harmless redelivery is not a refusal


def test_an_answer_stored_by_another_worker_is_enough(harness: MakeHarness) -> None:
    service = StubService()
    h = harness("tool", service)
    syscall = h.sdk.tool_syscall("noop")
    other = harness("tool", StubService(), worker="other-worker", credential=h.secret)
    other.execute(h.payload(syscall))
    h.execute(syscall)
    assert service.calls == []
    assert [r.worker for r in h.replies(syscall.id)] == ["other-worker"]


def test_a_copy_delivered_while_the_first_runs_does_not_run(harness: MakeHarness) -> None:
    """The check-then-act race: a second copy taken while the first is running finds no answer yet, but finds the
    claim, so it does not start; the kernel puts it off, and when it comes back it finds the answer."""
    during: list[int] = []

    def answer(syscall: Syscall) -> dict[str, str]:
        h.execute(syscall)  # a duplicate delivered now, as another thread or worker would take it
        during.append(len(service.calls))
        return {"ran": syscall.id}

    service = StubService(answer)
    h = harness("tool", service, app=True)
    syscall = h.sdk.tool_syscall("noop")
    first = h.run(syscall)
    assert during == [1] and len(service.calls) == 1
    assert [sid for sid, _ in h.delayed()] == [syscall.id] and h.count(keys.STATS_DONE, "tool:deferred") == 1
    assert h.move_delayed() == 1 and h.deliver() is not None  # the copy comes back: answered, dropped
    assert len(service.calls) == 1 and h.replies(syscall.id) == [first]
    assert h.count(keys.STATS_DONE, "tool:duplicate") == 1 and h.deadletters() == []


def test_two_threads_racing_on_one_syscall_start_it_once(harness: MakeHarness) -> None:
    service = StubService(lambda s: time.sleep(0.2) or {"ran": s.id})
    h = harness("tool", service, app=True)
    syscall = h.sdk.tool_syscall("noop")
    payload = h.payload(syscall)
    threads = [threading.Thread(target=h.execute, args=(payload,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(service.calls) == 1 and len(h.replies(syscall.id)) == 1
    assert h.count(keys.STATS_DONE, "tool:deferred") == 3


def test_a_dead_holders_claim_lapses_and_its_copy_then_runs(harness: MakeHarness) -> None:
    """A worker that died running it held the claim: its redelivered message is put off, not lost, and runs once
    the dead worker's lease has lapsed."""
    service = StubService()
    h = harness("tool", service, app=True)
    syscall = h.sdk.tool_syscall("noop")
    h.redis.set(keys.claim(syscall.id), "a-dead-worker", px=300)
    assert h.run(syscall) is None and service.calls == []
    [(_, due)] = h.delayed()
    assert due - time.time() < 0.6  # back when the lease would end, not at the deadline
    time.sleep(max(0.0, due - time.time()) + 0.05)
    assert h.deliver() is not None
    assert len(service.calls) == 1 and h.reply(syscall.id).status.value == "ok"  # type: ignore[union-attr]


def test_a_claim_is_renewed_while_it_runs_and_goes_with_the_answer(harness: MakeHarness,
                                                                   make_settings: MakeSettings) -> None:
    ttls: list[int] = []

    def answer(syscall: Syscall) -> dict[str, str]:
        time.sleep(1.0)  # several leases of 1 s (half the visibility timeout of 2 s), renewed every third of one
        ttls.append(h.redis.pttl(keys.claim(syscall.id)))
        return {"ran": syscall.id}

    h = harness("tool", StubService(answer),
                settings=make_settings(visibility_timeout_s=2, max_syscall_timeout_s=1, default_timeout_s=1))
    assert h.runtime.claims.lease_s == 1.0
    syscall = h.sdk.tool_syscall("noop")
    assert h.run(syscall).status.value == "ok"  # type: ignore[union-attr]
    assert ttls and ttls[0] > 300  # still held, well within a lease
    # The reply script deleted the claim as it stored the answer: no key left behind per syscall.
    assert not h.redis.exists(keys.claim(syscall.id)) and h.stored(syscall.id) is not None
    h.execute(syscall)  # the answer stops a copy
    assert h.count(keys.STATS_DONE, "tool:duplicate") == 1


def test_a_delivery_that_ends_unanswered_gives_its_claim_up(harness: MakeHarness, make_settings: MakeSettings) -> None:
    service = StubService(irreversible="it deletes things")
    h = harness("tool", service, settings=make_settings(approvals="required"))
    syscall = h.sdk.tool_syscall("noop")
    assert h.run(syscall) is None and service.calls == []  # parked for approval
    assert not h.redis.exists(keys.claim(syscall.id))  # the approved copy will run
    too_long = h.sdk.tool_syscall("noop").model_copy(update={"timeout_s": 3600.0})
    assert h.run(too_long).error.code == "invalid_syscall"  # type: ignore[union-attr]
    assert not h.redis.exists(keys.claim(too_long.id))


def test_a_copy_long_after_every_run_could_have_ended_is_dropped(harness: MakeHarness) -> None:
    service = StubService()
    h = harness("tool", service, app=True)
    old = h.sdk.tool_syscall("noop", timeout_s=1).model_copy(update={"created_at": time.time() - 3600})
    h.redis.set(keys.claim(old.id), "stuck", px=60_000)
    assert h.run(old) is None and h.delayed() == [] and service.calls == []
    assert h.count(keys.STATS_DONE, "tool:duplicate") == 1


def dead_holder_token() -> str:
    """The claim token of a worker process of this host that has exited (and been reaped)."""
    from aios.worker.claims import _host, _start_time

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    started = _start_time(proc.pid)
    proc.kill()
    proc.wait()
    return f"{_host()}.{proc.pid}.{started}/0123abcd"


def test_a_claim_of_a_dead_worker_process_of_this_host_is_taken_over_at_once(harness: MakeHarness) -> None:
    """The copy need not wait out the lease of a holder whose process is gone: it deletes that claim and runs now.
    A live holder (this very process, a stalled one) or one of another host is waited for as before."""
    from aios.worker.claims import holder, holder_dead

    service = StubService()
    h = harness("tool", service, app=True)
    syscall = h.sdk.tool_syscall("noop")
    dead = dead_holder_token()
    assert holder_dead(dead) and not holder_dead(f"{holder()}/live") and not holder_dead("other-host.1.2/x")
    h.redis.set(keys.claim(syscall.id), dead, px=60_000)
    assert h.run(syscall).status.value == "ok"  # type: ignore[union-attr]
    assert len(service.calls) == 1 and h.delayed() == [] and h.runtime.claims.taken_over == 1

    alive = h.sdk.tool_syscall("noop")
    h.redis.set(keys.claim(alive.id), f"{holder()}/another-thread", px=60_000)  # alive: put off, not taken over
    assert h.run(alive) is None and [sid for sid, _ in h.delayed()] == [alive.id]
