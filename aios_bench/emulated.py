"""``aios bench agents --emulated``: the paper's scale, 250 to 2000 concurrent agents against an emulated GPU.

Each agent makes ``calls`` LLM calls one after the other (a ~``prompt_tokens`` prompt, 0.5 to 1.5 x ``max_tokens``
out, fixed per call: :func:`out_tokens`; the agents start spread over ``ramp_s``, after an untimed warm-up call each) against
the provider emulator (:mod:`aios_bench.emulator`) serving with the service time of an 8B model on one GPU
(:class:`~aios_bench.gpu_model.GPUShape`: continuous batching of at most 256 sequences, per-step decode cost and a
prefill cost). Two contenders per agent count, each against a freshly started emulator:

- ``direct``: the agents are asyncio tasks of this process posting to the emulator, each with its own ``httpx``
  client (openai's, without its models: the cheapest client, so that this process's own cost stays small; no
  kernel);
- ``kernel``: the agents are asyncio tasks, each an :class:`~aios.sdk.AsyncKernel` with its own credential, on a
  fresh embedded kernel whose ``workers`` LLM worker processes (openai backend) together have a thread for every
  agent, so that the requests wait in the emulator's batch queue, as the direct agents' do, and not for a thread.

Every request carries ``[req TAG]``; the emulator records when each tagged request arrived and was answered. Per
call: **wait** = what the agent saw (submission to answer); **overhead** = wait minus the emulator's own time for
that request (its queue and its batched service): for ``direct`` the HTTP client and the event loop, for ``kernel``
the SDK, the broker both ways, the worker's pipeline and its HTTP call. The kernel's overhead is split by the
reply's timing (created, started, finished: Unix times on this machine) into SDK publish, to the worker (broker
and the worker's intake), worker before and after the provider call, and the reply. Makespan: first submission to
last answer.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from aios.ops.embedded import LocalKernel
from aios.policy.identity import Credentials
from aios.settings import Settings
from aios.wire.errors import ConfigError
from aios_bench.emulator import DEFAULT_MODEL, EmulatorProcess
from aios_bench.gpu_model import GPUShape
from aios_bench.ratelimit import kernel_settings

SYSTEM = "You are one of many agents sharing one GPU server."
TIMEOUT_S = 600.0
"""Per call: the kernel's default AIOS_MAX_SYSCALL_TIMEOUT_S (it refuses longer ones)."""


@dataclass(frozen=True)
class EmulatedParams:
    agents: tuple[int, ...] = (250, 500, 1000, 2000)
    calls: int = 2
    max_tokens: int = 256
    prompt_tokens: int = 400
    workers: int = 4
    """LLM worker processes of the kernel; their threads together: one per agent."""
    ramp_s: float = 5.0
    """Agents start spread over this long (a load generator's spawn rate), not all in one instant: the agents of
    this one driver process would otherwise queue behind each other's first publish, and that queue is the
    driver's, not the kernel's."""
    gpu: GPUShape = field(default_factory=GPUShape)

    def check(self) -> None:
        if not self.agents or min(self.agents) < 1 or self.calls < 1 or self.max_tokens < 1 or self.workers < 1 \
                or self.ramp_s < 0:
            raise ConfigError("--emulated needs agent counts >= 1, calls, max_tokens and workers >= 1, ramp >= 0")


QUICK = EmulatedParams(agents=(50, 100), calls=2, max_tokens=64, prompt_tokens=100, workers=2, ramp_s=1.0)


def out_tokens(mean: int, agent: int, call: int) -> int:
    """The call's output length: from half to one and a half times ``mean``, fixed per agent and call. Real outputs
    end at different lengths; equal ones would all leave the GPU's batch in the same step and reach the agents in
    one burst, which measures the receiving process, not the path."""
    return max(1, round(mean * (0.5 + ((agent * 7 + call * 13) % 101) / 100)))


