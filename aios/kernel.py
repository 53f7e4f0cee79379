"""The worker side of a syscall: gatekeeping, dispatch to a resource service, replies, dead letters.

A message reaches a service only after two gates:

1. :class:`KernelConsumer` looks at the raw broker message before Celery does anything with it: content type
   (JSON only; pickle is never even decoded), size, envelope shape and task name.
2. :meth:`Runtime.execute` decodes the syscall against its schema, checks its kind belongs on this worker and
   that its deadline has not passed, and answers a syscall it has already answered from the stored response.

Whatever is refused gets an error reply (when the message names a syscall id), a count in
``aios:stats:rejected`` and a copy in the dead-letter list. The worker goes on serving.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Callable, Protocol

import redis
from celery import Celery
from celery.worker.consumer import Consumer

from aios import keys
from aios.celery_app import make_app
from aios.errors import AIOSError, AuthError, DeadlineExceeded, InvalidSyscall, PayloadTooLarge
from aios.approvals import APPROVED, PENDING, Approvals, irreversible_reason
from aios.governor import Ager, FairState, Governor, should_age
from aios.scheduler import make_policy
from aios.identity import Credential, verify
from aios.context import ContextStore, Preempted, Snapshot, load_from
from aios.priority import PRIORITY_STEPS, is_redis_url, to_broker
from aios.settings import KIND_TO_RESOURCE, QUEUES, Settings, broker_to_redis_py, get_settings, worker_queue
from aios.syscalls import ErrorInfo, Response, Status, Syscall, Timing, decode_syscall

log = logging.getLogger("aios.kernel")

REPLY_ONCE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
  redis.call('DEL', KEYS[4], KEYS[5])
  return 1
end
return 0
"""
"""Store and send a service's answer unless one is stored already; drop the syscall's snapshot with it."""

ENVELOPE_SLACK_BYTES = 4096
"""Room for Celery's own envelope around the syscall when the raw message size is checked."""


class Service(Protocol):
    """A resource service: the LLM core, the tool manager, the storage manager."""

    def handle(self, syscall: Syscall) -> Any:
        """Run one syscall and return its JSON-able result, or raise an :class:`AIOSError`."""


