"""``aios bench agents``: the paper's efficiency experiment, contenders side by side.

N concurrent ReAct-style agents run a fixed script each: ``steps`` times an LLM syscall (fixed prompt, greedy,
fixed ``max_tokens``: most steps short, every eighth long, so that syscalls differ in length as real ones do)
followed by a calculator tool syscall. Greedy decoding makes every contender generate the same tokens, so every
contender does the same work. Two workloads on the real local model:

- **single turn** (the default, ``--agents 8,16,32``): each LLM call is a system prompt and the step's prompt;
- **multi turn** (``--multi-turn``, 16 agents x 6 steps): each LLM call carries the agent's whole conversation so
  far (every earlier prompt, the model's answer to it, the tool's result as an "Observation"), as ReAct agents and
  chat histories do: a server that keeps an agent's KV cache prefills only the new turn.

The contenders (:mod:`aios_bench.contenders`): ``baseline`` (``python -m llama_cpp.server``), ``llama_server``
(llama.cpp's own ``llama-server -np <batch size>``, built once by :mod:`aios_bench.llama_server_build`; skipped
with the reason where it cannot be built), and the kernel as ``fifo``, ``rr`` and ``batching``. Every contender is
started fresh for each workload and N (both servers and the kernel cache prompts; no real workload repeats a run).

Figures per contender and N: total time, average and p90 syscall waiting time (submission to answer), average
and p90 agent completion time, syscalls/s, generated tokens/s and prompt tokens. ``--emulated`` adds the paper's
scale (:mod:`aios_bench.emulated`): thousands of agents against the provider emulator.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from aios.services.llm.service import default_model_path
from aios.settings import Settings
from aios.wire.errors import ConfigError
from aios_bench import llama_server_build
from aios_bench.common import Bound, consoles, machine, print_targets, progress_bars, save, target
from aios_bench.contenders import KernelContender, LlamaCppPython, LlamaServer, Messages

CONTENDERS = ("baseline", "llama_server", "fifo", "rr", "batching")
DEFAULT_CONTENDERS = ("baseline", "llama_server", "fifo", "rr", "batching")
SYSTEM = "You are a helpful assistant."
TOPICS = ("a robot who learns to paint", "a lighthouse keeper", "a city under the sea", "a talking cat",
          "the first train to the moon", "a library that never closes", "a dragon who fears fire", "a lost map")
WARM_UP: Messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Say hello."}]


@dataclass
class Step:
    kind: str  # "llm" or "tool"
    prompt: str = ""
    max_tokens: int = 0
    expression: str = ""


def script(agent: int, steps: int, short: int, long: int) -> list[Step]:
    out = []
    for s in range(steps):
        topic = TOPICS[(agent + s) % len(TOPICS)]
        out.append(Step("llm", prompt=f"Agent {agent}, step {s}: write a detailed story about {topic}.",
                        max_tokens=long if (agent + s) % 8 == 0 else short))
        out.append(Step("tool", expression=f"{agent + 2} * {s + 3} + 1"))
    return out


class Conversation:
    """What an agent sends: the step's prompt alone (single turn) or after the whole conversation (multi turn)."""

    def __init__(self, multi_turn: bool) -> None:
        self.multi_turn = multi_turn
        self.history: Messages = [{"role": "system", "content": SYSTEM}]
        self._observation: str | None = None

    def ask(self, step: Step) -> Messages:
        if not self.multi_turn:
            return [self.history[0], {"role": "user", "content": step.prompt}]
        text = step.prompt if self._observation is None else f"Observation: {self._observation}. {step.prompt}"
        self._observation = None
        return [*self.history, {"role": "user", "content": text}]

    def answered(self, asked: Messages, content: str) -> None:
        if self.multi_turn:
            self.history = [*asked, {"role": "assistant", "content": content}]

    def observe(self, result: str) -> None:
        self._observation = result


