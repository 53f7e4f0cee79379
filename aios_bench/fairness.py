"""``aios bench fairness``: does the scheduler share a worker fairly, and does priority protect urgent work?

Two experiments on one tool worker thread (a single server, so that the scheduling policy decides everything),
each with two contenders run one after the other on fresh embedded kernels in the same run:

1. **Share.** Agents with unequal demand (by default 1, 2, 4 and 8 syscalls kept in flight; each syscall is
   ``sleep(0.02)``) compete for the worker for ``--seconds``. Equal agents deserve equal service whatever
   they ask for. Contenders: ``fifo`` (service follows demand) and ``fair`` (least attained service).
   Reported: the service each agent received while all were busy, and Jain's index over them.
2. **Priority.** Four low-priority agents (priority 1) flood the worker, each keeping four ``sleep(0.05)``
   in flight, while one high-priority agent (priority 9) makes ``--urgent`` sequential ``sleep(0.05)``
   syscalls. Contenders: ``fifo`` and ``priority``. Reported: the urgent agent's queue waits (p50, p99)
   against its own service time.

Targets: ``jain_index`` (fair share, goal ≥ 0.95) and ``high_priority_p99_wait`` (the urgent agent's p99 wait /
its median service time under ``priority``, goal ≤ 2).
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import TextColumn
from rich.table import Table

from aios.ops.embedded import LocalKernel
from aios.policy.identity import Credentials
from aios.policy.scheduler import jain_index
from aios.sdk.client import Kernel
from aios.settings import Settings
from aios.wire.errors import ConfigError
from aios_bench.common import Bound, consoles, machine, print_targets, progress_bars, save, target

SHARE_SLEEP_S = 0.02
FLOOD_SLEEP_S = 0.05
WARMUP_S = 1.0
TARGETS: dict[str, tuple[float, Bound]] = {"jain_index": (0.95, "min"), "high_priority_p99_wait": (2.0, "max")}


def _kernel(settings: Settings, agent: str, priority: int = 5) -> Kernel:
    Credentials(settings).create(agent)
    return Kernel(agent, settings=settings, priority=priority, timeout_s=120)


def _closed_loop(k: Kernel, in_flight: int, seconds: float, record: Callable[[Any], None],
                 stop: threading.Event, sleep_s: float) -> None:
    """Keep ``in_flight`` syscalls of ``k``'s agent queued until ``stop``; record each answer's timing."""
    pending = [k.submit(k.tool_syscall("sleep", {"seconds": sleep_s})) for _ in range(in_flight)]
    while pending:
        response = k.wait_response(pending.pop(0))
        record(response)
        if not stop.is_set():
            pending.append(k.submit(k.tool_syscall("sleep", {"seconds": sleep_s})))


def run_share(settings: Settings, policy: str, demands: list[int], seconds: float,
              tick: Callable[[float], None]) -> dict[str, Any]:
    s = settings.updated(**{"policies": {"tool": policy}, "worker_concurrency": 1})
    service: dict[str, float] = defaultdict(float)
    done: dict[str, int] = defaultdict(int)
    with LocalKernel(s, resources=["tool"]) as lk:
        stop = threading.Event()
        window: list[float] = []
        lock = threading.Lock()
        clients = [_kernel(lk.settings, f"agent{i + 1}-x{d}") for i, d in enumerate(demands)]

        def recorder(agent: str) -> Callable[[Any], None]:
            def record(response: Any) -> None:
                t = response.timing
                if window and t is not None and window[0] <= t.finished_at <= window[1]:
                    with lock:
                        service[agent] += t.service_s
                        done[agent] += 1
            return record

        threads = [threading.Thread(target=_closed_loop, args=(k, d, seconds, recorder(k.agent_id), stop,
                                                               SHARE_SLEEP_S)) for k, d in zip(clients, demands, strict=True)]
        for t in threads:
            t.start()
        time.sleep(WARMUP_S)  # every agent has its syscalls queued before measuring starts
        start = time.time()
        window[:] = [start, start + seconds]
        while (elapsed := time.time() - start) < seconds:
            tick(elapsed)
            time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(120)
        for k in clients:
            k.close()
    agents = [k.agent_id for k in clients]
    values = [service[a] for a in agents]
    return {"policy": policy, "agents": agents, "demands": demands, "service_s": values,
            "syscalls": [done[a] for a in agents], "jain": jain_index(values), "seconds": seconds}


def run_priority(settings: Settings, policy: str, urgent: int, tick: Callable[[float], None]) -> dict[str, Any]:
    s = settings.updated(**{"policies": {"tool": policy}, "worker_concurrency": 1})
    waits: list[float] = []
    services: list[float] = []
    with LocalKernel(s, resources=["tool"]) as lk:
        stop = threading.Event()
        flooders = [_kernel(lk.settings, f"low{i}", priority=1) for i in range(4)]
        threads = [threading.Thread(target=_closed_loop, args=(k, 4, 0, lambda r: None, stop, FLOOD_SLEEP_S))
                   for k in flooders]
        for t in threads:
            t.start()
        time.sleep(WARMUP_S)
        start = time.time()
        with _kernel(lk.settings, "urgent", priority=9) as k:
            for _ in range(urgent):
                response = k.wait_response(k.submit(k.tool_syscall("sleep", {"seconds": FLOOD_SLEEP_S})))
                assert response.timing is not None
                waits.append(response.timing.queue_wait_s)
                services.append(response.timing.service_s)
                tick(time.time() - start)
                time.sleep(FLOOD_SLEEP_S)  # the agent "thinks" between its syscalls
        stop.set()
        for t in threads:
            t.join(120)
        for k in flooders:
            k.close()
    arr = np.asarray(waits)
    service = float(np.median(services))
    return {"policy": policy, "waits_s": waits, "wait_p50_s": float(np.percentile(arr, 50)),
            "wait_p99_s": float(np.percentile(arr, 99)), "service_s": service,
            "p99_wait_vs_service": float(np.percentile(arr, 99)) / service}


def plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_share, ax_wait) = plt.subplots(1, 2, figsize=(12, 4.5))
    share = result["share"]
    agents = share["fifo"]["agents"]
    x = np.arange(len(agents))
    for i, (name, colour) in enumerate((("fifo", "tab:gray"), ("fair", "tab:green"))):
        run = share[name]
        bars = ax_share.bar(x + (i - 0.5) * 0.38, run["service_s"], 0.38, color=colour,
                            label=f"{name} (Jain {run['jain']:.3f})")
        ax_share.bar_label(bars, fmt="%.2f", fontsize=8)
    ax_share.set_xticks(x, [f"{a.split('-')[0]}\n{d} in flight" for a, d in zip(agents, share['fifo']['demands'], strict=True)])
    ax_share.set_ylabel(f"service received in {share['fifo']['seconds']:g} s (s)")
    ax_share.set_title("share of one worker among unequal demands")
    ax_share.legend()
    prio = result["priority"]
    for name, colour in (("fifo", "tab:gray"), ("priority", "tab:blue")):
        ms = np.sort(np.asarray(prio[name]["waits_s"])) * 1000
        ax_wait.plot(ms, np.arange(1, ms.size + 1) / ms.size, color=colour,
                     label=f"{name} (p99 {prio[name]['wait_p99_s'] * 1000:.0f} ms)")
    bound = 2 * prio["priority"]["service_s"] * 1000
    ax_wait.axvline(bound, color="tab:red", linestyle="--", label=f"goal: 2x service ({bound:.0f} ms)")
    ax_wait.set_xscale("log")
    ax_wait.set_xlabel("urgent agent's queue wait (ms, log)")
    ax_wait.set_ylabel("fraction of its syscalls")
    ax_wait.set_title("priority 9 agent under a priority 1 flood")
    ax_wait.legend(loc="lower right")
    ax_wait.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"aios bench fairness: one tool worker thread, {os.cpu_count()} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_fairness(settings: Settings, *, seconds: float = 8.0, demands: tuple[int, ...] = (1, 2, 4, 8),
                 urgent: int = 40, json_path: Path | None = None) -> dict[str, Any]:
    if seconds <= 0 or urgent < 2 or not demands or min(demands) < 1:
        raise ConfigError("need --seconds > 0, --urgent >= 2 and demands of at least 1 syscall in flight")
    out, err = consoles()
    # Embedded kernels, one per contender: each starts with an empty state and queue.
    base = settings.updated(**{"broker_url": None, "redis_url": None})
    result: dict[str, Any] = {"benchmark": "fairness",
                              "machine": machine(),
                              "params": {"seconds": seconds, "demands": list(demands), "urgent": urgent,
                                         "share_sleep_s": SHARE_SLEEP_S, "flood_sleep_s": FLOOD_SLEEP_S,
                                         "fair_quantum_s": settings.scheduling.fair_quantum_s, "worker_concurrency": 1},
                              "share": {}, "priority": {}}
    with progress_bars(err, 24, TextColumn("{task.fields[what]}")) as progress:
        for policy in ("fifo", "fair"):
            task = progress.add_task(f"share: {policy}", total=seconds, what="")

            def share_tick(e: float, t: Any = task) -> None:
                progress.update(t, completed=e, what=f"{e:.0f}/{seconds:g} s")
            result["share"][policy] = run_share(base, policy, list(demands), seconds, share_tick)
            progress.update(task, completed=seconds, what=f"Jain {result['share'][policy]['jain']:.3f}")
        for policy in ("fifo", "priority"):
            task = progress.add_task(f"priority: {policy}", total=urgent, what="")
            count = [0]

            def tick(_: float, t: Any = task, count: list[int] = count) -> None:
                count[0] += 1
                progress.update(t, completed=count[0], what=f"{count[0]}/{urgent} urgent syscalls")
            result["priority"][policy] = run_priority(base, policy, urgent, tick)
    fair, prio = result["share"]["fair"], result["priority"]["priority"]
    values = {"jain_index": fair["jain"], "high_priority_p99_wait": prio["p99_wait_vs_service"]}
    result["ratios"] = {"jain_fair_vs_fifo": fair["jain"] / result["share"]["fifo"]["jain"],
                        "p99_wait_priority_vs_fifo": prio["wait_p99_s"] / result["priority"]["fifo"]["wait_p99_s"]}
    result["targets"] = {name: target(values[name], goal, bound) for name, (goal, bound) in TARGETS.items()}
    print_tables(out, result)
    save(json_path, result, lambda png: plot(png, result), err.log)
    return result


def print_tables(console: Console, result: dict[str, Any]) -> None:
    share = result["share"]
    t = Table(title=f"share of one worker over {result['params']['seconds']:g} s (service received, s)")
    t.add_column("agent")
    t.add_column("in flight", justify="right")
    for name in share:
        t.add_column(name, justify="right")
    for i, agent in enumerate(share["fifo"]["agents"]):
        t.add_row(agent, str(share["fifo"]["demands"][i]), *(f"{share[n]['service_s'][i]:.2f}" for n in share))
    t.add_row("Jain's index", "", *(f"{share[n]['jain']:.3f}" for n in share))
    console.print(t)
    prio = result["priority"]
    t = Table(title="urgent agent (priority 9) under a flood (priority 1)")
    for col in ("policy", "wait p50", "wait p99", "its service", "p99 wait / service"):
        t.add_column(col, justify="right")
    for name, run in prio.items():
        t.add_row(name, f"{run['wait_p50_s'] * 1000:.1f} ms", f"{run['wait_p99_s'] * 1000:.1f} ms",
                  f"{run['service_s'] * 1000:.1f} ms", f"{run['p99_wait_vs_service']:.2f}")
    console.print(t)
    print_targets(console, result["targets"], {name: bound for name, (_, bound) in TARGETS.items()})
