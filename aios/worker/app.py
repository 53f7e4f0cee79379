"""The Celery app of one resource worker: ``celery -A workers.<resource> worker -Q aios.<resource>``.

Background parts (the mover of delayed syscalls, the cancel watch, the lease sweep, the ager, the approval
expiry) start and stop with one Celery bootstep, not from signals."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery, bootsteps
from celery.exceptions import Reject
from celery.signals import task_revoked, worker_init

from aios.broker import kombu_client
from aios.broker.app import make_app
from aios.policy.approvals import Approvals, Expirer
from aios.policy.governor import Ager, should_age
from aios.services.base import Service
from aios.settings import Settings, get_settings
from aios.worker.cancels import on_revoked
from aios.worker.leases import LeaseSweeper
from aios.worker.runtime import Runtime

log = logging.getLogger("aios.worker")


class BackgroundStep(bootsteps.StartStopStep):  # type: ignore[misc]  # celery ships no type hints
    """The worker's background passes, started and stopped with it: the mover of syscalls the kernel put off
    (retries, quota waits), the watch for cancels of running syscalls, the sweep that requeues a dead worker's
    syscalls once their leases lapsed (Redis brokers), the ager (Redis brokers, ``priority`` policy) and the approval expiry
    (``AIOS_APPROVALS=required``)."""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        self.passes: list[Any] = []

    def start(self, worker: Any) -> None:
        runtime: Runtime = worker.app.aios_runtime
        self.passes = [runtime.delayed, runtime.cancels.periodic]
        if runtime.broker_redis is not None:  # RabbitMQ redelivers a dead worker's messages by itself
            self.passes.append(LeaseSweeper(runtime))
        if runtime.broker_redis is not None and should_age(runtime.settings, runtime.resource):
            self.passes.append(Ager(runtime.broker_redis, runtime.queue, runtime.settings.scheduling.aging_s))
        if runtime.settings.security.approvals == "required":
            self.passes.append(Expirer(Approvals(runtime.settings, runtime.redis)))
        if runtime.affinity is not None:
            self.passes.append(runtime.affinity)
        for background in self.passes:
            background.start()

    def stop(self, worker: Any) -> None:
        for background in self.passes:
            background.stop()


def create_worker_app(resource: str, service_factory: Callable[[Settings], Service],
                      settings: Settings | None = None, concurrency: int | None = None) -> Celery:
    settings = settings or get_settings()
    kombu_client.install()
    app = make_app(settings, name=f"aios-{resource}")
    runtime = Runtime(settings, resource, service_factory)
    runtime.app = app
    app.aios_runtime = runtime
    # Only its own queue, so that a bare `celery -A workers.<resource> worker` consumes the right one.
    app.conf.task_queues = [q for q in app.conf.task_queues if q.name == runtime.queue]
    app.conf.task_default_queue = runtime.queue
    # Threads, not prefork: services hold models and connections worth sharing, and the main thread stays free
    # to answer pings and control commands while a syscall runs.
    app.conf.worker_pool = "threads"
    app.conf.worker_concurrency = concurrency or settings.worker.concurrency or app.conf.worker_concurrency
    app.conf.worker_consumer = "aios.worker.gate:KernelConsumer"
    app.steps["worker"].add(BackgroundStep)

    @app.task(name=runtime.task_name, bind=True, ignore_result=True, typing=False)  # type: ignore[untyped-decorator]  # celery has no type information
    def syscall(task: Any, *args: Any, **kwargs: Any) -> None:
        try:
            runtime.execute(task.request.id, args, kwargs, worker=task.request.hostname or resource)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # The kernel's Redis stayed away longer than AIOS_RECONNECT_S: give the message back rather than have
            # Celery acknowledge a syscall nobody answered (its claim or stored answer stops a second run).
            log.error("the kernel's Redis is unreachable (%s); syscall %s goes back to its queue", exc,
                      task.request.id)
            raise Reject(str(exc), requeue=True) from exc

    def revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
        if getattr(sender, "name", None) == runtime.task_name:  # Celery acked a revoked message unrun
            on_revoked(runtime, request)

    task_revoked.connect(revoked, weak=False)

    def own_queue(sender: Any = None, **_: Any) -> None:
        """An LLM worker with affinity consumes its own queue too (added once `-Q` chose the queues)."""
        affinity = runtime.affinity
        if getattr(sender, "app", None) is not app or affinity is None or not affinity.hands_over:
            return
        worker_app: Any = sender.app
        worker_app.amqp.queues.select_add(affinity.queue_entity())

    worker_init.connect(own_queue, weak=False)
    return app