def prompt(tag: str, tokens: int) -> list[dict[str, str]]:
    """A user message of about ``tokens`` tokens (the emulator counts 4 characters a token) carrying its tag."""
    head = f"[req {tag}] Plan the next step of the task and explain it. "
    filler = "Context so far: the tool answered and the plan goes on. "
    body = head + filler * max(0, math.ceil((tokens * 4 - len(head) - len(SYSTEM)) / len(filler)))
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": body}]


@dataclass
class Sample:
    tag: str
    t0: float
    t1: float
    timing: Any = None
    ok: bool = True
    error: str = ""


WARM_UP_AT_ONCE = 64


async def _agents(n: int, p: EmulatedParams, call: Callable[[int, int, int], Any]) -> list[Sample]:
    """Every agent's warm-up call first (one token, untimed, at most 64 at once: an agent's first call sets up its
    connection), then ``n`` agent tasks, agent i starting ``i / n`` of the way into ``p.ramp_s``, each making
    ``p.calls`` calls in turn (``call(agent, index, max_tokens)``); every timed call's sample."""
    room = asyncio.Semaphore(WARM_UP_AT_ONCE)

    async def warm_up(i: int) -> None:
        async with room:
            await call(i, -1, 1)

    await asyncio.gather(*(warm_up(i) for i in range(n)))

    async def agent(i: int) -> list[Sample]:
        await asyncio.sleep(i * p.ramp_s / n)
        return [await call(i, c, out_tokens(p.max_tokens, i, c)) for c in range(p.calls)]

    return [s for group in await asyncio.gather(*(agent(i) for i in range(n))) for s in group]


def run_direct(url: str, n: int, p: EmulatedParams) -> list[Sample]:
    import httpx2  # openai's own HTTP client (3.x), without openai's request and response models: the cheapest
    # client this process can be, so that its own cost stays small beside the kernel's

    async def main() -> list[Sample]:
        # A client per agent, as each agent holds its own: one pool of 2000 connections costs every request a
        # walk of the whole pool (httpcore), which measured that pool (seconds per call at 2000), not the path.
        clients = [httpx2.AsyncClient(timeout=TIMEOUT_S) for _ in range(n)]

        async def call(i: int, c: int, max_tokens: int) -> Sample:
            tag = f"d{i}-{c}"
            t0 = time.time()
            try:
                resp = await clients[i].post(f"{url}/v1/chat/completions", json={
                    "model": DEFAULT_MODEL, "messages": prompt(tag, p.prompt_tokens), "max_tokens": max_tokens})
                resp.raise_for_status()
                resp.json()["choices"][0]["message"]["content"]
            except Exception as exc:  # noqa: BLE001 - counted as an error; the run goes on
                return Sample(tag, t0, time.time(), ok=False, error=repr(exc))
            return Sample(tag, t0, time.time())

        try:
            return await _agents(n, p, call)
        finally:
            for client in clients:
                await client.aclose()

    return asyncio.run(main())


