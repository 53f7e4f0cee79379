"""The one meaning of priority in the kernel, and its translation per broker.

Kernel priority is an integer from 0 to 9: **higher is more urgent**, 5 is the default. Every syscall carries
one explicitly, so no message ever falls into a broker's "unset" bucket.

- RabbitMQ: native priorities, higher number first; queues are declared with ``x-max-priority=9`` and the
  kernel priority is sent unchanged.
- Redis: kombu emulates priorities with one list per step, and **0 is served first**; the kernel uses all ten
  steps and sends ``9 - priority``.
"""

from __future__ import annotations

MIN_PRIORITY = 0
MAX_PRIORITY = 9
DEFAULT_PRIORITY = 5
PRIORITY_STEPS = list(range(MIN_PRIORITY, MAX_PRIORITY + 1))


def check(priority: int) -> int:
    if not isinstance(priority, int) or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}, got {priority!r}")
    return priority


def is_redis_url(url: str) -> bool:
    return url.split("://", 1)[0] in ("redis", "rediss", "redis+socket", "unix")


def to_broker(priority: int, broker_url: str) -> int:
    """The message priority to publish for a kernel priority on the broker at ``broker_url``."""
    check(priority)
    if is_redis_url(broker_url):
        return MAX_PRIORITY - priority
    return priority


def from_broker(broker_priority: int, broker_url: str) -> int:
    if is_redis_url(broker_url):
        return MAX_PRIORITY - broker_priority
    return broker_priority
