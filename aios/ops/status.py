"""What the fleet is doing: queue depths, live workers, syscalls in flight, counters, dead letters."""

from __future__ import annotations

import json
import time
from typing import Any, cast

from aios.broker.app import make_app
from aios.broker.queues import redis_depth
from aios.policy.broker_users import without_user
from aios.settings import QUEUES, Settings, all_queues
from aios.state import keys
from aios.state.connections import as_text, broker_client, state_client
from aios.wire.priority import is_redis_url


def queue_depths(app: Any, settings: Settings) -> dict[str, int | None]:
    """Messages waiting per kernel queue, all priority steps together."""
    out: dict[str, int | None] = {}
    if is_redis_url(settings.require_broker()):
        r = broker_client(settings)
        try:
            for queue in all_queues(settings):
                out[queue] = redis_depth(r, queue)
        finally:
            r.close()
        return out
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        for queue in all_queues(settings):
            try:
                out[queue] = channel.queue_declare(queue=queue, passive=True).message_count
            except Exception:  # a queue nobody declared yet: no worker has ever served it
                out[queue] = None
                channel = conn.channel()
    return out


def collect(settings: Settings, timeout_s: float = 1.0) -> dict[str, Any]:
    app = make_app(settings, name="aios-status")
    try:
        inspect = app.control.inspect(timeout=timeout_s)
        active = inspect.active() or {}
        reserved = inspect.reserved() or {}
        workers = []
        in_flight = []
        for host in sorted(set(active) | set(reserved)):
            workers.append({"name": host, "active": len(active.get(host, [])), "reserved": len(reserved.get(host, []))})
            for task in active.get(host, []):
                syscall = (task.get("args") or [{}])[0]
                syscall = syscall if isinstance(syscall, dict) else {}
                in_flight.append({
                    "id": task.get("id"), "worker": host, "kind": syscall.get("kind", task.get("name")),
                    "agent_id": syscall.get("agent_id"), "priority": syscall.get("priority"),
                    "started": task.get("time_start"),
                })
        depths = queue_depths(app, settings)
    finally:
        app.close()
    r = state_client(settings, retrying=False)  # an operator asks: say at once that it is away
    try:
        done = {as_text(k): int(v) for k, v in r.hgetall(keys.STATS_DONE).items()}
        rejected = {as_text(k): int(v) for k, v in r.hgetall(keys.STATS_REJECTED).items()}
        deadletters = r.llen(keys.DEADLETTER)
    finally:
        r.close()
    return {"broker": without_user(settings.broker_url) if settings.broker_url else None, "queues": depths, "workers": workers, "in_flight": in_flight,
            "answered": done, "rejected": rejected, "deadletters": deadletters, "restarts": restarts(settings),
            **scheduling(settings), **llm_workers(settings)}


def llm_workers(settings: Settings) -> dict[str, Any]:
    """The LLM workers' heartbeats (per core queue: own queue, slots in use, their conversation caches' and
    affinity counters since each started; :mod:`aios.worker.affinity`) and the fleet-wide counters of them all."""
    r = state_client(settings, retrying=False)
    try:
        queues = [q for q in all_queues(settings) if q == QUEUES["llm"] or q.startswith(QUEUES["llm"] + ".")]
        pipe = r.pipeline(transaction=False)
        for queue in queues:
            pipe.hgetall(keys.llm_workers(queue))
        pipe.hgetall(keys.STATS_LLM)
        *beats, counters = pipe.execute()
    finally:
        r.close()
    now = time.time()
    workers = []
    for queue, raw in zip(queues, beats, strict=True):
        for worker, text in sorted(raw.items()):
            try:
                entry = json.loads(text)
            except ValueError:
                continue
            entry.update({"id": as_text(worker), "core_queue": queue,
                          "seen_s_ago": round(now - float(entry.get("seen", 0)), 1)})
            workers.append(entry)
    totals = {as_text(k): int(v) for k, v in counters.items()}
    return {"llm_workers": workers, "llm_counters": {**totals, **rates(totals)}}


def rates(c: dict[str, int]) -> dict[str, float]:
    """The ratios of the LLM counters: conversation cache hit rate, share of prompt tokens taken from the cache,
    affinity hit rate (of the syscalls whose agent's context some worker held)."""
    def ratio(a: int, b: int) -> float:
        return round(a / b, 3) if b else 0.0

    hits, misses = c.get("cache_hits", 0), c.get("cache_misses", 0)
    saved, prefilled = c.get("prefill_tokens_saved", 0), c.get("prefill_tokens", 0)
    a_hit, a_miss = c.get("affinity_hit", 0), c.get("affinity_miss", 0)
    return {"cache_hit_rate": ratio(hits, hits + misses), "prefill_saved_share": ratio(saved, saved + prefilled),
            "affinity_hit_rate": ratio(a_hit, a_hit + a_miss)}


