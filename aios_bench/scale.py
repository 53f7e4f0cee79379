"""``aios bench scale``: does LLM throughput grow linearly with LLM worker processes?

One embedded kernel and one provider emulator with a fixed service time and no limits. The LLM worker pool is
grown and shrunk between configurations (1, 2, 4 workers by default), each worker its own process with one
thread (``concurrency 1``, as the LLM worker always runs): scale-out is by processes (or machines), not threads.
``agents`` agent threads, each with its own SDK client, make ``llm_chat`` calls one after the other until the
block's quota of calls (``calls_per_worker`` x workers) is used up; there are at least twice as many agents as
workers, so every worker always has a syscall waiting.

``rounds`` interleaved rounds run every configuration once, alternating the order (1, 2, 4 then 4, 2, 1...), each
block after a short warm-up; throughput of a configuration = its calls / the wall time of its blocks, pooled over
the rounds. Ratios are to linear scaling: ``throughput(n) / (n x throughput(1))``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from aios.ops.embedded import LocalKernel
from aios.policy.identity import Credentials
from aios.sdk.client import Kernel
from aios.settings import Settings
from aios.wire.errors import ConfigError
from aios_bench.common import consoles, machine, progress_bars, save, target
from aios_bench.emulator import EmulatorProcess
from aios_bench.ratelimit import PROMPT, kernel_settings

TARGET = ("linear_scaling_4_workers", 0.9)
WARMUP_PER_WORKER = 2


@dataclass(frozen=True)
class ScaleParams:
    workers: tuple[int, ...] = (1, 2, 4)
    agents: int = 16
    calls_per_worker: int = 25
    rounds: int = 3
    service_ms: float = 200.0
    max_tokens: int = 16

    def check(self) -> None:
        if not self.workers or any(n < 1 for n in self.workers) or len(set(self.workers)) != len(self.workers):
            raise ConfigError(f"--workers must list distinct worker counts >= 1 (got {list(self.workers)})")
        if 1 not in self.workers or 4 not in self.workers:
            raise ConfigError(f"--workers must include 1 (the base of linear scaling) and 4 (the target's "
                              f"configuration); got {list(self.workers)}")
        if self.agents < 2 * max(self.workers):
            raise ConfigError(f"--agents {self.agents} cannot keep {max(self.workers)} workers busy: use at least "
                              f"{2 * max(self.workers)} (twice the largest worker count)")
        if self.calls_per_worker < 1 or self.rounds < 1 or self.max_tokens < 1:
            raise ConfigError(f"--calls-per-worker, --rounds and --max-tokens must be at least 1 (got "
                              f"{self.calls_per_worker}, {self.rounds}, {self.max_tokens})")
        if self.service_ms <= 0:
            raise ConfigError(f"--service-ms must be positive: it is the work that scales (got {self.service_ms})")


QUICK = ScaleParams(agents=8, calls_per_worker=8, rounds=1)


@dataclass
class Block:
    calls: int = 0
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)


def run_block(kernels: list[Kernel], n_calls: int, max_tokens: int, sink: Block | None,
              on_call: Callable[[], None]) -> None:
    """Every agent thread takes calls from a shared counter until ``n_calls`` were made; all must succeed."""
    left = [n_calls]
    lock = threading.Lock()
    errors: list[BaseException] = []
    clock = time.perf_counter

    def agent(k: Kernel) -> None:
        while True:
            with lock:
                if left[0] == 0 or errors:
                    return
                left[0] -= 1
            t0 = clock()
            try:
                k.call(k.llm_syscall(PROMPT, max_tokens=max_tokens))
            except BaseException as exc:  # noqa: BLE001 - reported below: a failed call spoils the measurement
                errors.append(exc)
                return
            if sink is not None:
                with lock:
                    sink.latencies_s.append(clock() - t0)
            on_call()

    threads = [threading.Thread(target=agent, args=(k,), daemon=True) for k in kernels]
    t0 = clock()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    if sink is not None:
        sink.wall_s += clock() - t0
        sink.calls += n_calls


def set_workers(lk: LocalKernel, n: int) -> None:
    running = lk.workers_of("llm")
    if len(running) < n:
        lk.add_workers("llm", n - len(running))
    for name in running[n:][::-1]:
        lk.stop_worker(name)


def summarize(blocks: dict[int, Block], service_s: float) -> dict[str, Any]:
    base = blocks[1].calls / blocks[1].wall_s
    out = {}
    for n, b in sorted(blocks.items()):
        thr = b.calls / b.wall_s
        ms = np.asarray(b.latencies_s) * 1000
        out[str(n)] = {"workers": n, "calls": b.calls, "wall_s": b.wall_s, "throughput_calls_s": thr,
                       "vs_linear": thr / (n * base), "vs_ideal": thr / (n / service_s),
                       "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}
    return out


def print_table(console: Console, result: dict[str, Any]) -> None:
    p = result["params"]
    table = Table(title=f"aios bench scale: LLM workers (1 thread each) against a {p['service_ms']:g} ms provider, "
                        f"{p['agents']} agents")
    for col in ("workers", "calls", "throughput (calls/s)", "x linear", "x ideal", "p50 ms", "p99 ms"):
        table.add_column(col, justify="right")
    for c in result["configs"].values():
        table.add_row(str(c["workers"]), str(c["calls"]), f"{c['throughput_calls_s']:.2f}", f"{c['vs_linear']:.3f}",
                      f"{c['vs_ideal']:.3f}", f"{c['p50_ms']:.0f}", f"{c['p99_ms']:.0f}")
    console.print(table)
    console.print(f"  x linear: throughput(n) / (n x throughput(1)); x ideal: throughput(n) / (n / service time); "
                  f"{result['machine']['cpus']} CPUs", highlight=False)
    for name, t in result["targets"].items():
        mark = "[green]met[/]" if t["met"] else "[red]missed[/]"
        console.print(f"  {name}: {t['value']:.3f} (goal >= {t['goal']}) {mark}")


def plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(result["configs"].values())
    ns = [c["workers"] for c in configs]
    thr = [c["throughput_calls_s"] for c in configs]
    base = result["configs"]["1"]["throughput_calls_s"]
    ideal = 1000.0 / result["params"]["service_ms"]
    fig, ax = plt.subplots(figsize=(7, 4.4))
    ax.plot(ns, thr, "o-", color="tab:orange", label="measured (kernel)")
    for n, v, c in zip(ns, thr, configs, strict=True):
        ax.annotate(f"{v:.1f}/s ({c['vs_linear']:.2f}x linear)", (n, v), textcoords="offset points", xytext=(6, -12),
                    fontsize=8)
    ax.plot(ns, [n * base for n in ns], "--", color="gray", label="linear from 1 worker")
    ax.plot(ns, [0.9 * n * base for n in ns], ":", color="green", label="goal: 0.9x linear")
    ax.plot(ns, [n * ideal for n in ns], "-.", color="tab:blue", alpha=0.5, label="ideal: n / service time")
    ax.set_xticks(ns)
    ax.set_xlabel("LLM worker processes (1 thread each)")
    ax.set_ylabel("LLM syscalls per second")
    ax.set_ylim(0, max(ns) * ideal * 1.1)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"aios bench scale: {result['params']['service_ms']:g} ms provider, {result['machine']['cpus']} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_scale(settings: Settings, params: ScaleParams = ScaleParams(), *, json_path: Path | None = None
              ) -> dict[str, Any]:
    """Run the benchmark, print its table, write JSON (and a PNG beside it) when asked; return the figures."""
    params.check()
    out, err = consoles()
    log = err.log
    service_s = params.service_ms / 1000
    blocks = {n: Block() for n in params.workers}
    total = sum(params.workers) * params.calls_per_worker * params.rounds
    timeout_s = min(settings.syscalls.max_syscall_timeout_s, 120.0)
    with EmulatorProcess(service_s=service_s) as emu:
        # No limits, and one thread per worker (AIOS_LLM_BATCH_SIZE sets the LLM worker's threads): processes scale.
        ks = kernel_settings(settings, emu.url, {"quotas": {}, "llm_batch_size": 1})
        with LocalKernel(ks, resources=["llm"], progress=log) as lk:
            creds = Credentials(lk.settings)
            kernels = []
            try:
                for i in range(params.agents):
                    agent_id = f"bench-scale-{i:03d}"
                    kernels.append(Kernel(agent_id, settings=lk.settings, timeout_s=timeout_s,
                                          credential=creds.create(agent_id, write_file=False).secret))
                with progress_bars(err, 22) as progress:
                    bar = progress.add_task("measured calls", total=total)
                    for r in range(params.rounds):
                        order = sorted(params.workers, reverse=r % 2 == 1)
                        for n in order:
                            progress.update(bar, description=f"round {r + 1}: {n} worker{'s' * (n > 1)}")
                            set_workers(lk, n)
                            run_block(kernels, WARMUP_PER_WORKER * n, params.max_tokens, None, lambda: None)
                            run_block(kernels, params.calls_per_worker * n, params.max_tokens, blocks[n],
                                      lambda: progress.advance(bar))
            finally:
                for k in kernels:
                    k.close()
                creds.redis.close()
            provider = emu.stats()
    configs = summarize(blocks, service_s)
    value = configs["4"]["vs_linear"]
    result: dict[str, Any] = {
        "benchmark": "scale",
        "machine": machine(),
        "params": {"workers": list(params.workers), "agents": params.agents,
                   "calls_per_worker": params.calls_per_worker, "rounds": params.rounds,
                   "service_ms": params.service_ms, "max_tokens": params.max_tokens, "worker_threads": 1,
                   "warmup_calls_per_worker": WARMUP_PER_WORKER},
        "configs": configs,
        "provider": {"admitted": provider["admitted"], "rejected_429": provider["rejected_429"],
                     "max_in_flight": provider["max_in_flight"]},
        "targets": {TARGET[0]: target(value, TARGET[1], "min")},
    }
    print_table(out, result)
    save(json_path, result, lambda png: plot(png, result), err.log)
    return result
