"""The Celery application every kernel process shares: queues, priorities, JSON only, late acks."""

from __future__ import annotations

from celery import Celery
from kombu.entity import Exchange, Queue

from aios.settings import QUEUES, Settings, all_queues
from aios.wire.priority import DEFAULT_PRIORITY, MAX_PRIORITY, PRIORITY_STEPS, is_redis_url, to_broker


def kernel_queues(settings: Settings | None = None) -> list[Queue]:
    """Every kernel queue (with ``settings``: the extra LLM cores' too), with broker priorities."""
    names = all_queues(settings) if settings is not None else list(QUEUES.values())
    return [
        # Durable (kombu's default, said here): on RabbitMQ they and their persistent messages survive a restart.
        Queue(name, Exchange(name, type="direct", durable=True), routing_key=name, durable=True,  # type: ignore[no-untyped-call]  # kombu's Queue, Exchange: unannotated
              queue_arguments={"x-max-priority": MAX_PRIORITY})
        for name in names
    ]


OWN_QUEUE_TTL_MS = 3000
"""RabbitMQ: how long a syscall handed over to an LLM worker's own queue waits there before the broker sends it
back to the core's shared queue (the worker died, or stays busy)."""
OWN_QUEUE_EXPIRES_MS = 600_000
"""RabbitMQ: an LLM worker's own queue is deleted this long after its last consumer went (its messages went back
to the shared queue long before)."""


def own_queue(settings: Settings, name: str, shared: str) -> Queue:
    """An LLM worker's own queue ``name`` (:mod:`aios.worker.affinity`): kernel-only, priorities as the shared
    queue ``shared``. On RabbitMQ a message left in it ``OWN_QUEUE_TTL_MS`` is dead-lettered back onto ``shared``;
    on Redis the live workers drain a dead worker's queue themselves."""
    arguments: dict[str, object] = {"x-max-priority": MAX_PRIORITY}
    if not is_redis_url(settings.require_broker()):
        arguments.update({"x-message-ttl": OWN_QUEUE_TTL_MS, "x-dead-letter-exchange": shared,
                          "x-dead-letter-routing-key": shared, "x-expires": OWN_QUEUE_EXPIRES_MS})
    return Queue(name, Exchange(name, type="direct", durable=True), routing_key=name, durable=True,  # type: ignore[no-untyped-call]  # kombu's Queue, Exchange: unannotated
                 queue_arguments=arguments)


def make_app(settings: Settings, name: str = "aios") -> Celery:
    broker = settings.require_broker()
    # No result backend without a Redis (an agent on RabbitMQ has none): the kernel answers through its own
    # reply channel, never Celery's results.
    has_redis = bool(settings.broker.redis_url) or is_redis_url(broker)
    app = Celery(name, broker=broker, backend=settings.celery_result_backend() if has_redis else None)
    transport_options: dict[str, object] = {}
    if is_redis_url(broker):
        transport_options = {
            # All ten steps, served strictly by priority (kombu's default is only [0, 3, 6, 9]).
            "priority_steps": PRIORITY_STEPS,
            "sep": ":",
            "queue_order_strategy": "priority",
            "visibility_timeout": settings.broker.visibility_timeout_s,
            # Sweep for messages of dead workers often enough that redelivery follows the visibility timeout
            # closely (kombu's defaults sweep only every ~100 s).
            "unacked_restore_interval": max(1, min(10, settings.broker.visibility_timeout_s // 4)),
            "unacked_restore_throttle": 1,
        }
    elif settings.broker.publish_confirms:
        # py-amqp waits for the broker's ack of each publish (and raises on a nack): a submit returns only once
        # RabbitMQ has the message, in a durable queue (kernel_queues) as a persistent message (Celery's default
        # delivery mode).
        transport_options = {"confirm_publish": True}
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport_options,
        result_backend_transport_options={"visibility_timeout": settings.broker.visibility_timeout_s} if has_redis
        else {},
        task_queues=kernel_queues(settings),
        task_default_queue=QUEUES["tool"],
        task_queue_max_priority=MAX_PRIORITY,
        # Explicit default, in the broker's own numbering: never the silent "unset = highest" of Redis.
        task_default_priority=to_broker(DEFAULT_PRIORITY, broker),
        task_routes={f"aios.{res}": {"queue": q} for res, q in QUEUES.items()},
        result_expires=settings.broker.result_ttl_s,
        broker_connection_retry_on_startup=True,
        # Workers reconnect to a restarted broker by themselves, for as long as it takes (a supervisor is there for
        # what is worse); a running syscall keeps running, and its message, unacknowledged on the old connection,
        # comes back: its claim or its stored answer stops a second run.
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # After a reconnect Celery would lower the prefetch count and raise it again from the thread that acks each
        # task: with the threads pool that is a basic.qos on the consumer's connection from a worker thread while the
        # main thread reads it, and py-amqp connections are not thread-safe: the worker deadlocked after a RabbitMQ
        # restart under load (tests/test_durability.py). Prefetch is the thread count anyway (multiplier 1).
        worker_enable_prefetch_count_reduction=False,
        task_default_delivery_mode="persistent",
        worker_consumer="aios.worker.gate:KernelConsumer",
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    app.aios_reconnect_s = settings.broker.reconnect_s  # how long publish_syscall retries a broker that is away
    return app