def run_kernel(settings: Settings, url: str, n: int, p: EmulatedParams, log: Callable[[str], None]) -> list[Sample]:
    from aios.sdk import AsyncKernel

    threads = math.ceil(n / p.workers)
    ks = kernel_settings(settings, url, {"quotas": {}, "llm_request_timeout_s": TIMEOUT_S, "llm_client_retries": 0,
                                         "data_dir": Path(settings.data_dir) / "bench-emulated"})
    with LocalKernel(ks, resources=["llm"], extra_worker_args=["--concurrency", str(threads)], progress=log) as lk:
        if p.workers > 1:
            lk.add_workers("llm", p.workers - 1)
        creds = Credentials(lk.settings)
        log(f"creating {n} agents' credentials")
        secrets = [creds.create(f"bench-emu-{i}", write_file=False).secret for i in range(n)]

        async def main() -> list[Sample]:
            kernels = [AsyncKernel(f"bench-emu-{i}", settings=lk.settings, timeout_s=TIMEOUT_S, credential=secrets[i])
                       for i in range(n)]

            async def call(i: int, c: int, max_tokens: int) -> Sample:
                k, tag = kernels[i], f"k{i}-{c}"
                t0 = time.time()
                try:
                    pending = await k.submit(k.llm_syscall(prompt(tag, p.prompt_tokens), "text",
                                                           max_tokens=max_tokens))
                    response = await k.wait_response(pending)
                    return Sample(tag, t0, time.time(), response.timing, response.error is None,
                                  "" if response.error is None else response.error.message)
                except Exception as exc:  # noqa: BLE001 - counted as an error; the run goes on
                    return Sample(tag, t0, time.time(), ok=False, error=repr(exc))

            try:
                return await _agents(n, p, call)
            finally:
                for k in kernels:
                    await k.aclose()

        return asyncio.run(main())


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarize(samples: list[Sample], served: dict[str, list[float]]) -> dict[str, Any]:
    """Makespan, waits and overheads (ms) of one contender at one agent count; see the module docstring."""
    ok = [s for s in samples if s.ok and s.tag in served]
    waits = [s.t1 - s.t0 for s in ok]
    overhead = [1000 * ((s.t1 - s.t0) - (served[s.tag][1] - served[s.tag][0])) for s in ok]
    out: dict[str, Any] = {
        "calls": len(samples), "errors": len(samples) - len(ok),
        "first_error": next((s.error for s in samples if s.error), None),
        "makespan_s": max(s.t1 for s in samples) - min(s.t0 for s in samples),
        "avg_wait_s": float(np.mean(waits)) if waits else None, "p90_wait_s": _pct(waits, 90),
        "overhead_p50_ms": _pct(overhead, 50), "overhead_p99_ms": _pct(overhead, 99),
        "overhead_avg_ms": float(np.mean(overhead)) if overhead else None,
    }
    # Each agent's first call comes in the start ramp, faster than the GPU serves (the start burst); its later
    # calls come as earlier ones finish, at the GPU's pace (the steady state). Both are in the figures above.
    later = [o for s, o in zip(ok, overhead, strict=True) if not s.tag.endswith("-0")]
    out["overhead_later_p50_ms"], out["overhead_later_p99_ms"] = _pct(later, 50), _pct(later, 99)
    timed = [s for s in ok if s.timing is not None]
    if timed:
        parts = {
            "to_worker": [s.timing.started_at - s.timing.created_at for s in timed],
            "worker_before_provider": [served[s.tag][0] - s.timing.started_at for s in timed],
            "worker_after_provider": [s.timing.finished_at - served[s.tag][1] for s in timed],
            "reply": [s.t1 - s.timing.finished_at for s in timed],
        }
        out["parts_ms"] = {name: {"p50": 1000 * float(np.percentile(v, 50)), "p99": 1000 * float(np.percentile(v, 99))}
                           for name, v in parts.items()}
    return out


def run_emulated(settings: Settings, p: EmulatedParams, log: Callable[[str], None]) -> dict[str, Any]:
    p.check()
    results: dict[str, dict[str, Any]] = {"direct": {}, "kernel": {}}
    emu_stats: dict[str, dict[str, Any]] = {}
    for n in p.agents:
        for name in ("direct", "kernel"):
            log(f"emulated: {name}, {n} agents x {p.calls} calls")
            with EmulatorProcess(gpu=p.gpu) as emu:
                t = time.monotonic()
                samples = run_direct(emu.url, n, p) if name == "direct" else run_kernel(settings, emu.url, n, p, log)
                stats = emu.stats()
            results[name][str(n)] = summarize(samples, stats["served"])
            emu_stats[f"{name}/{n}"] = {"gpu_steps": stats["gpu_steps"], "gpu_max_running": stats["gpu_max_running"]}
            r = results[name][str(n)]
            log(f"  makespan {r['makespan_s']:.1f} s, overhead p50/p99 {r['overhead_p50_ms'] or 0:.1f}/"
                f"{r['overhead_p99_ms'] or 0:.1f} ms, errors {r['errors']} ({time.monotonic() - t:.0f} s)")
    top = str(max(p.agents))
    ideal = {str(n): _ideal_makespan(p, n) for n in p.agents}
    return {"params": {**asdict(p), "agents": list(p.agents)}, "results": results, "emulator": emu_stats,
            "ideal_makespan_s": ideal, "max_agents": max(p.agents),
            "overhead_p99_ms_at_max": results["kernel"][top]["overhead_p99_ms"]}


