"""What the fleet is doing: queue depths, live workers, syscalls in flight, counters, dead letters."""

from __future__ import annotations

import json
from typing import Any

import redis

from aios import keys
from aios.celery_app import make_app
from aios.priority import PRIORITY_STEPS, is_redis_url
from aios.settings import QUEUES, Settings, broker_to_redis_py


def queue_depths(app: Any, settings: Settings) -> dict[str, int | None]:
    """Messages waiting per kernel queue, all priority steps together."""
    out: dict[str, int | None] = {}
    if is_redis_url(settings.require_broker()):
        # kombu keeps one list per priority step: "<queue>" for step 0, "<queue>:<step>" for the others.
        r = redis.Redis.from_url(broker_to_redis_py(settings.require_broker()))
        try:
            for queue in QUEUES.values():
                pipe = r.pipeline(transaction=False)
                for step in PRIORITY_STEPS:
                    pipe.llen(f"{queue}:{step}" if step else queue)
                out[queue] = sum(pipe.execute())
        finally:
            r.close()
        return out
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        for queue in QUEUES.values():
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
    r = redis.Redis.from_url(settings.state_redis_url())
    try:
        done = {k.decode(): int(v) for k, v in r.hgetall(keys.STATS_DONE).items()}
        rejected = {k.decode(): int(v) for k, v in r.hgetall(keys.STATS_REJECTED).items()}
        deadletters = r.llen(keys.DEADLETTER)
    finally:
        r.close()
    return {"broker": settings.broker_url, "queues": depths, "workers": workers, "in_flight": in_flight,
            "answered": done, "rejected": rejected, "deadletters": deadletters}


def deadletters(settings: Settings, limit: int = 20) -> list[dict[str, Any]]:
    r = redis.Redis.from_url(settings.state_redis_url())
    try:
        return [json.loads(x) for x in r.lrange(keys.DEADLETTER, 0, limit - 1)]
    finally:
        r.close()
