"""The worker pipeline profiled in-process, step by step: ``aios bench overhead`` reports it beside the round
trip. No broker and no Celery: the tool worker's :class:`~aios.worker.runtime.Runtime` runs pre-signed no-op
syscalls straight from ``execute``, on a connection to the kernel's Redis that counts what it sends."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import redis

from aios.policy.identity import Credentials, sign
from aios.sdk.client import Kernel
from aios.services.tools.service import ToolService
from aios.settings import Settings
from aios.worker.call import Call
from aios.worker.runtime import Runtime


class _Counter:
    round_trips = 0
    bytes_sent = 0


def _counting(cls: type[Any], counter: _Counter) -> type[Any]:
    """A redis-py connection class that counts each packed send (one per command, or one per pipeline)."""

    class Counting(cls):  # type: ignore[misc]  # a subclass of a class known only at run time
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            counter.round_trips += 1
            counter.bytes_sent += len(command) if isinstance(command, (bytes, str)) else sum(map(len, command))
            super().send_packed_command(command, check_health)

    return Counting


def counting_client(url: str) -> tuple[redis.Redis, _Counter]:
    counter = _Counter()
    base = redis.Redis.from_url(url)
    pool = base.connection_pool
    pool.connection_class = _counting(pool.connection_class, counter)
    return base, counter


def profile_pipeline(settings: Settings, n: int = 2000, warmup: int = 200,
                     progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Per step of the tool worker's pipeline: microseconds, round trips and bytes sent per no-op syscall."""
    client, counter = counting_client(settings.state_redis_url())
    rt = Runtime(settings, "tool", lambda s: ToolService(None, s), state=client)
    stats: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])  # seconds, round trips, bytes

    for step in rt.pipeline.steps:
        for hook in ("before", "after"):
            fn = getattr(step, hook)

            def timed(call: Call, fn: Callable[[Call], None] = fn, key: str = f"{step.name}.{hook}") -> None:
                t0, r0, b0 = time.perf_counter(), counter.round_trips, counter.bytes_sent
                try:
                    fn(call)
                finally:
                    s = stats[key]
                    s[0] += time.perf_counter() - t0
                    s[1] += counter.round_trips - r0
                    s[2] += counter.bytes_sent - b0

            setattr(step, hook, timed)
    agent = "bench-profile"
    secret = Credentials(settings).create(agent, write_file=False).secret if settings.security.auth == "required" else None
    with Kernel(agent, settings=settings, credential=secret) as k:
        calls = []
        for _ in range(n + warmup):
            syscall = k.tool_syscall("noop")
            payload = syscall.model_dump(mode="json")
            if secret is not None:
                payload["sig"] = sign(payload, secret)
            calls.append((syscall.id, payload))
    for sid, payload in calls[:warmup]:
        rt.execute(sid, (payload,), {}, "profile")
    stats.clear()
    r0, b0, t0 = counter.round_trips, counter.bytes_sent, time.perf_counter()
    for i, (sid, payload) in enumerate(calls[warmup:]):
        rt.execute(sid, (payload,), {}, "profile")
        if progress is not None and i % 100 == 99:
            progress(100)
    wall = time.perf_counter() - t0
    steps = {key: {"us": s[0] / n * 1e6, "round_trips": s[1] / n, "bytes_sent": s[2] / n}
             for key, s in stats.items() if s[0] > 0 and (s[1] or s[0] / n > 1e-6)}
    client.close()
    return {"syscalls": n, "us_per_syscall": wall / n * 1e6,
            "round_trips_per_syscall": (counter.round_trips - r0) / n,
            "bytes_sent_per_syscall": (counter.bytes_sent - b0) / n, "steps": steps}