class Runtime:
    """Per worker process: the state connection, the service, and the reply path."""

    def __init__(self, settings: Settings, resource: str, service_factory: Callable[[Settings], Service]) -> None:
        self.settings = settings
        self.resource = resource
        self.task_name = f"aios.{resource}"
        self.plain_tasks: set[str] = set()
        """Ordinary Celery tasks this worker also serves (the raw no-op of ``aios bench overhead``)."""
        self._service_factory = service_factory
        self._service: Service | None = None
        self._lock = threading.Lock()
        self.redis = redis.Redis.from_url(settings.state_redis_url())
        self.queue = worker_queue(settings, resource)
        """The queue this worker serves: its resource's (an LLM worker: its core's, ``aios.llm.<core>``)."""
        self.governor = Governor(settings, self.redis, resource)
        self._reply_once = self.redis.register_script(REPLY_ONCE)
        broker = settings.require_broker()
        self._broker_redis = redis.Redis.from_url(broker_to_redis_py(broker)) if is_redis_url(broker) else None
        self.app: Celery | None = None
        """The worker's Celery app (set by :func:`create_worker_app`): requeues preempted syscalls."""

    @property
    def service(self) -> Service:
        if self._service is None:
            with self._lock:
                if self._service is None:
                    service = self._service_factory(self.settings)
                    if hasattr(service, "others_waiting"):  # a preemptible service (the LLM core)
                        service.others_waiting = self.queue_waiting
                    self._service = service
        return self._service

    # -- the normal path -------------------------------------------------------------------------------

    def execute(self, message_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], worker: str) -> None:
        started = time.time()
        created = started
        try:
            if len(args) != 1 or kwargs:
                raise InvalidSyscall("a kernel message carries exactly one positional argument: the syscall object")
            syscall = decode_syscall(args[0], max_bytes=self.settings.max_payload_bytes)
            created = syscall.created_at
            if syscall.id != message_id:
                raise InvalidSyscall(
                    f"syscall id {syscall.id!r} does not match the message id {message_id!r}; publish through the SDK"
                )
            # One round trip for both: has this id been answered, and who is its agent?
            pipe = self.redis.pipeline(transaction=False)
            pipe.exists(keys.result(message_id))
            pipe.hgetall(keys.agent(syscall.agent_id))
            pipe.hgetall(keys.context(message_id))
            answered, record, context = pipe.execute()
            if self.settings.auth == "required":
                payload = args[0] if isinstance(args[0], dict) else json.loads(args[0])
                verify(payload, Credential.from_redis(syscall.agent_id, record), now=started,
                       clock_skew_s=self.settings.clock_skew_s)
            if answered:
                # A broker redelivery after the answer was stored, or someone replaying a captured message.
                raise AuthError(f"syscall {message_id} was answered already; it is not run again (make a new "
                                "syscall to repeat the request)", code="replayed")
            resource = KIND_TO_RESOURCE[syscall.kind]
            if resource != self.resource:
                raise InvalidSyscall(
                    f"a {syscall.kind} syscall reached the {self.resource} worker; send it to queue {QUEUES[resource]}",
                    code="wrong_queue",
                )
        except AIOSError as exc:
            self.reject(exc.code, exc.message, message_id, args[0] if len(args) == 1 else args, started=started)
            return
        if started > syscall.deadline:
            exc = DeadlineExceeded(
                f"the syscall waited {started - syscall.created_at:.1f}s in queue {self.queue}, past its "
                f"timeout of {syscall.timeout_s}s; raise timeout_s or add {self.resource} workers"
            )
            # once: like any answer to a syscall, it also drops a suspended generation's snapshot and retry count
            self.reply(self._error(syscall.id, exc, created, started, worker), syscall.kind, once=True)
            return
        if self.settings.approvals == "required" and self._await_approval(syscall, args[0]):
            return
        snapshot = load_from(context)
        admission = None
        response: Response | None = None
        try:
            # Quotas and leases (aios/governor.py): may wait for a turn; the wait counts as queue wait.
            admission = self.governor.admit(syscall, self.service)
            started = time.time() if admission is not None else started
            result = self.service.handle(syscall, snapshot) if snapshot else self.service.handle(syscall)
            response = Response(
                id=syscall.id, status=Status.OK, result=result,
                timing=Timing(created_at=created, started_at=started, finished_at=time.time()), worker=worker,
            )
        except Preempted as p:
            # Its time slice is up: the slice counts as the agent's service (the fair policy and status see it).
            self.governor.account_slice(syscall, started, time.time())
            self.suspend(syscall, args[0], p.snapshot)
            return  # (finally: its leases are released; the copy on the queue takes them again)
        except AIOSError as exc:
            if getattr(exc, "transient", False) and self.retry_later(syscall, args[0], exc):
                return
            response = self._error(syscall.id, exc, created, started, worker)
        except Exception as exc:  # a bug in a service must not kill the worker nor leave the caller waiting
            log.exception("syscall %s failed inside the %s service", syscall.id, self.resource)
            response = self._error(
                syscall.id, AIOSError(f"{type(exc).__name__}: {exc} (a kernel bug: see the worker log)"),
                created, started, worker,
            )
        finally:
            try:
                self.governor.release(admission, response)
            except redis.RedisError as exc:  # its leases expire on their own; the answer matters more
                log.error("could not release the quota leases of %s: %s", syscall.id, exc)
        assert response is not None
        self.reply(response, syscall.kind, syscall, once=True)

    def suspend(self, syscall: Syscall, raw: Any, snapshot: Snapshot) -> None:
        """Store a preempted generation's snapshot and requeue the original signed message at its priority.

        The message being run is acknowledged when this returns: the copy on the queue carries the syscall on.
        Whichever worker takes it loads the snapshot (``execute``) and resumes."""
        ContextStore(self.redis, self.settings.result_ttl_s).save(syscall.id, snapshot)
        if self.app is None:
            raise RuntimeError("a runtime without a Celery app cannot requeue a preempted syscall")
        self._requeue(syscall, raw, "resumed")
        self.redis.hincrby(keys.STATS_DONE, f"{syscall.kind}:preempted", 1)

    def _requeue(self, syscall: Syscall, raw: Any, why: str, countdown: float | None = None) -> None:
        """Send the original signed message (same id, same signature) back to this worker's queue."""
        assert self.app is not None
        self.app.send_task(
            self.task_name, args=[raw], task_id=syscall.id, queue=self.queue, countdown=countdown,
            ignore_result=True, argsrepr=f"<{syscall.kind} syscall of {syscall.agent_id}, {why}>", kwargsrepr="{}",
            **self._requeue_options(syscall))

    def _requeue_options(self, syscall: Syscall) -> dict[str, Any]:
        """Priority and headers of a syscall going back to its queue: where the resource's policy puts it now
        (under ``rr`` and ``fifo``: behind everything waiting; under ``fair``: by its agent's service so far),
        stamped for the ager like a fresh submission."""
        policy = make_policy(self.settings, self.resource)
        excess = 0.0
        if policy.needs_attained:
            excess = FairState(self.redis).excess(self.resource, syscall.agent_id, time.time(),
                                                  self.settings.fair_window_s)
        priority = policy.priority(syscall.priority, excess)
        return {"priority": to_broker(priority, self.settings.require_broker()),
                "headers": {"aios_enqueued": time.time(), "aios_priority": priority}}

    def retry_later(self, syscall: Syscall, raw: Any, exc: AIOSError) -> bool:
        """Requeue the original message after a back-off, unless the retries are spent or the deadline is near.

        False: the caller should be answered with the error now (its message then says how often it was tried)."""
        key = keys.attempts(syscall.id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, self.settings.result_ttl_s)
        attempt = int(pipe.execute()[0])
        delay = min(self.settings.retry_backoff_s * 2 ** (attempt - 1), 60.0)
        if attempt > self.settings.retry_max or time.time() + delay >= syscall.deadline or self.app is None:
            if attempt > 1:
                exc.args = (f"{exc.message} (after {attempt} attempts)",)
            return False
        log.warning("syscall %s: transient failure, attempt %d of %d again in %.1fs: %s", syscall.id, attempt + 1,
                    self.settings.retry_max + 1, delay, exc.message)
        self._requeue(syscall, raw, f"retry {attempt}", countdown=delay)
        self.redis.hincrby(keys.STATS_DONE, f"{syscall.kind}:retried", 1)
        return True

    def queue_waiting(self) -> bool:
        """Whether messages wait on this worker's queue (on Redis, every priority step), beyond those held."""
        queue = self.queue
        broker = self.settings.require_broker()
        if is_redis_url(broker):
            pipe = self._broker_redis.pipeline(transaction=False)
            for step in PRIORITY_STEPS:
                pipe.llen(f"{queue}:{step}" if step else queue)
            return sum(pipe.execute()) > 0
        if self.app is None:
            return False
        with self.app.connection_for_read() as conn:
            return conn.default_channel.queue_declare(queue=queue, passive=True).message_count > 0

    def _await_approval(self, syscall: Syscall, raw: Any) -> bool:
        """True if the syscall must not run now: parked for an operator, or already denied/expired."""
        reason = irreversible_reason(syscall, self.service)
        if reason is None:
            return False
        approvals = Approvals(self.settings, self.redis)
        status = approvals.status(syscall.id)
        if status == APPROVED:
            return False
        if status is None or status == PENDING:
            payload = raw if isinstance(raw, dict) else json.loads(raw)
            approvals.park(syscall, payload, reason)
            log.info("syscall %s of %s waits for approval: %s", syscall.id, syscall.agent_id, reason)
        return True  # denied or expired: the caller was answered already

    @staticmethod
    def _error(syscall_id: str, exc: AIOSError, created: float, started: float, worker: str) -> Response:
        return Response(
            id=syscall_id, status=Status.ERROR, error=ErrorInfo(code=exc.code, message=exc.message),
            timing=Timing(created_at=created, started_at=started, finished_at=time.time()), worker=worker,
        )

    def reply(self, response: Response, kind: str | None, syscall: Syscall | None = None, *, once: bool = False,
              store: bool = True) -> None:
        """Store the response (the idempotency record) and hand it to the waiting caller, atomically.

        ``kind`` counts the answer in ``aios:stats:done``; refusals pass ``None`` (they count as rejected).
        ``syscall``: a syscall that ran; its service and wait are added to its agent's record.
        ``once``: only if no answer is stored yet (two copies of a requeued syscall never both answer).
        ``store=False``: hand the answer over without storing it (refusals: a forged or replayed message that
        names a real syscall id must not overwrite, or pre-empt, that syscall's own answer)."""
        body = response.model_dump_json()
        ttl = self.settings.result_ttl_s
        if once:
            answered = self._reply_once(keys=[keys.result(response.id), keys.reply(response.id), keys.STATS_DONE,
                                              keys.context(response.id), keys.attempts(response.id)],
                                        args=[body, ttl, f"{kind}:{response.status.value}"])
            if answered and syscall is not None:
                self.governor.account(self.redis, syscall, response)
            return
        pipe = self.redis.pipeline(transaction=True)
        if store:
            pipe.set(keys.result(response.id), body, ex=ttl)
        pipe.rpush(keys.reply(response.id), body)
        pipe.expire(keys.reply(response.id), ttl)
        if kind is not None:
            pipe.hincrby(keys.STATS_DONE, f"{kind}:{response.status.value}", 1)
        if syscall is not None:
            self.governor.account(pipe, syscall, response)
        pipe.execute()

    # -- refusals --------------------------------------------------------------------------------------

    def reject(self, code: str, message: str, syscall_id: str | None, raw: Any, *, started: float | None = None,
               meta: dict[str, Any] | None = None) -> None:
        """Count a refused message, keep it in the dead-letter list, and answer the caller if it can be named."""
        now = time.time()
        log.warning("refused message %s (%s): %s", syscall_id, code, message)
        if not isinstance(raw, (str, bytes)):
            try:
                raw = json.dumps(raw)
            except (TypeError, ValueError):
                raw = repr(raw)
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="backslashreplace")
        entry = {
            "at": now, "code": code, "error": message, "syscall_id": syscall_id, "worker_resource": self.resource,
            "size": len(raw), "body": raw[: self.settings.max_payload_bytes + ENVELOPE_SLACK_BYTES],
            **(meta or {}),
        }
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(keys.DEADLETTER, json.dumps(entry))
        pipe.ltrim(keys.DEADLETTER, 0, self.settings.deadletter_max - 1)
        pipe.hincrby(keys.STATS_REJECTED, code, 1)
        pipe.execute()
        if syscall_id:
            t = started or now
            self.reply(
                Response(id=syscall_id, status=Status.ERROR, error=ErrorInfo(code=code, message=message),
                         timing=Timing(created_at=t, started_at=t, finished_at=time.time()), worker=self.resource),
                kind=None, store=False,
            )


