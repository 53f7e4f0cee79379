"""``aios bench soak``: steady mixed load for a while; does anything grow that should not?

One embedded kernel (all three workers; the LLM is the provider emulator, :mod:`aios_bench.emulator`, so the soak
measures the kernel and not a model's memory), ``agents`` agent threads looping over an LLM chat, a tool syscall
and a file read. Every ``sample_s`` the benchmark records each worker's resident memory (its process tree, from
``/proc``), its open file descriptors, the kernel Redis's ``used_memory`` and the depth of every queue. After the
warm-up (the first fifth of the run) each series should stay flat: its mean over the last fifth at most 5% above its
mean over the first fifth after warm-up. At the end it scans the kernel's Redis: no key that names a syscall of the
run may be left without a TTL.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import redis

from aios.broker.app import make_app
from aios.broker.queues import queue_depth
from aios.ops.embedded import LocalKernel
from aios.policy.identity import Credentials
from aios.sdk.client import Kernel
from aios.settings import QUEUES, Settings
from aios.wire.errors import AIOSError
from aios_bench.common import Bound, consoles, machine, print_targets, save, target
from aios_bench.emulator import DEFAULT_MODEL, EmulatorProcess

GROWTH_GOAL = 0.05
TARGETS: dict[str, tuple[float, Bound]] = {"worker_rss_growth": (GROWTH_GOAL, "max"),
                                           "redis_memory_growth": (GROWTH_GOAL, "max"),
                                           "fd_growth": (GROWTH_GOAL, "max"),
                                           "syscall_keys_without_ttl": (0, "max")}
ID_RE = re.compile(r"[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a Celery worker and any children it spawned)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            pass
    return out


def rss_bytes(pid: int) -> int:
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def open_fds(pid: int) -> int:
    total = 0
    for p in _tree(pid):
        try:
            total += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return total


def growth(series: list[float], warmup_fraction: float = 0.2) -> float | None:
    """Mean of the last fifth over the mean of the first fifth after warm-up, minus one."""
    n = len(series)
    start = int(n * warmup_fraction)
    rest = series[start:]
    k = max(1, len(rest) // 5)
    if len(rest) < 2 * k or not rest[:k] or np.mean(rest[:k]) == 0:
        return None
    return float(np.mean(rest[-k:]) / np.mean(rest[:k]) - 1.0)


def per_kept_answer(samples: list[dict[str, Any]], ttl_s: float) -> list[float]:
    """The kernel Redis's ``used_memory`` over the answers it keeps (those of the last ``ttl_s``), at each sample
    one TTL or more into the run: flat when nothing but the kept answers grows, whatever the syscall rate did (the
    raw figure follows the rate: rate x TTL answers are kept). Empty when the run is shorter than two TTLs."""
    out = []
    for s in samples:
        if s["t_s"] < ttl_s:
            continue
        before = [p for p in samples if p["t_s"] <= s["t_s"] - ttl_s]
        kept = s["done"] - before[-1]["done"] if before else 0
        if kept > 0:
            out.append(s["redis_used_memory"] / kept)
    return out if samples and samples[-1]["t_s"] >= 2 * ttl_s else []


def keys_without_ttl(client: redis.Redis, ids: set[str]) -> dict[str, Any]:
    """Keys with no TTL, by pattern (ids replaced by ``*``), those that name a syscall of the run, and every key
    by pattern (what holds the memory)."""
    patterns: Counter[str] = Counter()
    everything: Counter[str] = Counter()
    per_syscall: list[str] = []
    for raw in client.scan_iter(count=1000):
        name = raw.decode(errors="replace")
        everything[ID_RE.sub("*", name)] += 1
        if client.ttl(raw) != -1:
            continue
        patterns[ID_RE.sub("*", name)] += 1
        if any(m in ids for m in ID_RE.findall(name)):
            per_syscall.append(name)
    return {"patterns": dict(patterns.most_common(40)), "per_syscall": per_syscall[:20],
            "per_syscall_count": len(per_syscall), "all_keys_by_pattern": dict(everything.most_common(10))}


def run_soak(settings: Settings, *, minutes: float, agents: int = 8, sample_s: float = 5.0,
             result_ttl_s: int | None = None, json_path: Path | None = None) -> dict[str, Any]:
    """``result_ttl_s``: the kernel's ``AIOS_RESULT_TTL_S`` (the idempotency window: every answer is kept that
    long, so the kernel's Redis grows with the syscall rate until the first answers expire); ``None``: the
    default (a day). A lower one lowers the visibility and syscall timeouts with it (they must stay below it)."""
    out, err = consoles()
    log = err.log
    samples: list[dict[str, Any]] = []
    ids: set[str] = set()
    outcomes: Counter[str] = Counter()
    data = Path(tempfile.mkdtemp(prefix="aios-soak-"))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, data, True)
        emu = stack.enter_context(EmulatorProcess(service_s=0.05))
        ks = settings.updated(data_dir=str(data), broker_url=None, redis_url=None, llm_backend="openai",
                              llm_base_url=f"{emu.url}/v1", llm_model=DEFAULT_MODEL, llm_api_key="emulated",
                              approvals="off", worker_concurrency=4)
        if result_ttl_s is not None:
            ks = ks.updated(result_ttl_s=result_ttl_s, visibility_timeout_s=result_ttl_s,
                            max_syscall_timeout_s=result_ttl_s / 2, default_timeout_s=result_ttl_s / 2)
        lk = stack.enter_context(LocalKernel(ks, progress=log))
        creds = Credentials(lk.settings)
        kernels = []
        for i in range(agents):
            agent_id = f"soak-{i:03d}"
            k = Kernel(agent_id, settings=lk.settings, credential=creds.create(agent_id, write_file=False).secret)
            stack.callback(k.close)
            k.write_file("notes.txt", f"notes of {agent_id}")
            kernels.append(k)
        creds.redis.close()
        stop = threading.Event()

        def agent(k: Kernel, i: int) -> None:
            while not stop.is_set():
                i += 1
                which = i % 3
                s = (k.llm_syscall("Say hi.", max_tokens=16) if which == 0
                     else k.tool_syscall("echo", {"text": "x" * 64}) if which == 1
                     else k.storage_syscall("read", "notes.txt"))
                ids.add(s.id)
                try:
                    k.call(s)
                    outcomes["ok"] += 1
                except AIOSError as exc:
                    outcomes[exc.code] += 1

        threads = [threading.Thread(target=agent, args=(k, i), daemon=True) for i, k in enumerate(kernels)]
        state = redis.Redis.from_url(lk.settings.state_redis_url())
        app = make_app(lk.settings, name="aios-soak")
        stack.callback(app.close)
        stack.callback(state.close)
        t0 = time.time()
        for t in threads:
            t.start()
        end = t0 + minutes * 60
        log(f"soak: {agents} agents for {minutes:g} min, a sample every {sample_s:g} s")
        while time.time() < end:
            procs = lk.supervised()
            workers = {n: p.pid for n, p in procs.items() if n != "redis"}
            samples.append({
                "t_s": time.time() - t0,
                "rss": {n: rss_bytes(pid) for n, pid in workers.items()},
                "fds": {n: open_fds(pid) for n, pid in workers.items()},
                "redis_used_memory": int(state.info("memory")["used_memory"]),
                "queue_depth": {q: queue_depth(app, lk.settings, q) or 0 for q in QUEUES.values()},
                "done": sum(outcomes.values()),
            })
            time.sleep(max(0.0, min(sample_s, end - time.time())))
        stop.set()
        for t in threads:
            t.join(30)
        time.sleep(1.0)
        leftovers = keys_without_ttl(state, ids)
    names = sorted(samples[0]["rss"]) if samples else []
    rss_total = [float(sum(s["rss"].values())) for s in samples]
    fds_total = [float(sum(s["fds"].values())) for s in samples]
    redis_mem = [float(s["redis_used_memory"]) for s in samples]
    ttl = float(result_ttl_s or settings.broker.result_ttl_s)
    per_kept = per_kept_answer(samples, ttl)
    result: dict[str, Any] = {
        "benchmark": "soak", "machine": machine(),
        "params": {"minutes": minutes, "agents": agents, "sample_s": sample_s, "llm": "emulator (50 ms a call)",
                   "warmup_fraction": 0.2, "result_ttl_s": result_ttl_s or settings.broker.result_ttl_s},
        "syscalls": dict(outcomes), "samples": samples,
        "growth": {"worker_rss": growth(rss_total), "redis_memory": growth(redis_mem), "fds": growth(fds_total),
                   "redis_memory_per_kept_answer": growth(per_kept) if per_kept else None,
                   **{f"rss[{n}]": growth([float(s["rss"].get(n, 0)) for s in samples]) for n in names}},
        "keys_without_ttl": leftovers,
    }
    g = result["growth"]
    result["targets"] = {
        "worker_rss_growth": target(g["worker_rss"], *TARGETS["worker_rss_growth"]),
        "redis_memory_growth": target(g["redis_memory"], *TARGETS["redis_memory_growth"]),
        "fd_growth": target(g["fds"], *TARGETS["fd_growth"]),
        "syscall_keys_without_ttl": target(float(leftovers["per_syscall_count"]), *TARGETS["syscall_keys_without_ttl"]),
    }
    out.print(f"soak: {sum(outcomes.values())} syscalls ({dict(outcomes)}) in {minutes:g} min; growth after warm-up: "
              + ", ".join(f"{k} {'n/a' if v is None else f'{v:+.1%}'}" for k, v in g.items()))
    out.print(f"keys without a TTL: {leftovers['patterns']}")
    print_targets(out, result["targets"], {k: v[1] for k, v in TARGETS.items()})
    save(json_path, result, lambda png: plot(png, result), log)
    return result


def plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    t = [s["t_s"] / 60 for s in samples]
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.5))
    names = sorted(samples[0]["rss"]) if samples else []
    for n in names:
        axes[0, 0].plot(t, [s["rss"].get(n, 0) / 2**20 for s in samples], label=n)
        axes[0, 1].plot(t, [s["fds"].get(n, 0) for s in samples], label=n)
    axes[0, 0].set_title("worker RSS (MiB)")
    axes[0, 1].set_title("open file descriptors")
    axes[1, 0].plot(t, [s["redis_used_memory"] / 2**20 for s in samples])
    axes[1, 0].set_title("kernel Redis used_memory (MiB)")
    for q in QUEUES.values():
        axes[1, 1].plot(t, [s["queue_depth"].get(q, 0) for s in samples], label=q)
    axes[1, 1].set_title("queue depth")
    for ax in axes.flat:
        ax.set_xlabel("minutes")
        ax.set_ylim(bottom=0)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"aios bench soak: {result['params']['agents']} agents, {result['params']['minutes']:g} min")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
