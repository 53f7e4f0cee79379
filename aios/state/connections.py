"""The one place that opens connections to the kernel's Redis (state) and to a Redis broker."""

from __future__ import annotations

import redis
import redis.asyncio as aredis

from aios.settings import Settings, broker_to_redis_py
from aios.wire.priority import is_redis_url


def as_text(reply: bytes | str) -> str:
    """A reply of these clients as text. They are opened without ``decode_responses``, so replies are bytes;
    redis-py types them ``bytes | str`` (it cannot tell how a client was opened)."""
    return reply.decode() if isinstance(reply, bytes) else reply


def state_client(settings: Settings, *, socket_timeout_s: float | None = 10.0) -> redis.Redis:
    """The kernel's state Redis (replies, idempotency, credentials, quotas...). ``socket_timeout_s=None`` for a
    connection that blocks on BLPOP as long as a syscall may take."""
    return redis.Redis.from_url(settings.state_redis_url(), socket_timeout=socket_timeout_s,
                                socket_connect_timeout=10, health_check_interval=30)


def async_state_client(settings: Settings, *, socket_timeout_s: float | None = None) -> aredis.Redis:
    return aredis.Redis.from_url(settings.state_redis_url(), socket_timeout=socket_timeout_s,
                                 socket_connect_timeout=10)


def broker_client(settings: Settings) -> redis.Redis:
    """The broker's own Redis (kombu's queue lists), for depth and aging. Only for a Redis broker."""
    broker = settings.require_broker()
    if not is_redis_url(broker):
        raise ValueError(f"the broker {broker} is not Redis")
    return redis.Redis.from_url(broker_to_redis_py(broker), socket_timeout=10, socket_connect_timeout=10)