class KernelConsumer(Consumer):
    """Celery's consumer with a gate in front: a message that is not a well-formed kernel syscall never reaches
    Celery's own decoding (which would log and drop it silently, or fail it without telling the caller)."""

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        handler = super().create_task_handler(*args, **kwargs)
        runtime: Runtime | None = getattr(self.app, "aios_runtime", None)
        if runtime is None:  # a plain Celery app using this consumer by mistake: behave like Celery
            return handler

        def gate(message: Any) -> Any:
            refusal = check_envelope(message, runtime)
            if refusal is None:
                return handler(message)
            code, text = refusal
            headers = message.headers if isinstance(message.headers, dict) else {}
            syscall_id = headers.get("id") if isinstance(headers.get("id"), str) else None
            try:
                runtime.reject(code, text, syscall_id, message.body, meta={
                    "content_type": message.content_type, "task": headers.get("task"),
                })
            finally:
                message.ack()
            return None

        return gate


def check_envelope(message: Any, runtime: Runtime) -> tuple[str, str] | None:
    """Return ``(code, explanation)`` for a message the kernel must refuse, ``None`` for one it accepts."""
    if message.content_type != "application/json":
        return "content_type", (
            f"content type {message.content_type!r} refused: the kernel accepts only application/json "
            "(pickle and other serializers are never accepted); publish through the aios SDK"
        )
    size = len(message.body or b"")
    limit = runtime.settings.max_payload_bytes
    if size > limit + ENVELOPE_SLACK_BYTES:
        return PayloadTooLarge.code, f"message is {size} bytes; the syscall limit is {limit} (AIOS_MAX_PAYLOAD_BYTES)"
    headers = message.headers
    if not isinstance(headers, dict) or "task" not in headers or "id" not in headers:
        return "malformed", "message lacks Celery protocol 2 headers 'task' and 'id'; publish through the aios SDK"
    if headers["task"] != runtime.task_name and headers["task"] not in runtime.plain_tasks:
        return "unknown_task", (
            f"{headers['task']!r} is not served here: this worker serves {runtime.task_name!r} on queue "
            f"{runtime.queue}"
        )
    try:
        body = message.decode()
    except Exception as exc:  # kombu raises several decode error types, all meaning the same here
        return "malformed", f"message body is not valid JSON: {exc}"
    if not (isinstance(body, (list, tuple)) and len(body) == 3 and isinstance(body[0], (list, tuple))):
        return "malformed", "message body is not a Celery protocol 2 envelope [args, kwargs, embed]"
    return None


