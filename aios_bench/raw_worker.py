"""The raw-Celery contender of ``aios bench overhead``: a plain Celery worker (the kernel's broker settings and
thread pool, no kernel gates) serving a no-op task on its own queue. It ships with the benchmarks, not in the
kernel's workers: ``celery -A aios_bench.raw_worker worker -Q aios.bench.raw``."""

from __future__ import annotations

from kombu.entity import Exchange, Queue

from aios.broker.app import make_app
from aios.settings import get_settings
from aios.wire.priority import MAX_PRIORITY
from aios_bench.common import RAW_QUEUE, RAW_TASK

settings = get_settings()
app = make_app(settings, name="aios-bench-raw")
app.conf.task_queues = [Queue(RAW_QUEUE, Exchange(RAW_QUEUE, type="direct"),  # type: ignore[no-untyped-call]  # kombu's Queue, Exchange: unannotated
                              routing_key=RAW_QUEUE, queue_arguments={"x-max-priority": MAX_PRIORITY})]
app.conf.task_default_queue = RAW_QUEUE
app.conf.worker_consumer = "celery.worker.consumer:Consumer"  # plain Celery: no kernel gate
app.conf.worker_pool = "threads"
app.conf.worker_concurrency = settings.worker.concurrency or app.conf.worker_concurrency


@app.task(name=RAW_TASK)  # type: ignore[untyped-decorator]  # celery has no type information
def noop() -> None:
    """A plain Celery no-op, its result stored in and fetched from Celery's Redis result backend."""
    return None
