"""The one path by which a syscall enters a kernel queue: the SDK's submissions, a worker's requeues
(preemption, retries) and an operator's approvals all call :func:`publish_syscall`, so a syscall always carries
the same headers and the priority its resource's policy gives it, however it got there."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from celery import Celery

from aios.state.keys import HEADER_ENQUEUED, HEADER_PRIORITY
from aios.wire.priority import is_redis_url, to_broker


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
