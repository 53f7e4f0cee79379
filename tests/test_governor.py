"""Quotas, leases, attained service and aging on a real Redis (the embedded one), and through a real kernel."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from aios.ops.embedded import LocalKernel
from aios.policy.governor import Ager, Governor, priority_lists
from aios.settings import Settings
from aios.state import keys
from aios.wire.errors import KernelBusy, QuotaExceeded
from aios.wire.syscalls import ChatMessage, LLMSyscall, Response, Status, Timing, ToolSyscall
from tests.conftest import authorized, base_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def holder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKernel]:
    lk = LocalKernel(base_settings(tmp_path_factory.mktemp("gov")), resources=())
    lk.start()
    yield lk
    lk.stop()


@pytest.fixture
def r(holder: LocalKernel) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(holder.settings.state_redis_url())
    client.flushdb()
    yield client
    client.close()


def gov(holder: LocalKernel, r: redis.Redis, resource: str = "llm", **settings: Any) -> Governor:
    return Governor(Settings(**{**holder.settings.model_dump(), **settings}), r, resource)


def llm(agent: str = "a", max_tokens: int = 10, text: str = "x" * 40, timeout_s: float = 30) -> LLMSyscall:
    return LLMSyscall(agent_id=agent, messages=(ChatMessage(role="user", content=text),), max_tokens=max_tokens,
                      timeout_s=timeout_s)


def ok(syscall: Any, usage: dict[str, int] | None = None) -> Response:
    now = time.time()
    return Response(id=syscall.id, status=Status.OK, result={"usage": usage} if usage else {},
                    timing=Timing(created_at=now, started_at=now, finished_at=now))


def test_rpm_over_a_sliding_window_fails_or_waits_naming_the_limit(holder: LocalKernel, r: redis.Redis) -> None:
    quotas = {"llm": {"rpm": 3}}
    g = gov(holder, r, quotas=quotas, quota_window_s=1.0, quota_mode="fail")
    for _ in range(3):
        g.release(g.admit(llm()), None)
    with pytest.raises(QuotaExceeded, match=r"quota 'llm': limit of 3 requests per 1 s reached"):
        g.admit(llm())
    waiting = gov(holder, r, quotas=quotas, quota_window_s=1.0, quota_mode="wait")
    adm = waiting.admit(llm())  # waits until the oldest of the three leaves the window
    assert adm is not None and adm.waited_s > 0
    assert r.zscore(keys.quota("llm", "req"), adm.syscall_id) is not None
    assert r.zcard(keys.quota("llm", "req")) <= 3  # never more than the limit in the window


def test_a_request_counts_in_the_window_from_when_it_ended(holder: LocalKernel, r: redis.Redis) -> None:
    """A provider counts a request when it arrives, after the kernel admitted it: the kernel keeps it in its window
    from its end, so that it never frees the slot before the provider does (``aios bench ratelimit``)."""
    g = gov(holder, r, quotas={"llm": {"rpm": 1, "tpm": 1000}}, quota_window_s=1.0, quota_mode="fail")
    first = llm()
    adm = g.admit(first)
    admitted_at = time.time()
    time.sleep(0.5)  # the call takes half a window
    g.release(adm, ok(first, {"prompt_tokens": 10, "completion_tokens": 10}))
    ended_at = time.time()
    assert r.zscore(keys.quota("llm", "req"), first.id) == pytest.approx(ended_at, abs=0.05)
    time.sleep(max(0.0, admitted_at + 1.1 - time.time()))  # a window after its admission, not after its end
    with pytest.raises(QuotaExceeded, match="limit of 1 requests per 1 s"):
        g.admit(llm())
    time.sleep(max(0.0, ended_at + 1.05 - time.time()))
    assert g.admit(llm()) is not None
    assert r.hget(keys.quota("llm", "tok"), first.id) is None  # its corrected tokens left with it


def test_a_redelivered_syscall_is_not_counted_twice(holder: LocalKernel, r: redis.Redis) -> None:
    g = gov(holder, r, quotas={"llm": {"rpm": 1}}, quota_mode="fail")
    s = llm()
    g.admit(s)
    g.admit(s)  # the same id again (a worker died and the broker redelivered it): admitted, not counted
    with pytest.raises(QuotaExceeded):
        g.admit(llm())


def test_tokens_are_reserved_then_corrected_to_the_real_usage(holder: LocalKernel, r: redis.Redis) -> None:
    g = gov(holder, r, quotas={"llm": {"tpm": 100}}, quota_mode="fail")
    first = llm(max_tokens=50)  # 40 chars: 10 + 4 overhead + 50 = 64 reserved
    adm = g.admit(first)
    assert adm is not None and adm.tokens == 64
    with pytest.raises(QuotaExceeded, match=r"limit of 100 tokens per 60 s reached"):
        g.admit(llm(max_tokens=50))
    g.release(adm, ok(first, {"prompt_tokens": 12, "completion_tokens": 8}))
    assert int(r.hget(keys.quota("llm", "tok"), "_sum")) == 20
    g.admit(llm(max_tokens=50))  # fits now that the first used only 20
    with pytest.raises(QuotaExceeded, match="needs up to 514 tokens, more than the limit"):
        g.admit(llm(max_tokens=500))


def test_token_budget_per_agent_is_spent_and_says_how_to_reset(holder: LocalKernel, r: redis.Redis) -> None:
    g = gov(holder, r, quotas={"agent:*": {"token_budget": 100}}, quota_mode="wait")
    s = llm("spender", max_tokens=20)
    g.release(g.admit(s), ok(s, {"prompt_tokens": 30, "completion_tokens": 40}))
    assert int(r.hget(keys.TOKENS_USED, "spender")) == 70
    with pytest.raises(QuotaExceeded, match=r"quota 'agent:spender' \(from 'agent:\*'\): a budget of 100 tokens "
                                            r"is spent.*aios quota reset spender"):
        g.admit(llm("spender", max_tokens=20))
    g.admit(llm("other", max_tokens=20))  # every agent has its own budget


def test_concurrency_leases_hold_across_workers_and_expire_when_one_dies(holder: LocalKernel, r: redis.Redis,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import aios.policy.governor as governor

    monkeypatch.setattr(governor, "LEASE_TTL_S", 1.0)
    quotas = {"tool:python": {"concurrency": 1}}
    w1, w2 = (gov(holder, r, "tool", quotas=quotas, quota_mode="fail") for _ in range(2))
    a = ToolSyscall(agent_id="a", tool="python")
    held = w1.admit(a)
    time.sleep(1.5)  # past the TTL: w1 renews the lease it holds, so it stays taken
    with pytest.raises(QuotaExceeded, match=r"quota 'tool:python': limit of 1 at once"):
        w2.admit(ToolSyscall(agent_id="b", tool="python"))
    w1.release(held, None)
    w2.release(w2.admit(ToolSyscall(agent_id="b", tool="python")), None)
    # A worker that dies holding a lease stops renewing it: the slot comes back after the TTL.
    w1.admit(ToolSyscall(agent_id="a", tool="python"))
    w1._held.clear()  # what kill -9 does to its renewals
    with pytest.raises(QuotaExceeded):
        w2.admit(ToolSyscall(agent_id="b", tool="python"))
    time.sleep(1.3)
    assert w2.admit(ToolSyscall(agent_id="b", tool="python")) is not None


def test_the_ager_raises_long_waiting_messages_one_step_per_aging_period(holder: LocalKernel, r: redis.Redis) -> None:
    lists = priority_lists("aios.tool")
    now = time.time()
    for name, enqueued, prio in (("old", now - 25, 2), ("young", now - 1, 2), ("ancient", now - 500, 0)):
        headers = {keys.HEADER_ENQUEUED: enqueued, keys.HEADER_PRIORITY: prio}
        r.lpush(lists[prio], json.dumps({"headers": headers, "n": name}))
    r.lpush(lists[1], "not a kombu message")  # left where it is, and it stops nothing else
    moved = Ager(r, "aios.tool", aging_s=10).run_once(now)
    assert moved == 2
    where = {json.loads(m)["n"]: p for p, lst in enumerate(lists) for m in r.lrange(lst, 0, -1) if m.startswith(b"{")}
    assert where == {"old": 4, "young": 2, "ancient": 9}


def test_through_the_kernel_quotas_fail_with_the_limit_and_status_shows_agents(tmp_path: Path) -> None:
    settings = base_settings(tmp_path, quotas={"agent:*": {"rpm": 2}}, quota_mode="fail")
    with LocalKernel(settings, resources=["tool"]) as lk, authorized(lk.settings, "limited") as k:
        k.call_tool("noop")
        k.call_tool("noop")
        with pytest.raises(QuotaExceeded, match=r"quota 'agent:limited' \(from 'agent:\*'\): limit of 2 requests"):
            k.call_tool("noop")
        with authorized(lk.settings, "free") as other:
            other.call_tool("noop")  # each agent has its own window
        from aios.ops.status import scheduling

        sched = scheduling(lk.settings)
        agents = {a["agent"]: a for a in sched["agents"] if a["resource"] == "tool"}
        assert agents["limited"]["syscalls"] == 3 and agents["free"]["syscalls"] == 1
        assert agents["limited"]["attained_s"] > 0
        assert any(q["scope"] == "agent:limited" and q["requests"] == 2 for q in sched["quotas"])
        from urllib.request import urlopen

        from aios.ops.metrics import serve

        server, url = serve(lk.settings, port=0)
        try:
            text = urlopen(url, timeout=10).read().decode()
        finally:
            server.shutdown()
        assert 'aios_agent_syscalls_total{agent="limited",resource="tool"} 3.0' in text
        assert 'aios_quota_window_use{scope="agent:limited",what="requests"} 2.0' in text
        assert 'aios_quota_limit{scope="agent:limited",what="rpm"} 2.0' in text
        assert 'aios_queue_depth{queue="aios.tool"} 0.0' in text
        assert 'aios_syscalls_answered_total{kind="tool",status="ok"} 3.0' in text
        assert 'aios_syscalls_answered_total{kind="tool",status="error"} 1.0' in text


def test_through_the_kernel_a_long_quota_wait_is_put_off_the_worker_and_runs_once(tmp_path: Path) -> None:
    """A wait longer than a worker thread may hold it: the syscall goes to the kernel's Redis until its turn, the
    worker's timer puts it back on the queue, and it runs once; meanwhile the worker's only thread serves others."""
    settings = base_settings(tmp_path, quotas={"agent:limited": {"rpm": 1}}, quota_window_s=4, worker_concurrency=1)
    with LocalKernel(settings, resources=["tool"]) as lk, authorized(lk.settings, "limited") as k, \
            authorized(lk.settings, "free") as other:
        state = redis.Redis.from_url(lk.settings.state_redis_url())
        k.call_tool("noop")
        started = time.time()
        pending = k.submit(k.tool_syscall("noop"))
        deadline = time.time() + 10
        while int(state.hget(keys.STATS_DONE, "tool:throttled") or 0) < 1:
            assert time.time() < deadline, "the syscall was never put off"
            time.sleep(0.05)
        assert other.call_tool("echo", text="meanwhile") == {"text": "meanwhile"}  # the one thread is free
        response = k.wait_response(pending)
        assert response.status.value == "ok" and time.time() - started >= 3.0
        assert response.timing.queue_wait_s >= 3.0  # the whole wait is queue wait
        assert int(state.hget(keys.STATS_DONE, "tool:ok") or 0) == 3


def test_fair_state_measures_excess_over_the_least_served_active_agent(holder: LocalKernel, r: redis.Redis) -> None:
    from aios.policy.governor import FairState

    fair, now = FairState(r), 1000.0
    assert fair.excess("tool", "a", now, 60) == 0.0  # alone: it is the least served
    r.zadd(keys.attained("tool"), {"a": 5.0})
    assert fair.excess("tool", "b", now, 60) == 0.0  # a newcomer starts level with the least served active agent
    assert r.zscore(keys.attained("tool"), "b") == 5.0
    r.zincrby(keys.attained("tool"), 2.5, "a")
    assert fair.excess("tool", "a", now + 1, 60) == 2.5 and fair.excess("tool", "b", now + 1, 60) == 0.0
    r.zadd(keys.attained("tool"), {"c": 100.0})
    r.zadd(keys.active("tool"), {"c": now - 500})  # c was served long ago and paused: it starts level again
    assert fair.excess("tool", "c", now + 2, 60) == 0.0 and r.zscore(keys.attained("tool"), "c") == 5.0


def test_fair_policy_enters_more_served_agents_lower(tmp_path: Path) -> None:
    settings = base_settings(tmp_path, policies={"tool": "fair"}, fair_quantum_s=0.01)
    with LocalKernel(settings, resources=["tool"]) as lk:
        with authorized(lk.settings, "heavy") as heavy, authorized(lk.settings, "light") as light:
            light.call_tool("noop")
            for _ in range(3):
                heavy.call_tool("sleep", seconds=0.05)
            # The policy is the kernel's: placed on the worker's side, from the kernel's own record of service.
            from aios.policy.placement import Placement
            from aios.state.connections import state_client

            state = state_client(lk.settings)
            placement = Placement(lk.settings, lambda: state)
            h = placement.priority("tool", heavy.tool_syscall("noop"))
            l_ = placement.priority("tool", light.tool_syscall("noop"))
            assert l_ == 9 and h < l_
            # The SDK publishes at the top (it reads no kernel state); the worker demotes the heavy agent's syscall
            # to the level the policy gives it before running it.
            before = int(state.hget("aios:stats:done", "tool:demoted") or 0)
            heavy.call_tool("noop")
            assert int(state.hget("aios:stats:done", "tool:demoted") or 0) == before + 1
            state.close()


def test_aging_lets_a_low_priority_syscall_through_a_flood(tmp_path: Path) -> None:
    settings = base_settings(tmp_path, aging_s=0.3, worker_concurrency=1)
    with LocalKernel(settings, resources=["tool"]) as lk:
        with authorized(lk.settings, "flood", priority=9) as flood, authorized(lk.settings, "low", priority=0) as low:
            stop = threading.Event()
            done: list[str] = []

            def keep_flooding() -> None:
                pending: list[Any] = []
                while not stop.is_set():
                    while len(pending) < 6:
                        pending.append(flood.submit(flood.tool_syscall("sleep", {"seconds": 0.05})))
                    flood.wait(pending.pop(0))
                    done.append("flood")
                for p in pending:
                    flood.wait(p)

            t = threading.Thread(target=keep_flooding)
            t.start()
            try:
                time.sleep(0.5)  # the flood is queued ahead of everything
                t0 = time.monotonic()
                low.call_tool("noop", timeout_s=30)
                waited = time.monotonic() - t0
                done.append("low")
                served_before = done.count("flood")
                time.sleep(0.5)
                flooding_at_the_end = done.count("flood") > served_before  # the flood never drained meanwhile
            finally:
                stop.set()
                t.join(30)
            assert flooding_at_the_end and "low" in done
            # 9 aging steps of 0.3 s lift priority 0 to the flood's 9; slack for the queue ahead and a busy machine
            assert served_before >= 6 and waited < 9 * 0.3 + 5


def test_admission_control_refuses_past_the_queue_depth(tmp_path: Path) -> None:
    settings = base_settings(tmp_path, max_queue_depth=2, admission="fail")
    with LocalKernel(settings, resources=["storage"]) as lk:  # no tool worker: tool syscalls stay queued
        with authorized(lk.settings, "eager") as k:
            for _ in range(2):
                k.submit(k.tool_syscall("noop"))
                time.sleep(0.15)  # past the client's depth cache
            with pytest.raises(KernelBusy, match=r"2 syscalls wait on queue aios.tool, the limit is 2"):
                k.submit(k.tool_syscall("noop"))
            k.memory_put("still", "served")  # other queues are not affected
