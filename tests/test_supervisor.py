"""`aios up`'s supervisor: the back-off policy alone, and restarts of a real kernel's processes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from aios.ops.embedded import LocalKernel
from aios.ops.supervisor import Backoff, Supervisor, describe_exit
from aios.state import keys
from tests.conftest import authorized, base_settings, run_aios

# -- the policy, without processes -------------------------------------------------------------------------------


def test_backoff_doubles_to_its_cap_and_resets_after_a_healthy_run() -> None:
    b = Backoff(initial_s=0.5, max_s=30, reset_after_s=60, crash_loop=100)
    assert [b.on_exit(1.0) for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert b.on_exit(60.0) == 0.5  # it stayed up a minute: a fresh start
    assert b.on_exit(0.1) == 1


def test_backoff_a_crash_loop_is_flagged_and_retried_at_the_cap() -> None:
    b = Backoff(initial_s=0.5, max_s=30, reset_after_s=60, crash_loop=5)
    delays = [b.on_exit(0.2) for _ in range(4)]
    assert delays == [0.5, 1, 2, 4] and not b.crash_looping
    assert b.on_exit(0.2) == 30 and b.crash_looping  # the fifth quick exit in a row
    assert b.on_exit(0.2) == 30 and b.crash_looping  # still retried, at the cap
    assert b.on_exit(61) == 0.5 and not b.crash_looping  # once it stays up, the loop is over


def test_describe_exit_names_signals() -> None:
    assert describe_exit(-signal.SIGKILL) == "SIGKILL"
    assert describe_exit(1) == "code 1"
    assert describe_exit(0) == "code 0"


# -- a real kernel ---------------------------------------------------------------------------------------------


class Running:
    """A supervisor polling ``lk`` on a thread, as `aios up` does in its main thread."""

    def __init__(self, lk: LocalKernel) -> None:
        self.lines: list[tuple[str, bool]] = []
        self.sup = Supervisor(lk, report=lambda msg, loud: self.lines.append((msg, loud)), interval_s=0.05)
        self.sup.start()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sup.run, args=(self.done,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.done.set()
        self.thread.join(timeout=10)


@pytest.fixture
def tool_kernel(tmp_path: Path) -> Iterator[LocalKernel]:
    with LocalKernel(base_settings(tmp_path), resources=["tool"]) as lk:
        yield lk


def _wait_for(check: object, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except redis.ConnectionError:  # Redis is starting again
            pass
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.integration
def test_a_killed_worker_is_restarted_serves_and_is_counted(tool_kernel: LocalKernel) -> None:
    lk = tool_kernel
    running = Running(lk)
    try:
        old = lk.supervised()["tool"].pid
        state = redis.Redis.from_url(lk.settings.state_redis_url())
        assert state.hget(keys.SUPERVISOR_RESTARTS, "tool:restarts") == b"0"
        lk.kill_worker("tool")
        _wait_for(lambda: lk.supervised()["tool"].pid != old, 10)  # restarted after 0.5 s
        with authorized(lk.settings, "supervised", timeout_s=60) as k:
            t0 = time.monotonic()
            assert k.call_tool("noop") is None
            assert time.monotonic() - t0 < 30
        assert lk.supervised()["tool"].poll() is None
        assert state.hget(keys.SUPERVISOR_RESTARTS, "tool:restarts") == b"1"
        assert state.hget(keys.SUPERVISOR_RESTARTS, "tool:last_exit") == b"SIGKILL"
        assert running.sup.restarts() == {"redis": 0, "tool": 1}
        msg, loud = running.lines[0]
        assert "tool exited (SIGKILL); restart 1 in 0.5 s" in msg and "worker-tool.log" in msg and not loud
        done = run_aios(lk, "status", "--json")
        assert done.returncode == 0, done.stderr
        info = json.loads(done.stdout)
        assert info["restarts"]["tool"]["restarts"] == 1 and info["restarts"]["tool"]["last_exit"] == "SIGKILL"
        assert info["restarts"]["redis"]["restarts"] == 0
    finally:
        running.close()


@pytest.mark.integration
def test_stopping_the_kernel_restarts_nothing(tool_kernel: LocalKernel) -> None:
    lk = tool_kernel
    running = Running(lk)
    try:
        pid = lk.supervised()["tool"].pid
        lk.stop()  # the supervisor is still polling: the warm shutdown's exits are not crashes
        time.sleep(1.5)
        assert running.sup.restarts() == {"redis": 0, "tool": 0}
        assert running.lines == []
        assert lk.supervised() == {}
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    finally:
        running.close()


@pytest.mark.integration
def test_a_worker_stopped_on_purpose_is_not_restarted(tool_kernel: LocalKernel) -> None:
    lk = tool_kernel
    running = Running(lk)
    try:
        lk.stop_worker("tool")
        time.sleep(1.0)
        assert "tool" not in lk.supervised() and running.lines == []
    finally:
        running.close()


@pytest.mark.integration
def test_the_persistent_embedded_redis_is_restarted_with_its_data(tmp_path: Path) -> None:
    with LocalKernel(base_settings(tmp_path), resources=(), persistent=True) as lk:
        state = redis.Redis.from_url(lk.settings.state_redis_url())
        state.set("aios:test:kept", "yes")
        time.sleep(1.5)  # appendfsync everysec
        running = Running(lk)
        try:
            old = lk.supervised()["redis"]
            os.kill(old.pid, signal.SIGKILL)
            _wait_for(lambda: lk.supervised()["redis"].pid != old.pid, 10)
            _wait_for(lambda: state.hget(keys.SUPERVISOR_RESTARTS, "redis:restarts") == b"1", 20)
            assert state.get("aios:test:kept") == b"yes"
            assert state.hget(keys.SUPERVISOR_RESTARTS, "redis:last_exit") == b"SIGKILL"
        finally:
            running.close()


@pytest.mark.integration
def test_a_throw_away_redis_that_dies_stops_the_kernel_with_a_clear_error(tmp_path: Path) -> None:
    from aios.wire.errors import KernelUnavailable

    with LocalKernel(base_settings(tmp_path), resources=()) as lk:
        sup = Supervisor(lk)
        sup.start()
        proc = lk.supervised()["redis"]
        proc.kill()
        proc.wait()
        with pytest.raises(KernelUnavailable, match="in memory only"):
            sup.poll()
        sup.close()
