"""Priorities honoured on each broker, and accepted work surviving a worker killed mid-syscall."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from aios.ops.embedded import LocalKernel
from aios.state import keys
from tests.conftest import BROKERS, authorized, await_reply, make_broker_settings

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("broker", BROKERS)
def test_high_priority_runs_before_queued_low_priority(broker: str, tmp_path: Path, request: pytest.FixtureRequest
                                                       ) -> None:
    settings = make_broker_settings(broker, tmp_path, request, worker_concurrency=1)
    with LocalKernel(settings, resources=()) as lk, authorized(lk.settings, "prio") as k:
        # No worker yet: everything waits in the queue, low priority first, the urgent one last.
        lows = [k.submit(k.tool_syscall("sleep", {"seconds": 0.05}, priority=1, timeout_s=60)) for _ in range(8)]
        high = k.submit(k.tool_syscall("noop", priority=9, timeout_s=60))
        default = k.submit(k.tool_syscall("noop", timeout_s=60))
        lk.start_worker("tool")
        started = {p.id: k.wait_response(p).timing.started_at for p in [*lows, high, default]}
    order = sorted(started, key=started.__getitem__)
    assert order[0] == high.id, "the priority-9 syscall must run first"
    assert order[1] == default.id, "the default priority (5) must run before priority 1, never as 'highest'"


@pytest.mark.parametrize("broker", BROKERS)
def test_tool_worker_killed_during_long_syscall_is_answered_within_its_lease(broker: str, tmp_path: Path,
                                                                            request: pytest.FixtureRequest) -> None:
    """SIGKILL the worker running two syscalls while a second worker idles: each is answered once, with its result,
    about a lease after the kill (AIOS_LEASE_S=2), not after the visibility timeout (900 s, the default here). On
    Redis the idle worker's lease sweep puts the dead worker's messages back (aios.worker.leases); RabbitMQ
    redelivers them when the connection drops, and the copies wait for the dead worker's claims to lapse."""
    lease_s, renew_s, sleep_s = 2.0, 0.5, 10.0  # long enough to add a worker while they run
    settings = make_broker_settings(broker, tmp_path, request, worker_concurrency=2, lease_s=lease_s,
                                    lease_renew_s=renew_s)
    with LocalKernel(settings, resources=["tool"]) as lk, authorized(lk.settings, "survivor") as k:
        state = redis.Redis.from_url(lk.settings.state_redis_url())
        pendings = [k.submit(k.tool_syscall("sleep", {"seconds": sleep_s}, timeout_s=60)) for _ in range(2)]
        deadline = time.monotonic() + 20
        while not all(state.exists(keys.claim(p.id)) for p in pendings):  # both run on the one worker
            assert time.monotonic() < deadline, "the syscalls never started"
            time.sleep(0.05)
        lk.add_workers("tool")  # idle: it takes nothing until the dead worker's messages come back
        lk.kill_worker("tool")
        killed = time.time()
        assert state.exists(*[keys.result(p.id) for p in pendings]) == 0, "they must not have finished before the kill"
        for p in pendings:
            response = k.wait_response(p)
            assert response.result == {"slept_s": sleep_s}
            # Started again one lease (plus a renewal period and slack) after the kill, not 900 s later.
            assert response.timing.started_at - killed < lease_s + renew_s + 3.0
            assert (k._inbox.get(p.id, 0.3) if k._inbox is not None  # type: ignore[union-attr]
                    else await_reply(lk.settings, k.agent_id, p.id, 0.3)) is None  # answered once
        assert int(state.hget(keys.STATS_DONE, "tool:ok") or 0) == 2  # each completed once
        requeued = int(state.hget(keys.STATS_DONE, "tool:lease_requeued") or 0)
        assert requeued == (0 if broker == "rabbitmq" else 2)
