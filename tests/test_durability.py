"""Durable publish and broker restarts: a syscall the SDK accepted is answered once, through a restart of the
embedded Valkey (its append-only file), of a redis-server of the test's own (append-only) and of RabbitMQ.

The restart tests never touch the shared Redis on 127.0.0.1:6379 (it keeps nothing on disk, and others use it):
they start their own servers. The RabbitMQ one uses a private vhost and ``rabbitmqctl stop_app/start_app``, which
disturbs other users of the local RabbitMQ for a few seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from aios.broker.app import kernel_queues, make_app
from aios.ops.embedded import LocalKernel
from aios.ops.supervisor import Supervisor
from aios.policy.identity import Credentials
from aios.sdk.client import Kernel
from aios.settings import Settings
from aios.wire.errors import AIOSError
from aios_bench.chaos import OwnRedis
from aios_bench.ledger import executions
from tests.conftest import RABBIT_URL, _port_open, base_settings, need_server

AMQP = "amqp://guest:guest@127.0.0.1:5672//"


# -- the fast tier: what the configuration promises ------------------------------------------------------------

def test_rabbitmq_publishes_wait_for_confirms_into_durable_queues(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, broker_url=AMQP, redis_url="redis://127.0.0.1:1/0")
    app = make_app(s)
    assert app.conf.broker_transport_options == {"confirm_publish": True}
    assert app.conf.task_default_delivery_mode == "persistent"
    assert app.conf.broker_connection_max_retries is None and app.aios_reconnect_s == 30.0
    assert all(q.durable and q.exchange.durable for q in kernel_queues(s))
    off = make_app(s.updated(publish_confirms=False))
    assert "confirm_publish" not in off.conf.broker_transport_options
    app.close(), off.close()


def test_the_aios_up_valkey_keeps_an_append_only_file_with_the_fsync_setting(tmp_path: Path) -> None:
    persistent = LocalKernel(base_settings(tmp_path, embedded_appendfsync="always"), resources=(), persistent=True)
    throwaway = LocalKernel(base_settings(tmp_path), resources=())
    try:
        conf = persistent.redis_conf()
        assert "appendonly yes" in conf and "appendfsync always" in conf
        assert f"dir {tmp_path / 'redis'}" in conf
        assert "appendonly no" in throwaway.redis_conf()  # `aios run`: in memory only
    finally:
        persistent.stop(), throwaway.stop()
    assert "appendfsync everysec" in LocalKernel(base_settings(tmp_path), resources=(), persistent=True).redis_conf()


# -- restarts under load -------------------------------------------------------------------------------------

class Load:
    """``agents`` threads, each calling ``ledger_append`` (a side effect per execution) one after the other until
    stopped; counts what they submitted and what came back."""

    def __init__(self, kernels: list[Kernel]) -> None:
        self.kernels = kernels
        self.submitted: list[str] = []
        self.answers: Counter[str] = Counter()
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in kernels]

    def _run(self, k: Kernel) -> None:
        while not self.stop.is_set():
            s = k.tool_syscall("ledger_append", {"work_ms": 20})
            try:
                pending = k.submit(s)
            except AIOSError as exc:  # not accepted: the agent knows; not counted as submitted
                self.errors.append(f"submit: {exc}")
                continue
            self.submitted.append(pending.id)
            try:
                assert k.wait(pending) == {"ok": True}
                self.answers[pending.id] += 1
            except AIOSError as exc:
                self.errors.append(f"{pending.id}: {exc.code}: {exc}")

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def _agents(lk: LocalKernel, n: int) -> list[Kernel]:
    creds = Credentials(lk.settings)
    try:
        return [Kernel(f"durable-{i}", settings=lk.settings, timeout_s=30,
                       credential=creds.create(f"durable-{i}", write_file=False).secret) for i in range(n)]
    finally:
        creds.redis.close()


def _check(load: Load, data_dir: Path) -> None:
    ran = executions(data_dir)
    assert load.errors == [], f"{len(load.errors)} syscalls failed, e.g. {load.errors[:3]}"
    assert len(load.submitted) >= 20
    assert len(set(load.submitted)) == len(load.submitted)
    assert set(load.answers) == set(load.submitted), "a submitted syscall was never answered"
    assert max(load.answers.values()) == 1
    assert {sid for sid in load.submitted if ran[sid] != 1} == set(), "a side effect ran twice, or never"


def _during_load(lk: LocalKernel, load: Load, fault: Any) -> None:
    n = len(load.submitted)
    deadline = time.monotonic() + 30
    while len(load.submitted) < n + 15 and time.monotonic() < deadline:
        time.sleep(0.05)
    fault()
    time.sleep(3.0)  # load goes on after the restart


@pytest.mark.integration
def test_a_sigkilled_aios_up_valkey_loses_no_accepted_syscall(tmp_path: Path) -> None:
    settings = base_settings(tmp_path, tool_modules="aios_bench.ledger", worker_concurrency=4)
    with LocalKernel(settings, resources=["tool"], persistent=True) as lk:
        sup, stop = Supervisor(lk), threading.Event()
        sup.start()
        watcher = threading.Thread(target=sup.run, args=(stop,), daemon=True)
        watcher.start()
        kernels = _agents(lk, 6)
        try:
            with Load(kernels) as load:
                _during_load(lk, load, lambda: lk.supervised()["redis"].kill())
        finally:
            stop.set()
            watcher.join(5)
            for k in kernels:
                k.close()
        assert sup.restarts()["redis"] == 1
    _check(load, tmp_path)


@pytest.mark.integration
def test_a_redis_broker_restarted_from_its_append_only_file_loses_no_accepted_syscall(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server binary")
    own = OwnRedis()  # never the shared Redis: it keeps nothing on disk, and others use it
    own.start()
    try:
        settings = base_settings(tmp_path, broker_url=own.url, broker_users="off",
                                 tool_modules="aios_bench.ledger", worker_concurrency=4)
        with LocalKernel(settings, resources=["tool"]) as lk:
            kernels = _agents(lk, 6)
            try:
                with Load(kernels) as load:
                    _during_load(lk, load, own.restart)
            finally:
                for k in kernels:
                    k.close()
    finally:
        own.stop()
    _check(load, tmp_path)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


@pytest.mark.integration
def test_a_rabbitmq_restart_under_load_loses_no_accepted_syscall(tmp_path: Path) -> None:
    need_server("RabbitMQ", _port_open("127.0.0.1", 5672))
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not on this machine: the test restarts the local RabbitMQ")
    vhost = f"aios-durable-{int(time.time())}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    state = OwnRedis()
    state.start()
    try:
        url = RABBIT_URL.rstrip("/") + "/" + vhost
        settings = base_settings(tmp_path, broker_url=url, redis_url=state.url, broker_users="off",
                                 tool_modules="aios_bench.ledger", worker_concurrency=4)
        with LocalKernel(settings, resources=["tool"]) as lk:
            kernels = _agents(lk, 6)
            try:
                def restart() -> None:
                    _rabbitmqctl("stop_app")
                    time.sleep(1.0)
                    _rabbitmqctl("start_app")

                with Load(kernels) as load:
                    _during_load(lk, load, restart)
            finally:
                for k in kernels:
                    k.close()
    finally:
        state.stop()
        try:
            _rabbitmqctl("delete_vhost", vhost)
        except subprocess.CalledProcessError:
            pass
    _check(load, tmp_path)


@pytest.mark.integration
def test_a_redis_restart_reaches_a_waiting_caller(tmp_path: Path) -> None:
    """A caller blocked in BLPOP while the server restarts gets its answer: the SDK's connection retries."""
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server binary")
    own = OwnRedis()
    own.start()
    try:
        settings = base_settings(tmp_path, broker_url=own.url, broker_users="off")
        with LocalKernel(settings, resources=()) as lk, _agents(lk, 1)[0] as k:
            pending = k.submit(k.tool_syscall("echo", {"text": "late"}))  # no tool worker yet: it waits
            got: list[Any] = []
            waiter = threading.Thread(target=lambda: got.append(k.wait(pending)), daemon=True)
            waiter.start()
            time.sleep(0.5)
            own.restart()
            try:
                lk.start_worker("tool")
            except redis.ConnectionError:  # the readiness ping's pooled connection died with the old server
                lk._wait_ready(["tool"])
            waiter.join(30)
            assert got == [{"text": "late"}]
            assert redis.Redis.from_url(own.url).exists(f"aios:reply:{k.agent_id}:{pending.id}") == 0
    finally:
        own.stop()
