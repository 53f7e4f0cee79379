"""The kernel's metrics in Prometheus' format, read from the kernel's Redis when scraped.

Served by ``aios metrics`` (and ``aios up --metrics-port``). Every figure is fleet-wide: it comes from the shared
state that all workers write, not from one process. Flower's own ``/metrics`` covers Celery's view (task
runtimes, events); this covers the kernel's: queues, scheduling, quotas.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from aios.settings import Settings


class KernelCollector(Collector):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Any]:
        from aios.broker.app import make_app
        from aios.ops.status import queue_depths, scheduling

        app = make_app(self.settings, name="aios-metrics")
        try:
            depths = queue_depths(app, self.settings)
        finally:
            app.close()
        depth = GaugeMetricFamily("aios_queue_depth", "Syscalls waiting in a kernel queue", labels=["queue"])
        for queue, n in depths.items():
            depth.add_metric([queue], float(n or 0))
        yield depth

        from aios.state import keys
        from aios.state.connections import as_text, state_client

        r = state_client(self.settings, retrying=False)  # a scrape: fail at once, not 30 s later
        try:
            done = r.hgetall(keys.STATS_DONE)
            rejected = r.hgetall(keys.STATS_REJECTED)
        finally:
            r.close()
        answered = CounterMetricFamily("aios_syscalls_answered", "Syscalls answered, by kind and status "
                                       "(rate() of it is the throughput)", labels=["kind", "status"])
        for k, v in done.items():
            kind, _, status = as_text(k).partition(":")
            answered.add_metric([kind, status], float(v))
        yield answered
        from aios.ops.status import llm_workers

        llm = CounterMetricFamily("aios_llm", "LLM workers, fleet-wide: conversation cache hits and misses, prompt "
                                  "tokens prefilled and saved by the cache, affinity hits, misses, new agents, "
                                  "hand-overs", labels=["what"])
        for what, n in llm_workers(self.settings)["llm_counters"].items():
            if isinstance(n, int):
                llm.add_metric([what], float(n))
        yield llm
        refused = CounterMetricFamily("aios_syscalls_rejected", "Messages refused by a worker gate, by code",
                                      labels=["code"])
        for k, v in rejected.items():
            refused.add_metric([as_text(k)], float(v))
        yield refused

        sched = scheduling(self.settings)
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "attained": GaugeMetricFamily("aios_agent_attained_service_seconds",
                                          "Attained service per agent (what the fair policy compares)",
                                          labels=["agent", "resource"]),
            "service": CounterMetricFamily("aios_agent_service_seconds", "Worker time spent on an agent's syscalls",
                                           labels=["agent", "resource"]),
            "n": CounterMetricFamily("aios_agent_syscalls", "Syscalls run per agent", labels=["agent", "resource"]),
            "wait": GaugeMetricFamily("aios_agent_mean_wait_seconds", "Mean queue wait of an agent's syscalls",
                                      labels=["agent", "resource"]),
        }
        for a in sched["agents"]:
            labels = [a["agent"], a["resource"]]
            families["attained"].add_metric(labels, a["attained_s"])
            families["service"].add_metric(labels, a["service_s"])
            families["n"].add_metric(labels, a["syscalls"])
            families["wait"].add_metric(labels, a["mean_wait_s"])
        yield from families.values()
        wait = GaugeMetricFamily("aios_queue_wait_seconds", "Queue wait percentiles over the latest syscalls",
                                 labels=["resource", "quantile"])
        for res in sched["scheduling"]:
            for q in ("p50", "p90", "p99"):
                wait.add_metric([res["resource"], q], res[f"wait_{q}_s"])
        yield wait
        used = GaugeMetricFamily("aios_quota_window_use", "Use of a quota scope in its current sliding window",
                                 labels=["scope", "what"])
        limit = GaugeMetricFamily("aios_quota_limit", "A quota scope's configured limit", labels=["scope", "what"])
        for q in sched["quotas"]:
            used.add_metric([q["scope"], "requests"], q["requests"])
            used.add_metric([q["scope"], "tokens"], q["tokens"])
            used.add_metric([q["scope"], "running"], q["running"])
            for what, value in q["limits"].items():
                limit.add_metric([q["scope"], what], value)
        yield used
        yield limit
        tokens = CounterMetricFamily("aios_agent_tokens_used", "LLM tokens used per agent (its token budget account)",
                                     labels=["agent"])
        for agent, n in sched["tokens_used"].items():
            tokens.add_metric([agent], n)
        yield tokens

        from aios.ops.status import restarts

        restarted = CounterMetricFamily("aios_process_restarts", "Restarts of a kernel process by the `aios up` "
                                        "supervisor since it started", labels=["process"])
        for name, info in restarts(self.settings).items():
            restarted.add_metric([name], info["restarts"])
        yield restarted


def registry(settings: Settings) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(KernelCollector(settings))
    return reg


def serve(settings: Settings, *, port: int = 9464, address: str = "127.0.0.1") -> tuple[Any, str]:
    """Start the endpoint on a background thread; returns (server, url). ``port=0`` picks a free port."""
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr=address, registry=registry(settings))
    url = f"http://{address}:{server.server_port}/metrics"
    assert isinstance(thread, threading.Thread)
    return server, url


__all__ = ["KernelCollector", "registry", "serve"]
