"""The one path by which a syscall enters a kernel queue: the SDK's submissions, a worker's requeues
(preemption, retries) and an operator's approvals all call :func:`publish_syscall`, so a syscall always carries
the same headers and the priority its resource's policy gives it, however it got there."""

from __future__ import annotations

import json
import logging
import re
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
                    note: str = "", from_agent: bool = False, direct: "DirectRedis | None" = None) -> None:
    """Publish the signed syscall ``payload`` (task id = syscall id) on ``route``, at once: no Celery ``eta`` or
    ``countdown`` (workers refuse them; the kernel's own delays are :mod:`aios.worker.delayed`).

    ``note``: why it is (re)published (one of :data:`NOTE_RE`), for logs and Flower, which show the readable,
    redacted :func:`label` instead of the (possibly private) payload. ``from_agent``: published by the agent's own broker user, which may neither declare nor
    bind anything: on Redis the message goes straight onto the queue's list (kombu's default exchange), on
    RabbitMQ to the kernel's exchange of that queue, with ``user_id`` set so that the broker vouches for the
    sender. ``direct``: an agent's first attempt on a Redis broker goes through it (:class:`DirectRedis`: the same
    message, without Celery's and kombu's publish machinery); a retry goes through Celery."""
    readable = label(payload, note)
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
            if attempt == 0 and direct is not None and from_agent and direct.usable(app):
                direct.send(app, payload, syscall_id, route, readable)
            elif attempt == 0:  # the app's pooled connection
                _send(app, payload, syscall_id, route, readable, extra)
            else:  # a fresh one: a pooled connection that failed once keeps failing after the broker is back
                with app.connection_for_write() as conn:
                    _send(app, payload, syscall_id, route, readable, {**extra, "connection": conn})
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


class _Sent:
    """What ``send_task`` returns here: the task's id, nothing more. Celery's own ``AsyncResult`` binds the app's
    result backend, made once per app and thread (about 0.6 ms: a gateway's 64 agents' clients on the
    thread pool's threads made hundreds), and the kernel never reads Celery results."""

    __slots__ = ("id", "ignored")

    def __init__(self, task_id: str, *args: Any, **kwargs: Any) -> None:
        self.id = task_id
        self.ignored = True


def _send(app: Celery, payload: dict[str, Any], syscall_id: str, route: Route, readable: str,
          extra: dict[str, Any]) -> None:
    app.send_task(
        route.task, args=[payload], task_id=syscall_id, queue=route.queue,
        priority=to_broker(route.priority, app.conf.broker_url),
        headers={HEADER_ENQUEUED: time.time(), HEADER_PRIORITY: route.priority},
        # Replies come through the kernel's reply lists (aios.state.replies), not Celery's result backend:
        # subscribing to it for every syscall would pile unread pub/sub messages up in Redis.
        ignore_result=True, result_cls=_Sent,
        # Not a child of the worker task that may be publishing it (a requeue): a syscall is its own task.
        add_to_parent=False,
        argsrepr=readable, kwargsrepr="{}", **extra,
    )


