"""The one path by which a syscall enters a kernel queue: the SDK's submissions, a worker's requeues
(preemption, retries) and an operator's approvals all call :func:`publish_syscall`, so a syscall always carries
the same headers and the priority its resource's policy gives it, however it got there."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from amqp.exceptions import AMQPError
from celery import Celery
from kombu.exceptions import OperationalError

from aios.state.keys import HEADER_ENQUEUED, HEADER_PRIORITY
from aios.wire.priority import is_redis_url, to_broker

log = logging.getLogger("aios.publish")

UNREACHABLE = (OperationalError, redis.ConnectionError, redis.TimeoutError, AMQPError, ConnectionError, OSError)
"""What a publish raises when the broker is away (or refuses, see :func:`refused_by_broker`)."""
REFUSALS = ("NOPERM", "No permissions", "WRONGPASS", "NOAUTH", "invalid username-password", "ACCESS_REFUSED",
            "ACCESS-REFUSED", "PRECONDITION_FAILED", "PRECONDITION-FAILED", "NOT_ALLOWED", "is deleted",
            "client already authenticated")
"""How Redis/Valkey and RabbitMQ say no to a broker user (a wrong password, a deleted user, a forbidden key or
command, a forged ``user_id``)."""
REFUSAL_RETRY_S = 5.0
"""How long a publish the broker refuses is retried: a restarted embedded Valkey makes the agents' users again
within a second of starting; a revoked agent should hear so soon."""


def refused_by_broker(exc: BaseException) -> bool:
    """Whether ``exc`` is the broker refusing this user, rather than the broker being away."""
    if isinstance(exc, (redis.exceptions.NoPermissionError, redis.exceptions.AuthenticationError)):
        return True
    text = str(exc).lower()
    return any(mark.lower() in text for mark in REFUSALS)


@dataclass(frozen=True)
class Route:
    """Where a syscall goes: its resource, its queue, and the kernel priority its policy gives it now."""

    resource: str
    queue: str
    priority: int

    @property
    def task(self) -> str:
        return f"aios.{self.resource}"


def publish_syscall(app: Celery, payload: dict[str, Any], *, syscall_id: str, kind: str, agent_id: str, route: Route,
                    note: str = "", from_agent: bool = False) -> None:
    """Publish the signed syscall ``payload`` (task id = syscall id) on ``route``, at once: no Celery ``eta`` or
    ``countdown`` (workers refuse them; the kernel's own delays are :mod:`aios.worker.delayed`).

    ``note``: why it is (re)published, for logs and Flower, which show a short label instead of the (possibly
    private) payload. ``from_agent``: published by the agent's own broker user, which may neither declare nor
    bind anything: on Redis the message goes straight onto the queue's list (kombu's default exchange), on
    RabbitMQ to the kernel's exchange of that queue, with ``user_id`` set so that the broker vouches for the
    sender."""
    label = f"<{kind} syscall of {agent_id}{', ' + note if note else ''}>"
    extra: dict[str, Any] = {}
    if from_agent:
        redis_broker = is_redis_url(app.conf.broker_url)
        extra = {"declare": [], "exchange": "" if redis_broker else route.queue, "routing_key": route.queue}
        user = url_user(app.conf.broker_url)
        if not redis_broker and user is not None and user.startswith("agent-"):
            extra["user_id"] = user
    # kombu revives a Redis connection only once per publish, so a restart that takes longer fails it: the retries
    # through a broker restart are here, for AIOS_RECONNECT_S (make_app puts it on the app). A retry after a publish
    # whose confirmation was lost may queue the syscall twice; its claim and stored answer run it once.
    started = time.monotonic()
    pause = 0.05
    attempt = 0
    while True:
        try:
            if attempt == 0:  # the app's pooled connection
                _send(app, payload, syscall_id, route, label, extra)
            else:  # a fresh one: a pooled connection that failed once keeps failing after the broker is back
                with app.connection_for_write() as conn:
                    _send(app, payload, syscall_id, route, label, {**extra, "connection": conn})
            return
        except UNREACHABLE as exc:
            waited = time.monotonic() - started
            limit = float(getattr(app, "aios_reconnect_s", 0.0))
            if refused_by_broker(exc):
                limit = min(limit, REFUSAL_RETRY_S)
            if waited + pause > limit:
                raise
            if waited == 0 or pause >= 1.0:
                log.warning("publishing syscall %s failed (%s); retrying for up to %.0f s", syscall_id, exc, limit)
            time.sleep(pause)
            pause = min(1.0, pause * 2)
            attempt += 1


def _send(app: Celery, payload: dict[str, Any], syscall_id: str, route: Route, label: str,
          extra: dict[str, Any]) -> None:
    app.send_task(
        route.task, args=[payload], task_id=syscall_id, queue=route.queue,
        priority=to_broker(route.priority, app.conf.broker_url),
        headers={HEADER_ENQUEUED: time.time(), HEADER_PRIORITY: route.priority},
        # Replies come through the kernel's reply lists (aios.state.replies), not Celery's result backend:
        # subscribing to it for every syscall would pile unread pub/sub messages up in Redis.
        ignore_result=True,
        argsrepr=label, kwargsrepr="{}", **extra,
    )


def url_user(url: str) -> str | None:
    """The user named in a broker URL."""
    parts = urlsplit(url)
    return unquote(parts.username) if parts.username else None