def _ideal_makespan(p: EmulatedParams, n: int) -> float:
    """The emulated GPU's own makespan for the whole load, had every request been there at once (a lower bound
    for the direct agents, whose calls come in turn): full batches, one prefill step each."""
    shape, total = p.gpu, n * p.calls
    full, rest = divmod(total, shape.max_batch)
    batches = [shape.max_batch] * full + ([rest] if rest else [])
    return sum((shape.step_ms(b, b * p.prompt_tokens) + (p.max_tokens - 1) * shape.step_ms(b, 0)) / 1000
               for b in batches)


def print_table(console: Console, e: dict[str, Any]) -> None:
    p = e["params"]
    table = Table(title=f"aios bench agents --emulated: agents x {p['calls']} calls ({p['prompt_tokens']} prompt, "
                        f"{p['max_tokens']} out) against an emulated 8B model on one GPU (batch {p['gpu']['max_batch']})")
    for col in ("contender", "agents", "makespan s", "avg wait s", "p90 wait s", "overhead p50 ms",
                "overhead p99 ms", "later calls p99 ms", "errors"):
        table.add_column(col, justify="left" if col == "contender" else "right")
    def fmt(v: float | None, f: str) -> str:
        return "-" if v is None else format(v, f)

    for n in p["agents"]:
        for name in ("direct", "kernel"):
            r = e["results"][name][str(n)]
            table.add_row(name, str(n), fmt(r["makespan_s"], ".1f"), fmt(r["avg_wait_s"], ".2f"),
                          fmt(r["p90_wait_s"], ".2f"), fmt(r["overhead_p50_ms"], ".1f"),
                          fmt(r["overhead_p99_ms"], ".1f"), fmt(r["overhead_later_p99_ms"], ".1f"), str(r["errors"]))
    console.print(table)


def plot(path: Path, e: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = e["params"]["agents"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, style, color in (("direct", "o--", "tab:blue"), ("kernel", "o-", "tab:orange")):
        r = [e["results"][name][str(n)] for n in ns]
        axes[0].plot(ns, [x["makespan_s"] for x in r], style, color=color, label=name)
        axes[1].plot(ns, [x["avg_wait_s"] for x in r], style, color=color, label=f"{name} avg")
        axes[1].plot(ns, [x["p90_wait_s"] for x in r], style, color=color, alpha=0.4, label=f"{name} p90")
        axes[2].plot(ns, [x["overhead_p50_ms"] for x in r], style, color=color, label=f"{name} p50")
        axes[2].plot(ns, [x["overhead_p99_ms"] for x in r], style, color=color, alpha=0.4, label=f"{name} p99")
    axes[2].set_yscale("log")
    axes[0].plot(ns, [e["ideal_makespan_s"][str(n)] for n in ns], ":", color="gray", label="GPU alone (bound)")
    axes[2].axhline(10, color="red", linestyle=":", label="goal p99 at 2000")
    for ax, title in zip(axes, ("makespan (s)", "wait per call (s)", "overhead per call (ms)"), strict=True):
        ax.set_xlabel("concurrent agents")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("aios bench agents --emulated: an 8B model on one GPU, emulated; overhead = wait - emulator's time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
