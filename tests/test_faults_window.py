"""The windows where a worker's death used to lose a syscall or answer it late: a worker SIGKILLed as it takes a
message (a consumer that kills itself at that very moment), and one SIGKILLed while it runs syscalls, whose
syscalls used to wait out their lease."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue

from aios.broker import kombu_client
from aios.ops.embedded import LocalKernel
from aios.settings import broker_to_redis_py
from aios.state import keys
from aios_bench.chaos import OwnRedis
from tests.conftest import BROKERS, authorized, base_settings, make_broker_settings

pytestmark = pytest.mark.integration

REDIS_BROKERS = ["embedded", "redis"]

TAKER = textwrap.dedent("""
    import os, signal, sys
    from kombu import Connection, Consumer, Queue
    from kombu.transport.virtual import base
    if sys.argv[3] == "patched":
        from aios.broker import kombu_client
        kombu_client.install()

    def die(self, message, queue):  # the moment the message reaches the worker's Python: killed right there
        print("taken", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    base.Transport._deliver = die
    with Connection(sys.argv[1]) as conn:
        with Consumer(conn, queues=[Queue(sys.argv[2], routing_key=sys.argv[2])], callbacks=[lambda b, m: None]):
            print("ready", flush=True)
            conn.drain_events(timeout=20)
""")


@contextmanager
def broker_url(broker: str, tmp_path: Path) -> Iterator[str]:
    if broker == "redis":  # a redis-server of the test's own: others use the shared one's kombu keys
        if shutil.which("redis-server") is None:
            pytest.skip("no redis-server binary")
        own = OwnRedis()
        own.start()
        try:
            yield own.url
        finally:
            own.stop()
        return
    with LocalKernel(base_settings(tmp_path), resources=()) as lk:
        yield lk.settings.require_broker()


def _take_and_die(url: str, queue: str, patched: bool) -> None:
    """A consumer of ``queue`` that is SIGKILLed as the message it took reaches Python, before kombu's own record
    of it; a message is published once it waits."""
    proc = subprocess.Popen([sys.executable, "-c", TAKER, url, queue, "patched" if patched else "stock"],
                            stdout=subprocess.PIPE, text=True, env={**os.environ})
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)  # blocked waiting on the empty queue: the message arrives while it waits, as under load
    with Connection(url) as conn:
        Producer(conn).publish({"n": 1}, exchange=Exchange(queue, "direct"), routing_key=queue,
                               declare=[Queue(queue, Exchange(queue, "direct"), routing_key=queue)])
    assert proc.wait(30) == -9, "the consumer must have been killed holding the message"


def _unacked_bodies(url: str) -> list[bytes | str]:
    return [raw for raw in _client(url).hvals("unacked")]


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(broker_to_redis_py(url))


@pytest.mark.parametrize("broker", REDIS_BROKERS)
def test_a_worker_killed_as_it_takes_a_message_leaves_it_recorded_for_the_sweep(broker: str, tmp_path: Path) -> None:
    """kombu BRPOPs a message, then records it as unacknowledged in a second command: a worker killed between the
    two lost it (asserted on stock kombu, the control). The kernel's take script does both at once, so the message
    is in ``unacked`` when the worker dies, and the restore the lease sweep uses puts it back on its queue."""
    queue = f"aios-take-{os.getpid()}-{time.monotonic_ns()}"
    with broker_url(broker, tmp_path) as url:
        r = _client(url)
        r.delete("unacked", "unacked_index")
        _take_and_die(url, queue + "-stock", patched=False)
        assert r.llen(queue + "-stock") == 0 and not _unacked_bodies(url), "stock kombu: the message is lost"

        _take_and_die(url, queue, patched=True)
        assert r.llen(queue) == 0
        [raw] = _unacked_bodies(url)
        [tag] = r.hkeys("unacked")
        assert r.zscore("unacked_index", tag) is not None, "recorded with the time it was taken, for the sweep"

        kombu_client.install()
        from aios.worker.leases import LeaseSweeper

        with Connection(url) as conn:
            channel = conn.default_channel
            assert LeaseSweeper._restore(channel, channel.client, tag) == "?"  # not a kernel task: its kind unknown
            got: list[dict[str, int]] = []

            def take(body: dict[str, int], message: Any) -> None:
                got.append(body)
                message.ack()

            with Consumer(conn, queues=[Queue(queue, routing_key=queue)], callbacks=[take]):
                conn.drain_events(timeout=10)
        assert got == [{"n": 1}], "the restored message is delivered again"
        assert r.hlen("unacked") == 0
        r.delete(queue, queue + "-stock")


@pytest.mark.parametrize("broker", BROKERS)
def test_a_killed_workers_syscalls_start_again_well_within_a_lease(broker: str, tmp_path: Path,
                                                                  request: pytest.FixtureRequest) -> None:
    """The lease is 10 s (the default), yet a SIGKILLed worker's syscalls start again on the other worker within a
    sweep (AIOS_LEASE_RENEW_S, 2 s) and a few seconds of slack: their claims name a process of this host that is
    gone. On Redis the other worker's sweep puts them back; RabbitMQ redelivers them at once and the copies take the
    dead process's claims over instead of waiting for them to lapse."""
    sleep_s = 4.0
    settings = make_broker_settings(broker, tmp_path, request, worker_concurrency=2)
    with LocalKernel(settings, resources=["tool"]) as lk, authorized(lk.settings, "quick") as k:
        assert lk.settings.worker.lease_s == 10.0
        state = redis.Redis.from_url(lk.settings.state_redis_url())
        pendings = [k.submit(k.tool_syscall("sleep", {"seconds": sleep_s}, timeout_s=60)) for _ in range(2)]
        deadline = time.monotonic() + 20
        while not all(state.exists(keys.claim(p.id)) for p in pendings):  # both run on the one worker
            assert time.monotonic() < deadline, "the syscalls never started"
            time.sleep(0.05)
        lk.add_workers("tool")  # idle until the dead worker's syscalls come back
        lk.kill_worker("tool")
        killed = time.time()
        for p in pendings:
            response = k.wait_response(p)
            assert response.result == {"slept_s": sleep_s}
            assert response.timing.started_at - killed < lk.settings.worker.lease_renew_s + 3.0, \
                "started again one lease after the kill: the dead holder was not recognised"
        assert int(state.hget(keys.STATS_DONE, "tool:ok") or 0) == 2  # each completed once


@pytest.mark.parametrize("broker", REDIS_BROKERS)
def test_an_answer_acknowledges_its_message_in_the_same_script(broker: str, tmp_path: Path,
                                                               request: pytest.FixtureRequest) -> None:
    """Where the broker's lists share the state's Redis database, the reply script acknowledges the message with its
    answer: kombu's own acknowledgement after the task (a MULTI/EXEC of its own, one round trip more per syscall)
    is never sent, and nothing is left in ``unacked`` for the sweep or the visibility timeout to give back."""
    n = 20
    settings = make_broker_settings(broker, tmp_path, request, worker_concurrency=1)
    with LocalKernel(settings, resources=["tool"]) as lk, authorized(lk.settings, "acker") as k:
        state = redis.Redis.from_url(lk.settings.state_redis_url())
        k.call_tool("noop")

        def transactions() -> int:
            stats = state.info("commandstats")
            return int(stats.get("cmdstat_exec", {}).get("calls", 0))

        before = transactions()
        for pending in [k.submit(k.tool_syscall("noop")) for _ in range(n)]:
            k.wait(pending)
        if broker == "embedded":  # the test's own server: every transaction on it is this kernel's
            assert transactions() - before < n // 2, "kombu acknowledged each message with a transaction of its own"
        deadline = time.monotonic() + 5
        while state.hlen("unacked") or state.zcard("unacked_index"):
            assert time.monotonic() < deadline, "answered messages are still recorded as unacknowledged"
            time.sleep(0.05)
        assert int(state.hget(keys.STATS_DONE, "tool:ok") or 0) == n + 1


@pytest.mark.parametrize("broker", REDIS_BROKERS)
def test_a_consumer_that_never_acknowledges_leaves_no_unacked_record(broker: str, tmp_path: Path) -> None:
    """Celery's control replies (``reply.celery.pidbox``, what ``celery inspect`` and a worker's mingle read) are
    consumed without acknowledgements: the take script must not record them as unacknowledged, or they would stay in
    ``unacked`` until the visibility timeout put them back on their queue."""
    kombu_client.install()
    queue = f"aios-noack-{os.getpid()}-{time.monotonic_ns()}"
    with broker_url(broker, tmp_path) as url:
        r = _client(url)
        r.delete("unacked", "unacked_index")
        with Connection(url) as conn:
            Producer(conn).publish({"n": 1}, exchange=Exchange(queue, "direct"), routing_key=queue,
                                   declare=[Queue(queue, Exchange(queue, "direct"), routing_key=queue)])
            got: list[Any] = []
            with Consumer(conn, queues=[Queue(queue, routing_key=queue)], callbacks=[lambda b, m: got.append(b)],
                          no_ack=True):
                conn.drain_events(timeout=10)
        assert got == [{"n": 1}]
        assert r.hlen("unacked") == 0 and r.zcard("unacked_index") == 0
        r.delete(queue)


@pytest.mark.parametrize("broker", REDIS_BROKERS)
def test_a_claim_read_ahead_for_a_message_refused_on_the_way_is_given_up(broker: str, tmp_path: Path,
                                                                          request: pytest.FixtureRequest) -> None:
    """A worker sends a message's claim reading as the message arrives (``Runtime.preload``), before its syscall is
    decoded. A message refused after that (here: the envelope is Celery's, the syscall in it is not valid) must not
    leave the claim behind: sent under a victim's syscall id, it would hold the victim's own syscall off for a
    lease. The victim's syscall, published next under that id, runs at once."""
    from tests.conftest import publish_raw

    settings = make_broker_settings(broker, tmp_path, request, worker_concurrency=1)
    with LocalKernel(settings, resources=["tool"]) as lk, authorized(lk.settings, "victim") as k:
        state = redis.Redis.from_url(lk.settings.state_redis_url())
        k.call_tool("noop")  # the worker's scripts are loaded: its read-ahead of the next claim runs
        victim = k.tool_syscall("noop")
        bogus = {"id": victim.id, "agent_id": "victim", "kind": "tool"}  # no tool, no signature
        body = json.dumps([[bogus], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
        publish_raw(lk.settings, body.encode(), content_type="application/json", message_id=victim.id)
        deadline = time.monotonic() + 20
        while not state.hlen(keys.STATS_REJECTED):
            assert time.monotonic() < deadline, "the bogus message was never refused"
            time.sleep(0.02)
        assert not state.exists(keys.claim(victim.id)), "the refused message left its claim behind"
        started = time.monotonic()
        assert k.wait(k.submit(victim)) is None
        assert time.monotonic() - started < 2.0
