"""Cancellation on the real kernel (worker processes, each broker): an agent's own cancel, an operator's
``aios cancel`` and Celery's ``revoke`` stop a queued syscall before it starts; a cancelled running generation
(the real model) stops and frees its engine slot for the next syscall; the caller gets ``Cancelled`` once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result

from aios.broker.app import make_app
from aios.ops.cli import main
from aios.ops.embedded import LocalKernel
from aios.settings import get_settings
from aios.state import keys
from aios.wire.errors import Cancelled, DeadlineExceeded
from aios.wire.syscalls import Status
from tests.conftest import BROKERS, authorized, make_broker_settings

pytestmark = pytest.mark.integration


def _aios(lk: LocalKernel, *args: str) -> Result:
    """``aios <args>`` in-process, as an operator of ``lk``."""
    get_settings.cache_clear()  # settings are read once per process: an earlier test's kernel may be in the cache
    try:
        return CliRunner().invoke(main, list(args), env=lk.env())
    finally:
        get_settings.cache_clear()


def _done(state: redis.Redis, field: str) -> int:
    return int(state.hget(keys.STATS_DONE, field) or 0)


@pytest.mark.parametrize("broker", BROKERS)
def test_cancelled_queued_syscalls_never_start(broker: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """With no worker yet, three syscalls wait: one the agent cancels (its cancel sent at a higher priority, so
    it is served first), one an operator cancels with `aios cancel`, one nobody cancels."""
    settings = make_broker_settings(broker, tmp_path, request, worker_concurrency=1)
    with LocalKernel(settings, resources=()) as lk, authorized(lk.settings, "canceller") as k:
        state = redis.Redis.from_url(lk.settings.state_redis_url())
        mine = k.submit(k.tool_syscall("sleep", {"seconds": 0.3}, timeout_s=60))
        by_operator = k.submit(k.tool_syscall("sleep", {"seconds": 0.3}, timeout_s=60))
        kept = k.submit(k.tool_syscall("sleep", {"seconds": 0.3}, timeout_s=60))
        cancel = k.submit(k.cancel_syscall(mine, priority=9, timeout_s=60))
        result = _aios(lk, "cancel", by_operator.id)
        assert result.exit_code == 0, result.output
        lk.start_worker("tool")
        assert k.wait(cancel) == {"target": mine.id, "cancelled": True}
        for pending in (mine, by_operator):
            with pytest.raises(Cancelled, match="before it started"):
                k.wait(pending)
        assert k.wait(kept) == {"slept_s": 0.3}
        assert _done(state, "tool:ok") == 1 and _done(state, "cancel:ok") == 1  # the cancelled ones never ran
        assert _done(state, "tool:cancelled") == 2
        assert k.cancel(kept) is False  # answered: nothing to cancel
        again = _aios(lk, "cancel", kept.id)
        assert again.exit_code == 1 and "answered already" in again.output


@pytest.mark.parametrize("broker", BROKERS)
def test_celery_revoke_of_a_queued_syscall_answers_cancelled(broker: str, tmp_path: Path,
                                                             request: pytest.FixtureRequest) -> None:
    settings = make_broker_settings(broker, tmp_path, request, worker_concurrency=1)
    with LocalKernel(settings, resources=["tool"]) as lk, authorized(lk.settings, "revoker") as k:
        state = redis.Redis.from_url(lk.settings.state_redis_url())
        busy = k.submit(k.tool_syscall("sleep", {"seconds": 1.5}, timeout_s=60))  # the worker's one thread
        target = k.submit(k.tool_syscall("sleep", {"seconds": 0.2}, timeout_s=60))
        time.sleep(0.5)
        app = make_app(lk.settings, name="operator")
        try:
            app.control.revoke(target.id)
        finally:
            app.close()
        assert k.wait(busy) == {"slept_s": 1.5}
        response = k.wait_response(target)
        assert response.status is Status.ERROR and response.error is not None
        assert response.error.code == "cancelled"
        assert _done(state, "tool:ok") == 1  # the target never ran
        assert state.hkeys(keys.cancel(target.id)) == [keys.CANCEL_ANY.encode()]


@pytest.mark.parametrize("broker", BROKERS[:1])
def test_a_cancelled_running_generation_frees_its_slot(broker: str, tmp_path: Path,
                                                       request: pytest.FixtureRequest) -> None:
    """One engine slot: a long generation runs, a short one waits in the queue. The agent cancels the long one:
    it is answered Cancelled at once (not after its 1500 tokens) and the short one gets the slot. Then a long
    generation runs past its own deadline: it is stopped there, answered DeadlineExceeded, and frees the slot."""
    settings = make_broker_settings(broker, tmp_path, request, llm_batch_size=1, llm_n_ctx=2048,
                                    llm_n_threads=1, llm_quantum_tokens=0, visibility_timeout_s=7200)
    with LocalKernel(settings, resources=["llm", "tool"]) as lk, authorized(lk.settings, "writer") as k:
        state = redis.Redis.from_url(lk.settings.state_redis_url())
        long = k.submit(k.llm_syscall("Write a very long story about the sea, in many chapters.", max_tokens=1500,
                                      timeout_s=300))
        deadline = time.monotonic() + 60
        while not state.exists(keys.claim(long.id)):  # it runs once its delivery holds the claim
            assert time.monotonic() < deadline, "the long generation never started"
            time.sleep(0.05)
        short = k.submit(k.llm_syscall("Say hello.", max_tokens=8, timeout_s=300))
        time.sleep(1.0)
        cancelled_at = time.time()
        assert k.cancel(long) is True
        with pytest.raises(Cancelled, match="while it ran"):
            k.wait(long)
        answered = k.wait_response(short)
        assert answered.status is Status.OK
        assert answered.timing.started_at >= cancelled_at - 0.5  # it waited for the slot the cancel freed
        assert answered.timing.started_at - cancelled_at < 5.0
        assert _done(state, "llm:ok") == 1 and _done(state, "llm:error") == 1 and _done(state, "llm:cancelled") == 1
        overrun = k.submit(k.llm_syscall("Write a very long story about the mountains, in many chapters.",
                                         max_tokens=1500, timeout_s=4))
        after = k.submit(k.llm_syscall("Say goodbye.", max_tokens=8, timeout_s=300))
        with pytest.raises(DeadlineExceeded, match="past its deadline"):
            k.wait(overrun)
        stopped = time.time()
        assert stopped - overrun.syscall.deadline < 2.0  # stopped just past its deadline, within the SDK's grace
        assert k.wait_response(after).status is Status.OK
        assert _done(state, "llm:ok") == 2 and _done(state, "llm:error") == 2
