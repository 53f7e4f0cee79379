"""What attacks share: the attacker's own connections, and turning "the broker said no" into an Outcome."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import kombu
import redis

from aios.policy.broker_users import refused_by_broker
from aios.settings import broker_to_redis_py
from aios.state import keys
from aios.wire.priority import is_redis_url
from aios_bench.attacks import Arena, Outcome

KOMBU: Any = kombu  # kombu ships no type hints

def attacker_state(arena: Arena) -> redis.Redis:
    """The attacker's own connection to the kernel's Redis: with its broker user where it has one (a Redis
    broker); on RabbitMQ, where agents hold no Redis address at all, the address learned somehow but no user."""
    from aios.policy.broker_users import without_user

    s = arena.attacker_settings
    if s.broker.redis_url or is_redis_url(s.require_broker()):
        return redis.Redis.from_url(s.state_redis_url(), socket_timeout=10)
    return redis.Redis.from_url(without_user(arena.operator.state_redis_url()), socket_timeout=10)


def attacker_broker(arena: Arena) -> redis.Redis | None:
    """The attacker's own connection to a Redis broker (``None`` on RabbitMQ)."""
    url = arena.attacker_settings.require_broker()
    return redis.Redis.from_url(broker_to_redis_py(url), socket_timeout=10) if is_redis_url(url) else None


def operator_state(arena: Arena) -> redis.Redis:
    """The kernel's own view, to check what an attack did (never used to attack)."""
    return redis.Redis.from_url(arena.operator.state_redis_url(), socket_timeout=10)


def attempt(what: str, fn: Callable[[], Any]) -> Outcome:
    """Run ``fn`` (one thing the attacker tries); refused when the broker or kernel says no."""
    try:
        got = fn()
    except (redis.RedisError, OSError) as exc:
        if refused_by_broker(exc):
            return Outcome(True, f"{what}: {exc}")
        return Outcome(False, f"{what}: unexpected {type(exc).__name__}: {exc}")
    return Outcome(False, f"{what} worked: {str(got)[:200]}")


def count(arena: Arena, field: str, key: str = keys.STATS_DONE) -> int:
    return int(operator_state(arena).hget(key, field) or 0)


def wait_for(pred: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def publish_as_attacker(arena: Arena, body: bytes, *, content_type: str = "application/json",
                        task: str = "aios.tool", queue: str = "aios.tool", message_id: str | None = None,
                        headers: dict[str, Any] | None = None, priority: int = 4) -> str:
    """Publish raw bytes on a kernel queue through the attacker's own broker connection (as its code can)."""
    import uuid

    from aios.broker.app import make_app

    message_id = message_id or uuid.uuid4().hex
    settings = arena.attacker_settings
    redis_broker = is_redis_url(settings.require_broker())
    app = make_app(settings, name="attacker")
    try:
        with app.connection_for_write() as conn:
            KOMBU.Producer(conn.default_channel).publish(
                body, exchange="" if redis_broker else queue, routing_key=queue, declare=[],
                content_type=content_type,
                content_encoding="binary" if content_type != "application/json" else "utf-8",
                headers={"task": task, "id": message_id, "lang": "py", "argsrepr": "", "kwargsrepr": "",
                         **(headers or {})},
                priority=priority,
            )
    finally:
        app.close()
    return message_id


EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
"""The protocol 2 envelope's third part as the SDK sends it: no callbacks, no chain."""


def envelope(payload: Any, embed: dict[str, Any] | None = None) -> bytes:
    """A Celery protocol 2 body ``[args, kwargs, embed]`` around one syscall."""
    import json

    return json.dumps([[payload], {}, embed if embed is not None else EMBED]).encode()


def more_answers(arena: Arena, syscall_id: str) -> int:
    """How many more answers to the attacker's ``syscall_id`` wait to be read (after the one it took)."""
    inbox = getattr(arena.attacker, "_inbox", None)
    if inbox is not None:  # RabbitMQ: its reply queue, as its SDK consumes it
        n = 0
        while inbox.get(syscall_id, 0.3 if n == 0 else 0.05) is not None:
            n += 1
        return n
    state = operator_state(arena)
    try:
        return int(state.llen(keys.reply("mallory", syscall_id)))
    finally:
        state.close()
