"""Priorities honoured on each broker, and accepted work surviving a worker killed mid-syscall."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from aios.ops.embedded import LocalKernel
from aios.state import keys
from aios.wire.seal import open_reply
from aios.wire.syscalls import Response
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
def test_tool_worker_killed_during_long_syscall_redelivers(broker: str, tmp_path: Path,
                                                           request: pytest.FixtureRequest) -> None:
    """The killed worker's message is redelivered and the syscall is answered once, never run twice. RabbitMQ
    redelivers at once: the copy waits for the dead worker's claim to lapse, then runs to completion. Redis
    redelivers after the visibility timeout, which is above AIOS_MAX_SYSCALL_TIMEOUT_S and so above every
    timeout_s: the copy comes after its deadline and is answered deadline_exceeded without running."""
    rabbit = broker == "rabbitmq"
    limit = 10 if rabbit else 3  # RabbitMQ: room for the claim's lease (half the visibility timeout) to lapse
    settings = make_broker_settings(broker, tmp_path, request, worker_concurrency=1, visibility_timeout_s=limit + 2,
                                    max_syscall_timeout_s=limit, default_timeout_s=limit)
    with LocalKernel(settings, resources=["tool"]) as lk, authorized(lk.settings, "survivor") as k:
        state = redis.Redis.from_url(lk.settings.state_redis_url())
        pending = k.submit(k.tool_syscall("sleep", {"seconds": 2.5}, timeout_s=limit))
        time.sleep(1.0)  # an idle worker picks it up at once: it is now 1 s into its 2.5 s
        lk.kill_worker("tool")
        assert state.exists(keys.result(pending.id)) == 0, "it must not have finished before the kill"
        lk.start_worker("tool")
        # On RabbitMQ the agent's own client consumes its reply queue: read the answer from it.
        got = (k._inbox.get(pending.id, limit + 15) if k._inbox is not None  # type: ignore[union-attr]
               else await_reply(lk.settings, k.agent_id, pending.id, limit + 15))
        assert got is not None, "the redelivered syscall was never answered"
        response = Response.model_validate_json(open_reply(got, None, pending.id))
        if rabbit:
            assert response.result == {"slept_s": 2.5}
        else:
            assert response.error is not None and response.error.code == "deadline_exceeded"
        assert (k._inbox.get(pending.id, 0.5) if k._inbox is not None  # type: ignore[union-attr]
                else await_reply(lk.settings, k.agent_id, pending.id, 0.5)) is None  # answered once
        assert int(state.hget(keys.STATS_DONE, "tool:ok") or 0) == (1 if rabbit else 0)  # never run twice