def restarts(settings: Settings) -> dict[str, dict[str, Any]]:
    """Per process the ``aios up`` supervisor watches: its restarts, its last exit (``code 1``, ``SIGKILL``) and when
    (unix time); empty without a supervisor."""
    r = state_client(settings, retrying=False)  # an operator asks: say at once that it is away
    try:
        raw = r.hgetall(keys.SUPERVISOR_RESTARTS)
    finally:
        r.close()
    out: dict[str, dict[str, Any]] = {}
    for k, v in raw.items():
        name, _, fld = as_text(k).rpartition(":")
        out.setdefault(name, {"restarts": 0, "last_exit": None, "last_exit_at": None})
        value = as_text(v)
        if fld == "restarts":
            out[name]["restarts"] = int(value)
        elif fld == "last_exit":
            out[name]["last_exit"] = value or None
        elif fld == "last_exit_at":
            out[name]["last_exit_at"] = float(value) or None
    return dict(sorted(out.items()))


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def scheduling(settings: Settings) -> dict[str, Any]:
    """Per agent and resource: syscalls, attained service, waits; per resource: policy and wait percentiles;
    per quota scope: use of its current window, leases held, tokens used."""
    from aios.policy.governor import LEASE_TTL_S
    from aios.settings import policy_name

    now = time.time()
    r = state_client(settings, retrying=False)  # an operator asks: say at once that it is away
    try:
        agents: list[dict[str, Any]] = []
        resources: list[dict[str, Any]] = []
        for resource in QUEUES:
            stats: dict[str, dict[str, float]] = {}
            for k, v in r.hgetall(keys.agent_stats(resource)).items():
                agent, _, fld = as_text(k).rpartition(":")
                stats.setdefault(agent, {})[fld] = float(v)
            scored = cast("list[tuple[bytes, float]]", r.zrange(keys.attained(resource), 0, -1, withscores=True))
            attained = {as_text(m): score for m, score in scored}
            for agent in sorted(stats):
                st = stats[agent]
                n = int(st.get("n", 0))
                agents.append({
                    "resource": resource, "agent": agent, "syscalls": n,
                    "attained_s": attained.get(agent, 0.0),
                    "service_s": st.get("service_s", 0.0), "mean_wait_s": st.get("wait_s", 0.0) / n if n else 0.0,
                })
            waits = [float(x) for x in r.lrange(keys.waits(resource), 0, -1)]
            resources.append({"resource": resource, "policy": policy_name(settings, resource), "recent": len(waits),
                              "wait_p50_s": _percentile(waits, 0.5), "wait_p90_s": _percentile(waits, 0.9),
                              "wait_p99_s": _percentile(waits, 0.99)})
        quotas: list[dict[str, Any]] = []
        for scope in sorted(as_text(x) for x in r.smembers(keys.QUOTA_SCOPES)):
            pipe = r.pipeline(transaction=False)
            pipe.zcount(keys.quota(scope, "req"), now - settings.quota.window_s, "+inf")
            pipe.hget(keys.quota(scope, "tok"), "_sum")
            pipe.zcount(keys.quota(scope, "lease"), now, now + LEASE_TTL_S + 1)
            requests, tokens, leases = pipe.execute()
            spec = settings.quota.scopes.get(scope) or (settings.quota.scopes.get("agent:*") if scope.startswith("agent:") else None)
            quotas.append({"scope": scope, "requests": int(requests), "tokens": int(tokens or 0),
                           "running": int(leases), "limits": spec.model_dump(exclude_none=True) if spec else {}})
        used = {as_text(k): int(v) for k, v in r.hgetall(keys.TOKENS_USED).items()}
    finally:
        r.close()
    return {"agents": agents, "scheduling": resources, "quotas": quotas, "tokens_used": used,
            "quota_window_s": settings.quota.window_s}


def deadletters(settings: Settings, limit: int = 20) -> list[dict[str, Any]]:
    r = state_client(settings, retrying=False)  # an operator asks: say at once that it is away
    try:
        return [json.loads(x) for x in r.lrange(keys.DEADLETTER, 0, limit - 1)]
    finally:
        r.close()


def recent(settings: Settings, limit: int = 100, agent: str | None = None) -> list[dict[str, Any]]:
    """The latest answered syscalls, newest first (no payloads: who, which call, how it ended, its wait and
    service); ``agent``: only that agent's, among the latest kept."""
    r = state_client(settings)
    try:
        records = [json.loads(x) for x in r.lrange(keys.RECENT, 0, -1 if agent else limit - 1)]
    finally:
        r.close()
    return [x for x in records if agent is None or x.get("agent") == agent][:limit]
