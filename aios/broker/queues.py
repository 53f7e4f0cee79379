"""Kernel queues on the broker: their names, kombu's per-priority Redis lists, and how many messages wait.

On Redis, kombu emulates priorities with one list per priority step: ``<queue>`` for step 0 (served first) and
``<queue>:<step>`` for the others. That naming lives here and nowhere else.
"""

from __future__ import annotations

from typing import Any

import redis

from aios.settings import Settings
from aios.wire.priority import MAX_PRIORITY, PRIORITY_STEPS, is_redis_url


def step_list(queue: str, step: int) -> str:
    """kombu's Redis list of ``queue`` for broker priority step ``step`` (0 is served first)."""
    return f"{queue}:{step}" if step else queue


def step_lists(queue: str) -> list[str]:
    """Every kombu Redis list of ``queue``, in broker step order (the order kombu serves them)."""
    return [step_list(queue, step) for step in PRIORITY_STEPS]


def priority_lists(queue: str) -> list[str]:
    """kombu's Redis lists of ``queue`` indexed by *kernel* priority (kernel priority p is broker step 9 - p)."""
    return [step_list(queue, MAX_PRIORITY - p) for p in range(MAX_PRIORITY + 1)]


def redis_depth(client: redis.Redis | redis.client.Pipeline, queue: str) -> int:
    """Messages waiting on ``queue`` on a Redis broker, all steps together (one pipelined round trip)."""
    pipe = client.pipeline(transaction=False)
    for name in step_lists(queue):
        pipe.llen(name)
    return int(sum(pipe.execute()))


def queue_depth(app: Any, settings: Settings, queue: str, broker_redis: redis.Redis | None = None
                ) -> int | None:
    """Messages waiting on one kernel queue (``None``: a RabbitMQ queue nobody declared yet)."""
    broker = settings.require_broker()
    if is_redis_url(broker):
        if broker_redis is not None:
            return redis_depth(broker_redis, queue)
        from aios.state.connections import broker_client

        client = broker_client(settings)
        try:
            return redis_depth(client, queue)
        finally:
            client.close()
    with app.connection_for_read() as conn:
        try:
            return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)
        except Exception:  # a queue nobody declared yet
            return None
