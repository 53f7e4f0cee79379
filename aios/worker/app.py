"""The Celery app of one resource worker: ``celery -A workers.<resource> worker -Q aios.<resource>``.

Background parts start and stop as Celery bootsteps (the ager, the approval expiry, the mover of delayed
syscalls), not from signals."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery, bootsteps

from aios.broker import kombu_client
from aios.broker.app import make_app
from aios.policy.approvals import Approvals, Expirer
from aios.policy.governor import Ager, should_age
from aios.services.base import Service
from aios.settings import Settings, get_settings
from aios.worker.runtime import Runtime


class AgerStep(bootsteps.StartStopStep):  # type: ignore[misc]  # celery ships no type hints
    """Moves long-waiting syscalls up one priority step per ``AIOS_AGING_S`` (Redis brokers, ``priority``)."""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        self.ager: Ager | None = None

    def start(self, worker: Any) -> None:
        runtime: Runtime = worker.app.aios_runtime
        if runtime.broker_redis is not None and should_age(runtime.settings, runtime.resource):
            self.ager = Ager(runtime.broker_redis, runtime.queue, runtime.settings.scheduling.aging_s).start()

    def stop(self, worker: Any) -> None:
        if self.ager is not None:
            self.ager.stop()


class ApprovalExpiryStep(bootsteps.StartStopStep):  # type: ignore[misc]  # celery ships no type hints
    """Denies parked syscalls past their deadline and answers their callers (``AIOS_APPROVALS=required``)."""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        self.expirer: Expirer | None = None

    def start(self, worker: Any) -> None:
        runtime: Runtime = worker.app.aios_runtime
        if runtime.settings.security.approvals == "required":
            self.expirer = Expirer(Approvals(runtime.settings, runtime.redis)).start()

    def stop(self, worker: Any) -> None:
        if self.expirer is not None:
            self.expirer.stop()


class DelayedStep(bootsteps.StartStopStep):  # type: ignore[misc]  # celery ships no type hints
    """Moves the syscalls the kernel put off (retries, quota waits) back onto this worker's queue when due."""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        self.runtime: Runtime | None = None

    def start(self, worker: Any) -> None:
        self.runtime = worker.app.aios_runtime
        self.runtime.delayed.start()

    def stop(self, worker: Any) -> None:
        if self.runtime is not None:
            self.runtime.delayed.stop()


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
    app.steps["worker"].add(AgerStep)
    app.steps["worker"].add(ApprovalExpiryStep)
    app.steps["worker"].add(DelayedStep)

    @app.task(name=runtime.task_name, bind=True, ignore_result=True, typing=False)  # type: ignore[untyped-decorator]  # celery has no type information
    def syscall(task: Any, *args: Any, **kwargs: Any) -> None:
        runtime.execute(task.request.id, args, kwargs, worker=task.request.hostname or resource)

    return app