def create_worker_app(resource: str, service_factory: Callable[[Settings], Service],
                      settings: Settings | None = None, concurrency: int | None = None) -> Celery:
    """The Celery app of one resource worker: ``celery -A workers.<resource> worker -Q aios.<resource>``."""
    settings = settings or get_settings()
    app = make_app(settings, name=f"aios-{resource}")
    runtime = Runtime(settings, resource, service_factory)
    runtime.app = app
    app.aios_runtime = runtime  # type: ignore[attr-defined]
    # Only its own queue, so that a bare `celery -A workers.<resource> worker` consumes the right one.
    app.conf.task_queues = [q for q in app.conf.task_queues if q.name == runtime.queue]
    app.conf.task_default_queue = runtime.queue
    # Threads, not prefork: services hold models and connections worth sharing, and the main thread stays free
    # to answer pings and control commands while a syscall runs.
    app.conf.worker_pool = "threads"
    app.conf.worker_concurrency = concurrency or settings.worker_concurrency or app.conf.worker_concurrency

    if should_age(settings, resource):
        from celery.signals import worker_ready, worker_shutdown

        agers: list[Ager] = []

        @worker_ready.connect(weak=False)
        def _start_ager(sender: Any = None, **_: Any) -> None:
            if sender is not None and getattr(sender, "app", app) is not app:
                return
            agers.append(Ager(runtime._broker_redis, runtime.queue, settings.aging_s).start())

        @worker_shutdown.connect(weak=False)
        def _stop_ager(**_: Any) -> None:
            for ager in agers:
                ager.stop()

    @app.task(name=runtime.task_name, bind=True, ignore_result=True, typing=False)
    def syscall(task: Any, *args: Any, **kwargs: Any) -> None:
        runtime.execute(task.request.id, args, kwargs, worker=task.request.hostname or resource)

    return app
