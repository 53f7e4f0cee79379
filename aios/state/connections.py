"""The one place that opens connections to the kernel's Redis (state) and to a Redis broker.

Every connection rides out a restart of its Redis: a command that finds the connection gone (refused, reset,
timed out) is retried on a new one, backing off to once a second, for ``AIOS_RECONNECT_S``. The kernel's writes
are safe to repeat (the reply script stores an answer once; a claim is its delivery's own), so a retry after a
reply lost with the connection changes nothing but, at most, a counter.
"""

from __future__ import annotations

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from aios.settings import Settings, broker_to_redis_py
from aios.wire.priority import is_redis_url


def as_text(reply: bytes | str) -> str:
    """A reply of these clients as text. They are opened without ``decode_responses``, so replies are bytes;
    redis-py types them ``bytes | str`` (it cannot tell how a client was opened)."""
    return reply.decode() if isinstance(reply, bytes) else reply


RETRY_ON: list[type[Exception]] = [RedisConnectionError, RedisTimeoutError]


def _retries(reconnect_s: float) -> int:
    """Retries that back off 50 ms, 100 ms... to 1 s each and add up to about ``reconnect_s``."""
    return int(reconnect_s) + 4 if reconnect_s > 0 else 0


def retry(settings: Settings) -> Retry:
    return Retry(ExponentialBackoff(cap=1.0, base=0.05), _retries(settings.broker.reconnect_s))


def state_client(settings: Settings, *, socket_timeout_s: float | None = 10.0, retrying: bool = True) -> redis.Redis:
    """The kernel's state Redis (replies, idempotency, credentials, quotas...). ``socket_timeout_s=None`` for a
    connection that blocks on BLPOP as long as a syscall may take; ``retrying=False`` for one that fails at once
    (a probe of whether the server is up)."""
    return redis.Redis.from_url(settings.state_redis_url(), socket_timeout=socket_timeout_s,
                                socket_connect_timeout=10, health_check_interval=30,
                                retry=retry(settings) if retrying else Retry(ExponentialBackoff(), 0),
                                retry_on_error=RETRY_ON if retrying else [])


def async_state_client(settings: Settings, *, socket_timeout_s: float | None = None) -> aredis.Redis:
    return aredis.Redis.from_url(settings.state_redis_url(), socket_timeout=socket_timeout_s,
                                 socket_connect_timeout=10,
                                 retry=AsyncRetry(ExponentialBackoff(cap=1.0, base=0.05),
                                                  _retries(settings.broker.reconnect_s)),
                                 retry_on_error=RETRY_ON)


def publish_client(settings: Settings) -> redis.Redis:
    """The broker's Redis for an agent's publishes (:class:`aios.broker.publish.DirectRedis`): one quick retry on a
    fresh connection (a pooled one the server dropped), no more: :func:`~aios.broker.publish.publish_syscall`
    retries a broker that is away, through Celery, for ``AIOS_RECONNECT_S``."""
    return redis.Redis.from_url(broker_to_redis_py(settings.require_broker()), socket_timeout=10,
                                socket_connect_timeout=10, retry=Retry(ExponentialBackoff(cap=0.1, base=0.02), 1),
                                retry_on_error=RETRY_ON)


def async_publish_client(settings: Settings) -> aredis.Redis:
    """:func:`publish_client` for asyncio (:meth:`aios.sdk.AsyncKernel.submit`)."""
    return aredis.Redis.from_url(broker_to_redis_py(settings.require_broker()), socket_timeout=10,
                                 socket_connect_timeout=10, retry=AsyncRetry(ExponentialBackoff(cap=0.1, base=0.02), 1),
                                 retry_on_error=RETRY_ON)


def same_database(a: str, b: str) -> bool:
    """Whether two redis-py URLs name the same server and database (users and passwords aside)."""
    from redis.connection import parse_url

    def where(url: str) -> tuple[object, ...]:
        kw = parse_url(url)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        return kw.get("path"), kw.get("host"), kw.get("port", 6379), int(kw.get("db") or 0)

    try:
        return where(a) == where(b)
    except ValueError:
        return False


def shares_broker(settings: Settings) -> bool:
    """Whether the kernel's state lives in the Redis broker's own database (the embedded kernel, and a Redis broker
    with no ``AIOS_REDIS_URL`` of its own): then one script can answer a syscall and acknowledge its message."""
    broker = settings.require_broker()
    return is_redis_url(broker) and same_database(broker_to_redis_py(broker), settings.state_redis_url())


def broker_client(settings: Settings) -> redis.Redis:
    """The broker's own Redis (kombu's queue lists), for depth and aging. Only for a Redis broker."""
    broker = settings.require_broker()
    if not is_redis_url(broker):
        raise ValueError(f"the broker {broker} is not Redis")
    return redis.Redis.from_url(broker_to_redis_py(broker), socket_timeout=10, socket_connect_timeout=10,
                                retry=retry(settings), retry_on_error=RETRY_ON)