@dataclass
class Record:
    waits: list[float] = field(default_factory=list)
    agent_times: list[float] = field(default_factory=list)
    syscalls: int = 0
    tokens: int = 0
    prompt_tokens: int = 0
    errors: int = 0
    first_error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def run_agents(contender: Any, n: int, steps: int, short: int, long: int, progress: Progress, task: Any,
               multi_turn: bool = False) -> dict[str, Any]:
    rec = Record()
    clients = [contender.agent(i) for i in range(n)]
    barrier = threading.Barrier(n + 1)

    def agent(i: int) -> None:
        client = clients[i]
        talk = Conversation(multi_turn)
        barrier.wait()
        t_agent = time.perf_counter()
        for step in script(i, steps, short, long):
            t0 = time.perf_counter()
            prompt = tokens = 0
            try:
                if step.kind == "llm":
                    asked = talk.ask(step)
                    prompt, tokens, content = contender.llm(client, asked, step.max_tokens)
                    talk.answered(asked, content)
                else:
                    talk.observe(contender.tool(client, step.expression))
                error = None
            except Exception as exc:  # noqa: BLE001 - counted; the run goes on
                error = repr(exc)
            with rec.lock:
                rec.waits.append(time.perf_counter() - t0)
                rec.syscalls += 1
                rec.tokens += tokens
                rec.prompt_tokens += prompt
                rec.errors += 0 if error is None else 1
                rec.first_error = rec.first_error or error
            progress.advance(task)
        with rec.lock:
            rec.agent_times.append(time.perf_counter() - t_agent)

    threads = [threading.Thread(target=agent, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    total = time.perf_counter() - t0
    for c in clients:
        contender.close_agent(c)
    waits, agents = np.asarray(rec.waits), np.asarray(rec.agent_times)
    return {"n_agents": n, "steps": steps, "total_time_s": total, "avg_wait_s": float(waits.mean()),
            "p90_wait_s": float(np.percentile(waits, 90)), "avg_agent_time_s": float(agents.mean()),
            "p90_agent_time_s": float(np.percentile(agents, 90)), "syscalls": rec.syscalls,
            "syscalls_per_s": rec.syscalls / total, "tokens": rec.tokens, "tokens_per_s": rec.tokens / total,
            "prompt_tokens": rec.prompt_tokens, "errors": rec.errors, "first_error": rec.first_error}


TARGETS: dict[str, tuple[float, Bound]] = {
    "multi_turn_vs_llama_server": (1.25, "min"),
    "single_turn_vs_llama_server": (1.0, "min"),
    "speedup_total_time_n32": (2.5, "min"),
    "rr_p90_wait_vs_fifo": (1.0, "max"),
    "emulated_2000_overhead_p99_ms": (10.0, "max"),
}


def _ratio(slow: dict[str, Any] | None, fast: dict[str, Any] | None, key: str = "total_time_s") -> float | None:
    return slow[key] / fast[key] if slow and fast else None


def targets(results: dict[str, dict[int, dict[str, Any]]], ns: list[int],
            multi: dict[str, dict[str, Any]] | None = None, emulated: dict[str, Any] | None = None
            ) -> dict[str, dict[str, Any]]:
    """Every target; one whose workload did not run (or whose contender was skipped) has value None, not met.
    Total-time ratios are the slower contender's time over the kernel's (``batching``): above 1, the kernel wins."""
    at32 = {name: by_n.get(32) for name, by_n in results.items()}
    n = 32 if 32 in ns else max(ns)
    multi = multi or {}
    overhead = (emulated or {}).get("overhead_p99_ms_at_max")
    values = {
        "multi_turn_vs_llama_server": _ratio(multi.get("llama_server"), multi.get("batching")),
        "single_turn_vs_llama_server": _ratio(at32.get("llama_server"), at32.get("batching")),
        "speedup_total_time_n32": _ratio(at32.get("baseline"), at32.get("batching")),
        "rr_p90_wait_vs_fifo": _ratio(results.get("rr", {}).get(n), results.get("fifo", {}).get(n), "p90_wait_s"),
        "emulated_2000_overhead_p99_ms": overhead if (emulated or {}).get("max_agents") == 2000 else None,
    }
    out = {name: target(values[name], *TARGETS[name]) for name in TARGETS}
    out["rr_p90_wait_vs_fifo"]["n_agents"] = n
    return out


def ratios(results: dict[str, dict[int, dict[str, Any]]], ns: list[int]) -> dict[str, dict[str, float]]:
    """Total-time speedups of each kernel contender over each server, and of batching over FIFO, per N."""
    out: dict[str, dict[str, float]] = {}
    pairs = [(c, s) for s in ("baseline", "llama_server") for c in ("fifo", "rr", "batching")] + [("batching", "fifo")]
    for fast, slow in pairs:
        if fast in results and slow in results:
            out[f"{fast}_vs_{slow}"] = {str(n): results[slow][n]["total_time_s"] / results[fast][n]["total_time_s"]
                                        for n in ns}
    return out


def _row(table: Table, name: str, n: int, r: dict[str, Any], base: dict[str, Any] | None,
         peer: dict[str, Any] | None) -> None:
    speed = f"{base['total_time_s'] / r['total_time_s']:.2f}x" if base else "-"
    vs_peer = f"{peer['total_time_s'] / r['total_time_s']:.2f}x" if peer else "-"
    table.add_row(name, str(n), f"{r['total_time_s']:.1f}", f"{r['avg_wait_s']:.2f}", f"{r['p90_wait_s']:.2f}",
                  f"{r['syscalls_per_s']:.2f}", f"{r['tokens_per_s']:.0f}", str(r["prompt_tokens"]), speed, vs_peer,
                  str(r["errors"]))


def _table(title: str) -> Table:
    table = Table(title=title)
    for col in ("contender", "N", "total s", "avg wait s", "p90 wait s", "syscalls/s", "tokens/s", "prompt tok",
                "vs baseline", "vs llama-server", "errors"):
        table.add_column(col, justify="left" if col == "contender" else "right")
    return table


def print_table(console: Console, result: dict[str, Any]) -> None:
    res, p = result["results"], result["params"]
    if res:
        table = _table(f"aios bench agents: N concurrent agents x {p['steps']} steps, single turn")
        for n in p["agents"]:
            for name in res:
                _row(table, name, n, res[name][str(n)], res.get("baseline", {}).get(str(n)),
                     res.get("llama_server", {}).get(str(n)))
        console.print(table)
    if result.get("multi_turn"):
        multi, mp = result["multi_turn"]["results"], result["multi_turn"]["params"]
        table = _table(f"aios bench agents --multi-turn: {mp['agents']} agents x {mp['steps']} steps, "
                       "each call carries the whole conversation")
        for name, r in multi.items():
            _row(table, name, mp["agents"], r, multi.get("baseline"), multi.get("llama_server"))
        console.print(table)
    if result.get("emulated"):
        from aios_bench.emulated import print_table as print_emulated

        print_emulated(console, result["emulated"])
    for name, reason in result.get("skipped", {}).items():
        console.print(f"  [yellow]skipped {name}[/]: {reason}", highlight=False)
    print_targets(console, result["targets"], {name: bound for name, (_, bound) in TARGETS.items()})


def plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns, res = result["params"]["agents"], result["results"]
    if result.get("emulated"):  # its own PNG: beside the single-turn one, or in its place
        from aios_bench.emulated import plot as plot_emulated

        plot_emulated(path.with_name(path.stem + "-emulated.png") if res else path, result["emulated"])
    if not res:
        return
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    for ax, key, label in zip(axes, ("total_time_s", "avg_wait_s", "p90_wait_s", "tokens_per_s"),
                              ("total time (s)", "average wait (s)", "p90 wait (s)", "tokens/s"), strict=True):
        for name in res:
            ax.plot(ns, [res[name][str(n)][key] for n in ns], marker="o", label=name)
        ax.set_xlabel("concurrent agents")
        ax.set_title(label)
        ax.set_xticks(ns)
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    m = result["machine"]
    fig.suptitle(f"aios bench agents: SmolLM2-135M, {result['params']['n_threads']} llama.cpp thread(s) on "
                 f"{m['cpus']} CPUs; batch {result['params']['batch_size']}, quantum {result['params']['quantum']} tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _llama_server(contenders: set[str], given: Path | None, log: Any) -> tuple[Path | None, str | None]:
    """The llama-server binary, or why there is none (then the contender is skipped)."""
    if "llama_server" not in contenders:
        return None, None
    if given is not None:
        return (given, None) if given.is_file() else (None, f"--llama-server {given} is not a file")
    try:
        return llama_server_build.find_or_build(log), None
    except llama_server_build.Unavailable as exc:
        return None, str(exc)


def run_agents_bench(settings: Settings, *, agents: list[int], steps: int = 3, short: int = 24, long: int = 160,
                     batch_size: int = 16, quantum: int = 16, threads: int = 2,
                     contenders: tuple[str, ...] = DEFAULT_CONTENDERS, single_turn: bool = True,
                     multi_turn: bool = False, multi_agents: int = 16, multi_steps: int = 6,
                     multi_contenders: tuple[str, ...] = ("llama_server", "batching"),
                     emulated: Any = None, llama_server: Path | None = None,
                     json_path: Path | None = None) -> dict[str, Any]:
    """Run the workloads asked for (single turn, ``multi_turn``, ``emulated``: an
    :class:`~aios_bench.emulated.EmulatedParams`), print the tables, write JSON (and PNGs beside it)."""
    if not agents or min(agents) < 1 or steps < 1 or short < 1 or long < 1 or multi_agents < 1 or multi_steps < 1:
        raise ConfigError("need --agents >= 1, --steps >= 1 and positive --short/--long token counts")
    unknown = (set(contenders) | set(multi_contenders)) - set(CONTENDERS)
    if unknown:
        raise ConfigError(f"unknown contenders {sorted(unknown)}; known: {', '.join(CONTENDERS)}")
    if not (single_turn or multi_turn or emulated):
        raise ConfigError("nothing to run: the single-turn workload is off and neither --multi-turn nor --emulated")
    out, err = consoles()
    log = err.log
    settings = settings.updated(**{"broker_url": None, "redis_url": None, "llm_backend": "llamacpp",
                                   "llm_model": None, "llm_n_threads": threads, "llm_n_ctx": 1024,
                                   "approvals": "off"})
    configs: dict[str, dict[str, Any]] = {
        "fifo": {"llm_batch_size": 1, "llm_quantum_tokens": 0, "policies": {"llm": "fifo"}},
        "rr": {"llm_batch_size": 1, "llm_quantum_tokens": quantum, "policies": {"llm": "rr"}},
        "batching": {"llm_batch_size": batch_size, "llm_quantum_tokens": 0, "policies": {"llm": "fifo"}},
    }
    single = list(contenders) if single_turn else []
    multi_names = list(multi_contenders) if multi_turn else []
    skipped: dict[str, str] = {}
    binary, reason = _llama_server(set(single) | set(multi_names), llama_server, log)
    if reason:
        err.print(f"[yellow]skipping llama_server[/]: {reason}", highlight=False)
        skipped["llama_server"] = reason
        single, multi_names = [c for c in single if c != "llama_server"], [c for c in multi_names if c != "llama_server"]

    def start(name: str) -> Any:
        if name == "baseline":
            return LlamaCppPython(settings, log, batch_size)
        if name == "llama_server":
            return LlamaServer(settings, log, batch_size, binary)
        return KernelContender(name, settings, log, **configs[name])

    def measure(name: str, n: int, n_steps: int, multi: bool, progress: Progress, task: Any) -> dict[str, Any]:
        contender = start(name)  # fresh for every workload and N: servers cache whole prompts
        try:
            client = contender.agent(10_000)
            contender.llm(client, WARM_UP, 4)
            contender.tool(client, "1 + 1")
            contender.close_agent(client)
            return run_agents(contender, n, n_steps, short, long, progress, task, multi_turn=multi)
        finally:
            contender.close()

    results: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in single}
    multi_results: dict[str, dict[str, Any]] = {}
    with progress_bars(err, 24) as progress:
        tasks = {(c, n): progress.add_task(f"{c} N={n}", total=n * steps * 2) for n in agents for c in single}
        multi_tasks = {c: progress.add_task(f"{c} multi-turn", total=multi_agents * multi_steps * 2)
                       for c in multi_names}
        for n in agents:  # N outer: one N's contenders run close together in time, on the same machine load
            for name in single:
                results[name][n] = measure(name, n, steps, False, progress, tasks[(name, n)])
        for name in multi_names:
            multi_results[name] = measure(name, multi_agents, multi_steps, True, progress, multi_tasks[name])
    emulated_result = None
    if emulated is not None:
        from aios_bench.emulated import run_emulated

        emulated_result = run_emulated(settings, emulated, log)
    result: dict[str, Any] = {
        "benchmark": "agents",
        "machine": machine(),
        "params": {"agents": agents if single else [], "steps": steps, "short_tokens": short, "long_tokens": long,
                   "batch_size": batch_size, "quantum": quantum, "contenders": single,
                   "model": default_model_path().name, "n_threads": settings.llm.n_threads, "n_ctx": settings.llm.n_ctx},
        "results": {c: {str(n): r for n, r in by_n.items()} for c, by_n in results.items()},
        "targets": targets(results, agents, multi_results, emulated_result),
        "ratios": ratios(results, agents) if single else {},
        "skipped": skipped,
    }
    if binary is not None:
        result["llama_server"] = {"binary": str(binary), "build": llama_server_build.build_info()}
    if multi_turn:
        result["multi_turn"] = {"params": {"agents": multi_agents, "steps": multi_steps, "contenders": multi_names},
                                "results": multi_results}
    if emulated_result is not None:
        result["emulated"] = emulated_result
    print_table(out, result)
    save(json_path, result, lambda png: plot(png, result), err.log)
    return result