class DirectRedis:
    """An agent's publish on a Redis broker as one ``LPUSH`` of the message Celery would send, built here.

    Celery's ``send_task`` and kombu's producer (routing, a pooled producer, signals, the virtual channel) cost
    about 0.2 ms of CPU per syscall, more than the ``LPUSH`` itself: on a 2-core machine with a gateway in front of
    64 agents, a tenth of the gateway's CPU per request. The headers and properties are Celery's own
    (``app.amqp.as_task_v2``), the body kombu's JSON, base64-encoded as kombu's Redis transport stores it, on the
    list kombu would pick for the priority (``tests/unit/test_publish_direct.py`` compares the two messages).
    Not used (Celery is) where something else might hang on Celery's publish: ``task_send_sent_event``, receivers
    of its publish signals, kombu's ``global_keyprefix``, another protocol, serializer or compression."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    @staticmethod
    def usable(app: Celery) -> bool:
        from celery import signals

        conf = app.conf
        return (is_redis_url(conf.broker_url) and not conf.task_send_sent_event
                and int(conf.task_protocol or 2) == 2 and conf.task_serializer == "json"
                and not conf.task_compression and not (conf.broker_transport_options or {}).get("global_keyprefix")
                and not signals.before_task_publish.receivers and not signals.after_task_publish.receivers)

    @staticmethod
    def message(app: Celery, payload: dict[str, Any], syscall_id: str, route: Route, readable: str) -> tuple[str, str]:
        """(the Redis list, the message) that Celery and kombu would push for this publish."""
        import base64
        from bisect import bisect

        from kombu import serialization
        from kombu.utils import json as kombu_json
        from kombu.utils.uuid import uuid

        serialize: Any = serialization.dumps  # kombu ships no type hints
        to_json: Any = kombu_json.dumps

        root_id = parent_id = None
        parent = app.current_worker_task
        if parent:
            root_id = parent.request.root_id or parent.request.id
            parent_id = parent.request.id
        headers, properties, body, _ = app.amqp.as_task_v2(
            syscall_id, route.task, [payload], {}, reply_to=app.thread_oid, root_id=root_id, parent_id=parent_id,
            ignore_result=True, argsrepr=readable, kwargsrepr="{}")
        headers.update({HEADER_ENQUEUED: time.time(), HEADER_PRIORITY: route.priority})
        priority = to_broker(route.priority, app.conf.broker_url)
        content_type, content_encoding, data = serialize(body, serializer="json")
        raw = data if isinstance(data, bytes) else str(data).encode()
        properties.update(argsrepr=readable, kwargsrepr="{}", delivery_mode=2, delivery_info={}, priority=priority,
                          body_encoding="base64", delivery_tag=uuid())
        properties["delivery_info"].update(exchange="", routing_key=route.queue)
        message = {"body": base64.b64encode(raw).decode(), "content-encoding": content_encoding,
                   "content-type": content_type, "headers": headers, "properties": properties}
        options = app.conf.broker_transport_options or {}
        steps = options.get("priority_steps") or [0, 3, 6, 9]
        step = steps[bisect(steps, max(0, min(priority, 9))) - 1]
        lane = f"{route.queue}{options.get('sep', chr(6) + chr(22))}{step}" if step else route.queue
        return lane, str(to_json(message))

    def send(self, app: Celery, payload: dict[str, Any], syscall_id: str, route: Route, readable: str) -> None:
        lane, message = self.message(app, payload, syscall_id, route, readable)
        self.client.lpush(lane, message)

    def close(self) -> None:
        self.client.close()


def url_user(url: str) -> str | None:
    """The user named in a broker URL."""
    parts = urlsplit(url)
    return unquote(parts.username) if parts.username else None


# -- what Flower and the worker's logs show of a syscall ---------------------------------------------------------------

NOTE_RE = re.compile(r"approved|resumed|demoted|deferred|delayed|quota wait|handed over|retry \d{1,4}")
"""Why the kernel republished a syscall (:func:`publish_syscall`'s ``note``): a closed set, so that the gate can
tell the kernel's labels from anything else an agent writes into ``argsrepr``."""
_NAMES = {"text": "llm_chat", "json": "llm_chat_with_json_output", "tool_call": "llm_chat_with_tool_call_output"}
_SAFE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def _word(value: Any) -> str:
    """An id, name or op as it is, if it is one (letters, digits, ``_.-``); anything else shown as ``?``."""
    return value if isinstance(value, str) and _SAFE.fullmatch(value) else "?"


def _chars(value: Any) -> int:
    """How many characters of text ``value`` holds (its JSON if it is not a string)."""
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value)
    try:
        return len(json.dumps(value, separators=(",", ":")))
    except (TypeError, ValueError):
        return 0


def label(payload: Any, note: str = "") -> str:
    """The readable, redacted name of a syscall, as Flower and the workers' logs show it (Celery's ``argsrepr``):
    the SDK call, the agent and what it touches, but never a prompt, a tool's arguments, a memory value or a file's
    content, only their sizes: ``llm_chat agent=alice messages=2 prompt=[redacted 143 chars]``.

    A pure function of the payload (and ``note``), so the gate recomputes it (:func:`shown_label`): what Flower
    shows is what the message holds, whoever published it."""
    p: dict[str, Any] = payload if isinstance(payload, dict) else {}
    kind = p.get("kind")
    parts: list[str]
    if kind == "llm":
        messages: list[Any] = p["messages"] if isinstance(p.get("messages"), list) else []
        chars = sum(_chars(m.get("content")) for m in messages if isinstance(m, dict))
        parts = [_NAMES.get(p.get("output", "text"), "llm_chat"), f"agent={_word(p.get('agent_id'))}",
                 f"messages={len(messages)}", f"prompt=[redacted {chars} chars]"]
        if isinstance(p.get("tools"), list) and p["tools"]:
            parts.append(f"tools={len(p['tools'])}")
    elif kind == "tool":
        parts = [f"call_tool {_word(p.get('tool'))}", f"agent={_word(p.get('agent_id'))}",
                 f"arguments=[redacted {_chars(p.get('arguments'))} chars]"]
    elif kind in ("memory", "storage"):
        parts = [f"{kind}_{_word(p.get('op'))}", f"agent={_word(p.get('agent_id'))}"]
        if p.get("owner") is not None:
            parts.append(f"owner={_word(p.get('owner'))}")
        for name in ("key", "path", "value", "content", "query"):
            if p.get(name) not in (None, ""):
                parts.append(f"{name}=[redacted {_chars(p.get(name))} chars]")
    else:
        parts = ["unknown syscall"]
    if isinstance(p.get("priority"), int) and not isinstance(p.get("priority"), bool):
        parts.append(f"priority={p['priority']}")
    text = " ".join(parts)
    return f"{text} ({note})" if note else text


def shown_label(argsrepr: Any, payload: Any) -> str:
    """What a worker lets Flower and its logs show for a message: its ``argsrepr`` if that is what
    :func:`publish_syscall` writes for ``payload`` (with one of the kernel's notes), else the label of ``payload``
    itself. The gate puts it in the message (:mod:`aios.worker.gate`), so whatever a publisher wrote there (a
    prompt, another agent's name, a page of text), Flower shows the kernel's own, redacted name of the syscall."""
    base = label(payload)
    if isinstance(argsrepr, str) and argsrepr.startswith(base + " (") and argsrepr.endswith(")") \
            and NOTE_RE.fullmatch(argsrepr[len(base) + 2:-1]):
        return argsrepr
    return base
