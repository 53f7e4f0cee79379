"""Affinity across two LLM workers of one core, on the real small model: an agent's turns run on the worker whose
conversation cache holds its context (counted as affinity hits, its prompt mostly taken from the cache), and when
that worker is killed the agent's next turns are answered by the other one."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import pytest
import redis

from aios.ops.embedded import LocalKernel
from aios.ops.metrics import serve
from aios.ops.status import llm_workers
from aios.sdk import Kernel
from aios.settings import Settings
from aios.state import keys
from tests.conftest import BROKERS, authorized, make_broker_settings, run_aios

pytestmark = pytest.mark.integration

SYSTEM = "You are a helpful assistant. Answer in one short sentence."
QUESTIONS = ("Name a colour{}.", "Name another one.", "Which of the two is darker?", "Name a fruit of that colour.")
THEMES = ("", " of the sea", " of a forest", " of the sky", " of a desert")


def converse(settings: Settings, agent: str, turns: int, k: Kernel | None = None) -> list[str]:
    """``turns`` calls of ``agent`` (through ``k``, else a client of its own), each carrying the whole conversation
    so far."""
    if k is None:
        with authorized(settings, agent) as own:
            return converse(settings, agent, turns, own)
    conv: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}]
    replies = []
    for question in QUESTIONS[:turns]:
        conv.append({"role": "user", "content": question.format(THEMES[int(agent[-1]) % len(THEMES)])})
        out = k.call(k.llm_syscall(conv, max_tokens=8, temperature=0.0, timeout_s=60))
        replies.append(out["content"] or "")
        conv.append({"role": "assistant", "content": replies[-1]})
    return replies


def beats(settings: Settings) -> dict[int, dict[str, Any]]:
    """The LLM workers' last heartbeats by pid, once every counter is flushed (a heartbeat a second)."""
    time.sleep(2.5)
    return {int(w["pid"]): w for w in llm_workers(settings)["llm_workers"]}


def owner_pid(settings: Settings, agent: str) -> int:
    r = redis.Redis.from_url(settings.state_redis_url(), decode_responses=True)
    try:
        worker = r.get(keys.llm_owner("aios.llm", agent))
    finally:
        r.close()
    assert worker is not None, f"no LLM worker recorded as holding {agent}'s context"
    return next(int(w["pid"]) for w in llm_workers(settings)["llm_workers"] if w["id"] == worker)


@pytest.mark.parametrize("broker", BROKERS)
def test_an_agents_turns_follow_its_context_and_survive_its_workers_death(
        broker: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    settings = make_broker_settings(broker, tmp_path, request, llm_n_ctx=1024, llm_batch_size=4, llm_n_threads=1)
    agents, turns = 4, 4
    with LocalKernel(settings, resources=["llm"]) as lk:
        lk.add_workers("llm", 1)
        names = {lk._workers[n].pid: n for n in lk.workers_of("llm")}
        with ThreadPoolExecutor(agents) as pool:
            list(pool.map(lambda i: converse(lk.settings, f"agent{i}", turns), range(agents)))
        seen = beats(lk.settings)
        assert set(seen) == set(names), "both LLM workers beat, each with its own queue"
        hits = sum(w["affinity_hit"] for w in seen.values())
        misses = sum(w["affinity_miss"] for w in seen.values())
        new = sum(w["affinity_new"] for w in seen.values())
        assert new == agents and hits + misses == agents * (turns - 1)
        assert hits >= 0.75 * agents * (turns - 1), f"affinity hits {hits}, misses {misses}"
        # Every hit started from its agent's cached conversation.
        assert sum(w["cache_hits"] for w in seen.values()) >= hits
        counters = llm_workers(lk.settings)["llm_counters"]
        assert counters["affinity_hit"] == hits and counters["affinity_hit_rate"] == round(hits / (hits + misses), 3)
        shown = json.loads(run_aios(lk, "status", "--json").stdout)  # what an operator sees
        assert len(shown["llm_workers"]) == 2 and shown["llm_counters"]["affinity_hit"] == hits
        table = run_aios(lk, "status").stdout
        assert f"({hits} hits, {misses} misses" in " ".join(table.split())
        server, url = serve(lk.settings, port=0)
        try:
            text = urlopen(url, timeout=10).read().decode()
        finally:
            server.shutdown()
        assert f'aios_llm_total{{what="affinity_hit"}} {float(hits)}' in text

        # The worker holding agent0's context dies: its next turns are answered by the other one.
        victim = owner_pid(lk.settings, "agent0")
        with authorized(lk.settings, "agent0") as k0:  # its client first: on RabbitMQ making its user takes seconds
            lk.kill_worker(names[victim])
            started = time.monotonic()
            replies = converse(lk.settings, "agent0", turns, k0)
        assert len(replies) == turns and time.monotonic() - started < 60
        survivor = next(pid for pid in names if pid != victim)
        after = beats(lk.settings)[survivor]
        before = seen[survivor]
        assert after["affinity_new"] + after["affinity_miss"] > before["affinity_new"] + before["affinity_miss"]
        assert after["affinity_hit"] >= before["affinity_hit"] + turns - 1  # its later turns: hits there
        # Killed a moment ago, the victim still looked alive: the first turn was handed to its queue, and came back
        # (on Redis the survivor drains a gone worker's queue; RabbitMQ sends it back after OWN_QUEUE_TTL_MS).
        assert after["handovers"] > before["handovers"]
        if broker != "rabbitmq":
            assert after["reclaimed"] >= 1
        assert owner_pid(lk.settings, "agent0") == survivor
        r = redis.Redis.from_url(lk.settings.state_redis_url())
        try:
            assert not r.hgetall(keys.STATS_REJECTED), "no message refused (a sent-back one's x-death headers pass)"
        finally:
            r.close()
