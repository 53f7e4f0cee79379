"""``aios bench ratelimit``: many agents against a rate-limited LLM provider, with and without the kernel.

Each contender runs against a **fresh** provider emulator (:mod:`aios_bench.emulator`) with the same limits,
one after the other in one run:

- **direct** (the baseline): each agent is a thread with its own ``openai.OpenAI`` client (its default retries:
  ``max_retries=2``, honouring ``retry-after``) calling the provider itself;
- **kernel**: each agent is a thread with its own SDK client (``Kernel(agent).llm_chat``); the kernel's LLM worker
  (``--concurrency 16``) calls the provider, under the kernel's global quota ``{"llm": {"rpm", "tpm"}}`` set to the
  provider's limits, over the same window.

Every agent makes ``calls`` chat calls one after the other with the same prompt and ``max_tokens``; an agent whose
call raises stops there and counts as failed.

**Throughput** is read from the provider's own admission times. A sliding window lets a full window's quota
through at once at the start (the burst), so the first window says nothing about the sustained rate: throughput
is counted over the **whole windows after the first**, ``[t0 + W, t0 + (K+1) W)`` where ``t0`` is the first
admission and ``t0 + (K+1) W`` is at or before the last one (so the demand lasted through every counted window),
and compared with the binding limit: ``min(rpm, tpm // tokens per request)`` requests per window.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from aios.ops.embedded import LocalKernel
from aios.policy.identity import Credentials
from aios.sdk.client import Kernel
from aios.settings import Settings
from aios.wire.errors import ConfigError
from aios_bench.common import Bound, consoles, machine, print_targets, progress_bars, save, target
from aios_bench.emulator import DEFAULT_MODEL, EmulatorProcess, prompt_tokens

PROMPT = ("You are one of many agents sharing a rate-limited LLM provider. Summarise in a few words why "
          "a kernel should pace calls to a provider instead of letting every agent retry on its own.")
LLM_WORKER_THREADS = 16
TARGETS: dict[str, tuple[float, Bound]] = {"zero_429": (0, "max"), "zero_failed_agents": (0, "max"),
                                           "throughput_vs_limit": (0.95, "min")}


@dataclass(frozen=True)
class RateParams:
    agents: int = 64
    calls: int = 6
    rpm: int = 48
    """Requests per window (the provider's and the kernel's); per minute when ``window_s`` is 60."""
    tpm: int | None = None
    """Tokens per window; None: 25 % above what ``rpm`` requests use, so that RPM binds."""
    window_s: float = 15.0
    service_ms: float = 100.0
    max_tokens: int = 32
    quota_margin: float = 0.0
    """The kernel's quota is set to ``(1 - quota_margin)`` x the provider's limits (0: exactly them)."""

    @property
    def tokens_per_request(self) -> int:
        return prompt_tokens([{"role": "user", "content": PROMPT}]) + self.max_tokens

    @property
    def tpm_limit(self) -> int:
        return self.tpm if self.tpm is not None else math.ceil(1.25 * self.rpm * self.tokens_per_request)

    @property
    def binding_requests(self) -> int:
        """Requests per window the provider admits at most: the tighter of its two limits."""
        return min(self.rpm, self.tpm_limit // self.tokens_per_request)

    def check(self) -> None:
        if self.agents < 1 or self.calls < 1 or self.max_tokens < 1:
            raise ConfigError(f"--agents, --calls and --max-tokens must be at least 1 (got {self.agents}, "
                              f"{self.calls}, {self.max_tokens})")
        if self.rpm < 1 or (self.tpm is not None and self.tpm < 1) or self.window_s <= 0 or self.service_ms < 0:
            raise ConfigError(f"need --rpm >= 1, --tpm >= 1, --window-s > 0, --service-ms >= 0 (got {self.rpm}, "
                              f"{self.tpm}, {self.window_s}, {self.service_ms})")
        if not 0 <= self.quota_margin < 1:
            raise ConfigError(f"--quota-margin must be in [0, 1) (got {self.quota_margin})")
        if self.binding_requests < 1:
            raise ConfigError(f"--tpm {self.tpm_limit} admits no request of {self.tokens_per_request} tokens; "
                              "raise --tpm or lower --max-tokens")
        total, limit = self.agents * self.calls, self.binding_requests
        if total <= 2 * limit:
            raise ConfigError(
                f"{self.agents} agents x {self.calls} calls = {total} requests is not enough to measure: the first "
                f"window admits a burst of {limit}, and at least one more whole window must be saturated after it "
                f"(more than {2 * limit} requests; 3x for two windows). Raise --calls or lower --rpm/--tpm")


QUICK = RateParams(agents=64, calls=2, rpm=40, window_s=5.0, service_ms=100.0)


@dataclass
class AgentOutcome:
    calls_ok: int = 0
    error: str | None = None


@dataclass
class ContenderRun:
    name: str
    outcomes: list[AgentOutcome]
    wall_s: float
    stats: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


def run_agents(name: str, params: RateParams, make_call: Callable[[int], Callable[[], object]],
               progress: Progress) -> tuple[list[AgentOutcome], float]:
    """``params.agents`` threads, each making ``params.calls`` calls; returns their outcomes and the wall time."""
    bar = progress.add_task(name, total=params.agents * params.calls)
    outcomes = [AgentOutcome() for _ in range(params.agents)]
    calls = [make_call(i) for i in range(params.agents)]
    start = threading.Event()

    def agent(i: int) -> None:
        start.wait()
        out = outcomes[i]
        for _ in range(params.calls):
            try:
                calls[i]()
            except Exception as exc:  # noqa: BLE001 - an agent's unhandled error: it stops, counted as failed
                out.error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                progress.advance(bar, params.calls - out.calls_ok)
                return
            out.calls_ok += 1
            progress.advance(bar)

    threads = [threading.Thread(target=agent, args=(i,), name=f"agent-{i}", daemon=True)
               for i in range(params.agents)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    start.set()
    for t in threads:
        t.join()
    return outcomes, time.perf_counter() - t0


def run_direct(params: RateParams, progress: Progress) -> ContenderRun:
    import openai

    with EmulatorProcess(rpm=params.rpm, tpm=params.tpm_limit, window_s=params.window_s,
                         service_s=params.service_ms / 1000) as emu:
        clients: list[Any] = []

        def make_call(i: int) -> Callable[[], object]:
            client = openai.OpenAI(base_url=f"{emu.url}/v1", api_key="emulated", max_retries=2)
            clients.append(client)
            return lambda: client.chat.completions.create(
                model=DEFAULT_MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=params.max_tokens)

        try:
            outcomes, wall = run_agents("direct (openai client)", params, make_call, progress)
        finally:
            for c in clients:
                c.close()
        return ContenderRun("direct", outcomes, wall, emu.stats(), {"client_max_retries": 2})


def kernel_settings(settings: Settings, base_url: str, updates: dict[str, Any]) -> Settings:
    """``settings`` with the openai backend pointed at the emulator, plus ``updates``; validated (the quota fields
    are typed), so that the workers read back exactly these."""
    values = {**settings.model_dump(), "llm_backend": "openai", "llm_base_url": f"{base_url}/v1",
              "llm_model": DEFAULT_MODEL, "llm_api_key": "emulated", **updates}
    return type(settings)(**{k: v for k, v in values.items() if v is not None})


def run_kernel(settings: Settings, params: RateParams, progress: Progress, log: Callable[[str], None]) -> ContenderRun:
    factor = 1.0 - params.quota_margin
    quota = {"rpm": max(1, math.floor(params.rpm * factor)), "tpm": max(1, math.floor(params.tpm_limit * factor))}
    # Room for the longest wait in the quota: every agent ahead in line, a window per binding limit's worth.
    needed = 3 * math.ceil(params.agents / params.binding_requests) * params.window_s + 60
    timeout_s = min(settings.syscalls.max_syscall_timeout_s, max(120.0, needed))
    with EmulatorProcess(rpm=params.rpm, tpm=params.tpm_limit, window_s=params.window_s,
                         service_s=params.service_ms / 1000) as emu:
        ks = kernel_settings(settings, emu.url, {"quotas": {"llm": quota}, "quota_window_s": params.window_s,
                                                 "quota_mode": "wait"})
        with LocalKernel(ks, resources=["llm"], extra_worker_args=["--concurrency", str(LLM_WORKER_THREADS)],
                         progress=log) as lk:
            creds = Credentials(lk.settings)
            kernels: list[Kernel] = []

            def make_call(i: int) -> Callable[[], object]:
                agent_id = f"bench-agent-{i:03d}"
                secret = creds.create(agent_id, write_file=False).secret
                k = Kernel(agent_id, settings=lk.settings, timeout_s=timeout_s, credential=secret)
                kernels.append(k)
                return lambda: k.llm_chat(PROMPT, max_tokens=params.max_tokens) and None

            # The emulator's clock starts with it; the kernel's start-up is before t0 of any admission anyway.
            try:
                outcomes, wall = run_agents("kernel (SDK, quota)", params, make_call, progress)
            finally:
                for k in kernels:
                    k.close()
                creds.redis.close()
            stats = emu.stats()
    return ContenderRun("kernel", outcomes, wall, stats, {
        "quota": quota, "quota_window_s": params.window_s,
        "llm_worker_threads": LLM_WORKER_THREADS, "syscall_timeout_s": timeout_s})


def steady_throughput(admitted_at: list[float], tokens: list[int], window_s: float) -> dict[str, Any]:
    """Requests and tokens per window over the whole windows after the first (see the module docstring)."""
    if not admitted_at:
        return {"windows": 0, "requests_per_window": None, "tokens_per_window": None, "from_s": None, "to_s": None}
    t0, last = admitted_at[0], admitted_at[-1]
    k = int((last - t0) // window_s) - 1
    if k < 1:
        return {"windows": 0, "requests_per_window": None, "tokens_per_window": None, "from_s": None, "to_s": None}
    lo, hi = t0 + window_s, t0 + (k + 1) * window_s
    inside = [(t, n) for t, n in zip(admitted_at, tokens, strict=True) if lo <= t < hi]
    return {"windows": k, "from_s": lo, "to_s": hi, "requests_per_window": len(inside) / k,
            "tokens_per_window": sum(n for _, n in inside) / k}


def summarize(run: ContenderRun, params: RateParams) -> dict[str, Any]:
    s = run.stats
    steady = steady_throughput(s["admitted_at"], s["admitted_tokens"], params.window_s)
    per_min = 60.0 / params.window_s
    rpw = steady["requests_per_window"]
    failed = [o.error for o in run.outcomes if o.error]
    t0 = s["admitted_at"][0] if s["admitted_at"] else 0.0
    span = (s["admitted_at"][-1] - s["admitted_at"][0]) if s["admitted_at"] else 0.0
    return {
        "agents": len(run.outcomes), "failed_agents": len(failed),
        "calls_ok": sum(o.calls_ok for o in run.outcomes), "calls_asked": params.agents * params.calls,
        "admitted": s["admitted"], "provider_429": s["rejected_429"],
        "provider_429_requests": s["rejected_requests"], "provider_429_tokens": s["rejected_tokens"],
        "prompt_tokens": s["prompt_tokens"], "completion_tokens": s["completion_tokens"],
        "max_in_flight": s["max_in_flight"], "wall_s": run.wall_s, "admission_span_s": span,
        "steady": steady,
        "requests_per_window": rpw, "tokens_per_window": steady["tokens_per_window"],
        "requests_per_min": None if rpw is None else rpw * per_min,
        "tokens_per_min": None if rpw is None else steady["tokens_per_window"] * per_min,
        "throughput_vs_limit": None if rpw is None else rpw / params.binding_requests,
        "overall_requests_per_min": s["admitted"] / run.wall_s * 60.0 if run.wall_s else None,
        "errors": sorted({e.split(":")[0] for e in failed}), "first_errors": failed[:3], **run.extra,
        # The provider's own record, in seconds since the first admission (for plots and a closer look).
        "timeline": {"admitted_at": [round(t - t0, 4) for t in s["admitted_at"]],
                     "rejected_at": [round(t - t0, 4) for t in s["rejected_at"]]},
    }


def targets_of(kern: dict[str, Any]) -> dict[str, dict[str, Any]]:
    values = {"zero_429": kern["provider_429"], "zero_failed_agents": kern["failed_agents"],
              "throughput_vs_limit": kern["throughput_vs_limit"] or 0.0}
    return {name: target(values[name], goal, bound) for name, (goal, bound) in TARGETS.items()}


def _fmt(v: Any, spec: str = ".0f") -> str:
    return "n/a" if v is None else format(v, spec)


def print_table(console: Console, result: dict[str, Any]) -> None:
    p, lim = result["params"], result["limits"]
    table = Table(title=f"aios bench ratelimit: {p['agents']} agents x {p['calls']} calls against "
                        f"{lim['rpm']} requests / {lim['tpm']} tokens per {lim['window_s']:g} s window")
    table.add_column("")
    for name in ("direct", "kernel"):
        table.add_column(name, justify="right")
    d, k = result["direct"], result["kernel"]
    rows = [("requests admitted", "admitted", "d"), ("429s seen by the provider", "provider_429", "d"),
            ("failed agents", "failed_agents", "d"), ("calls that succeeded", "calls_ok", "d"),
            ("steady requests / min", "requests_per_min", ".0f"), ("steady tokens / min", "tokens_per_min", ".0f"),
            ("throughput / limit", "throughput_vs_limit", ".3f"), ("total time (s)", "wall_s", ".1f")]
    for label, key, spec in rows:
        table.add_row(label, _fmt(d[key], spec), _fmt(k[key], spec))
    console.print(table)
    console.print(f"  limit: {lim['binding_requests']} requests per window ({lim['binding_requests_per_min']:.0f}/min,"
                  f" {lim['binding']} binds); steady throughput over the whole windows after the first "
                  f"(kernel: {k['steady']['windows']}, direct: {d['steady']['windows']})", highlight=False)
    print_targets(console, result["targets"], {name: bound for name, (_, bound) in TARGETS.items()})


def plot(path: Path, runs: list[ContenderRun], result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    lim = result["limits"]
    w, r = lim["window_s"], lim["binding_requests"]
    colors = {"direct": "tab:blue", "kernel": "tab:orange"}
    fig, (ax, ax_bar) = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [2.2, 1]})
    horizon = 0.0
    for run in runs:
        at = np.asarray(run.stats["admitted_at"])
        if at.size:
            t = at - at[0]
            horizon = max(horizon, float(t[-1]))
            ax.step(t, np.arange(1, t.size + 1), where="post", color=colors[run.name],
                    label=f"{run.name}: admitted ({at.size})")
            rej = np.asarray(run.stats["rejected_at"]) - at[0]
            if rej.size:
                ax.plot(rej, np.interp(rej, t, np.arange(1, t.size + 1)), "x", ms=4, alpha=0.5,
                        color=colors[run.name], label=f"{run.name}: 429 ({rej.size})")
    xs = np.arange(0, horizon + w, w)
    ax.step(xs, r * (np.arange(xs.size) + 1), where="post", color="gray", ls="--",
            label=f"limit: {r} per {w:g} s window")
    ax.set_xlabel("seconds since the first admitted request")
    ax.set_ylabel("requests admitted by the provider")
    ax.set_title("admissions over time")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    names = ["direct", "kernel"]
    ratios = [result[n]["throughput_vs_limit"] or 0.0 for n in names]
    bars = ax_bar.bar(names, ratios, color=[colors[n] for n in names])
    ax_bar.bar_label(bars, labels=[f"{v:.2f}\n429s {result[n]['provider_429']}, failed {result[n]['failed_agents']}"
                                   for n, v in zip(names, ratios, strict=True)], fontsize=8)
    ax_bar.axhline(0.95, color="green", ls=":", label="goal 0.95")
    ax_bar.set_ylim(0, max(1.2, max(ratios) * 1.25))
    ax_bar.set_ylabel("steady throughput / limit")
    ax_bar.set_title("throughput vs the provider's limit")
    ax_bar.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"aios bench ratelimit: {result['params']['agents']} agents, {result['machine']['cpus']} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_ratelimit(settings: Settings, params: RateParams = RateParams(), *, json_path: Path | None = None
                  ) -> dict[str, Any]:
    """Run the benchmark, print its table, write JSON (and a PNG beside it) when asked; return the figures."""
    params.check()
    out, err = consoles()
    log = err.log
    runs: list[ContenderRun] = []
    with progress_bars(err, 24) as progress:
        runs.append(run_direct(params, progress))
        runs.append(run_kernel(settings, params, progress, log))
    limit = params.binding_requests
    result: dict[str, Any] = {
        "benchmark": "ratelimit",
        "machine": machine(),
        "params": {"agents": params.agents, "calls": params.calls, "max_tokens": params.max_tokens,
                   "prompt_tokens": params.tokens_per_request - params.max_tokens,
                   "tokens_per_request": params.tokens_per_request, "service_ms": params.service_ms,
                   "quota_margin": params.quota_margin,
                   "measure": "steady: whole windows after the first, up to the last admission"},
        "limits": {"rpm": params.rpm, "tpm": params.tpm_limit, "window_s": params.window_s,
                   "binding_requests": limit, "binding_requests_per_min": limit * 60.0 / params.window_s,
                   "binding": "rpm" if params.rpm * params.tokens_per_request <= params.tpm_limit else "tpm"},
        **{run.name: summarize(run, params) for run in runs},
    }
    result["targets"] = targets_of(result["kernel"])
    print_table(out, result)
    save(json_path, result, lambda png: plot(png, runs, result), err.log)
    return result
