"""``aios bench agents``: the paper's efficiency experiment, contenders side by side.

N concurrent ReAct-style agents run a fixed script each: ``steps`` times an LLM syscall (fixed prompt, greedy,
fixed ``max_tokens``: most steps short, every fourth long, so that syscalls differ in length as real ones do)
followed by a calculator tool syscall. Greedy decoding makes every contender generate the same tokens, so every
contender does the same work. Contenders:

- ``baseline``: the agents call one llama.cpp OpenAI-compatible server (``python -m llama_cpp.server``) directly,
  and run the tool in-process: no kernel;
- ``fifo``: the kernel, one LLM sequence at a time, no time slices;
- ``rr``: the kernel, one sequence at a time, time slices of ``--quantum`` tokens (round robin);
- ``batching``: the kernel, continuous batching of ``--batch-size`` sequences.

Figures per contender and N: total time, average and p90 syscall waiting time (submission to answer), average
and p90 agent completion time, syscalls/s and generated tokens/s.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from aios.ops.embedded import LocalKernel
from aios.policy.identity import Credentials
from aios.sdk.client import Kernel
from aios.services.llm.service import default_model_path
from aios.services.tools.calculator import calculate
from aios.settings import Settings
from aios.wire.errors import ConfigError
from aios_bench.common import Bound, consoles, machine, print_targets, progress_bars, save, target

CONTENDERS = ("baseline", "fifo", "rr", "batching")
SYSTEM = "You are a helpful assistant."
TOPICS = ("a robot who learns to paint", "a lighthouse keeper", "a city under the sea", "a talking cat",
          "the first train to the moon", "a library that never closes", "a dragon who fears fire", "a lost map")
TIMEOUT_S = 900.0


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


def messages(step: Step) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": step.prompt}]


@dataclass
class Record:
    waits: list[float] = field(default_factory=list)
    agent_times: list[float] = field(default_factory=list)
    syscalls: int = 0
    tokens: int = 0
    errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Baseline:
    """Agents straight on llama.cpp's OpenAI-compatible server; the tool runs in the agent's own process."""

    name = "baseline"

    def __init__(self, settings: Settings, log: Callable[[str], None]) -> None:
        import openai

        self._openai = openai
        with __import__("socket").socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.log_path = Path(settings.data_dir) / "bench-llama-server.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log(f"starting llama_cpp.server on port {port}")
        with open(self.log_path, "wb") as out:
            threads = str(settings.llm.n_threads or 2)
            # the engine's llama.cpp options: threads, flash attention, GPU layers
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "aios_bench.llama_server", "--model", str(default_model_path()), "--port", str(port),
                 "--host", "127.0.0.1", "--n_ctx", str(settings.llm.n_ctx), "--n_threads", threads,
                 "--n_threads_batch", threads, "--flash_attn", "true", "--n_gpu_layers", str(settings.llm.n_gpu_layers)],
                stdout=out, stderr=subprocess.STDOUT)
        self.base_url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise ConfigError(f"llama_cpp.server exited: see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise ConfigError(f"llama_cpp.server did not start: see {self.log_path}") from None
                time.sleep(0.2)

    def agent(self, i: int) -> Any:
        return self._openai.OpenAI(base_url=self.base_url, api_key="none", timeout=TIMEOUT_S)

    def llm(self, client: Any, step: Step) -> int:
        # repeat_penalty 1.0: greedy like the kernel's engine, so both generate the same tokens
        resp = client.chat.completions.create(model="smollm2", messages=messages(step), max_tokens=step.max_tokens,
                                              temperature=0.0, extra_body={"repeat_penalty": 1.0})
        tokens: int = resp.usage.completion_tokens
        return tokens

    def tool(self, client: Any, step: Step) -> None:
        calculate(step.expression)

    def close_agent(self, client: Any) -> None:
        client.close()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class KernelContender:
    """Agents as kernel clients, each with its own credential, on a private embedded kernel."""

    def __init__(self, name: str, settings: Settings, log: Callable[[str], None], **llm: Any) -> None:
        self.name = name
        data = Path(settings.data_dir) / f"bench-{name}"
        self.lk = LocalKernel(settings.updated(**{"data_dir": data, **llm}), resources=["llm", "tool"],
                              progress=log)
        self.lk.start()
        self.settings = self.lk.settings
        self._creds = Credentials(self.settings)

    def agent(self, i: int) -> Kernel:
        agent_id = f"bench-agent-{i}"
        secret = self._creds.create(agent_id, write_file=False).secret if self.settings.security.auth == "required" else None
        return Kernel(agent_id, settings=self.settings, timeout_s=TIMEOUT_S, credential=secret)

    def llm(self, k: Kernel, step: Step) -> int:
        result = k.call(k.llm_syscall(messages(step), "text", max_tokens=step.max_tokens))
        return int(result["usage"]["completion_tokens"])

    def tool(self, k: Kernel, step: Step) -> None:
        k.call_tool("calculator", expression=step.expression)

    def close_agent(self, k: Kernel) -> None:
        k.close()

    def close(self) -> None:
        self.lk.stop()


def run_agents(contender: Any, n: int, steps: int, short: int, long: int, progress: Progress, task: Any
               ) -> dict[str, Any]:
    rec = Record()
    clients = [contender.agent(i) for i in range(n)]
    barrier = threading.Barrier(n + 1)

    def agent(i: int) -> None:
        client = clients[i]
        barrier.wait()
        t_agent = time.perf_counter()
        for step in script(i, steps, short, long):
            t0 = time.perf_counter()
            tokens = 0
            try:
                if step.kind == "llm":
                    tokens = contender.llm(client, step)
                else:
                    contender.tool(client, step)
                ok = True
            except Exception:  # noqa: BLE001 - counted; the run goes on
                ok = False
            with rec.lock:
                rec.waits.append(time.perf_counter() - t0)
                rec.syscalls += 1
                rec.tokens += tokens
                rec.errors += 0 if ok else 1
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
    return {"n_agents": n, "total_time_s": total, "avg_wait_s": float(waits.mean()),
            "p90_wait_s": float(np.percentile(waits, 90)), "avg_agent_time_s": float(agents.mean()),
            "p90_agent_time_s": float(np.percentile(agents, 90)), "syscalls": rec.syscalls,
            "syscalls_per_s": rec.syscalls / total, "tokens": rec.tokens, "tokens_per_s": rec.tokens / total,
            "errors": rec.errors}


TARGETS: dict[str, tuple[float, Bound]] = {"speedup_total_time_n32": (2.1, "min"), "rr_p90_wait_vs_fifo": (1.0, "max")}


def targets(results: dict[str, dict[int, dict[str, Any]]], ns: list[int]) -> dict[str, dict[str, Any]]:
    base, batch = results.get("baseline", {}).get(32), results.get("batching", {}).get(32)
    n = 32 if 32 in ns else max(ns)
    fifo, rr = results.get("fifo", {}).get(n), results.get("rr", {}).get(n)
    values = {"speedup_total_time_n32": base["total_time_s"] / batch["total_time_s"] if base and batch else None,
              "rr_p90_wait_vs_fifo": rr["p90_wait_s"] / fifo["p90_wait_s"] if fifo and rr else None}
    out = {name: target(values[name], *TARGETS[name]) for name in TARGETS}
    out["rr_p90_wait_vs_fifo"]["n_agents"] = n
    return out


def ratios(results: dict[str, dict[int, dict[str, Any]]], ns: list[int]) -> dict[str, dict[str, float]]:
    """Total-time speedups of each kernel contender over the baseline, and of batching over FIFO, per N."""
    out: dict[str, dict[str, float]] = {}
    pairs = [(c, "baseline") for c in ("fifo", "rr", "batching")] + [("batching", "fifo")]
    for fast, slow in pairs:
        if fast in results and slow in results:
            out[f"{fast}_vs_{slow}"] = {str(n): results[slow][n]["total_time_s"] / results[fast][n]["total_time_s"]
                                        for n in ns}
    return out


def print_table(console: Console, result: dict[str, Any]) -> None:
    table = Table(title="aios bench agents: N concurrent agents, same scripts for every contender")
    for col in ("contender", "N", "total s", "avg wait s", "p90 wait s", "syscalls/s", "tokens/s", "speedup",
                "errors"):
        table.add_column(col, justify="left" if col == "contender" else "right")
    res = result["results"]
    for n in result["params"]["agents"]:
        base = res.get("baseline", {}).get(str(n))
        for name in result["params"]["contenders"]:
            r = res[name][str(n)]
            speed = f"{base['total_time_s'] / r['total_time_s']:.2f}x" if base else "-"
            table.add_row(name, str(n), f"{r['total_time_s']:.1f}", f"{r['avg_wait_s']:.2f}", f"{r['p90_wait_s']:.2f}",
                          f"{r['syscalls_per_s']:.2f}", f"{r['tokens_per_s']:.0f}", speed, str(r["errors"]))
    console.print(table)
    print_targets(console, result["targets"], {name: bound for name, (_, bound) in TARGETS.items()})


def plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = result["params"]["agents"]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    for ax, key, label in zip(axes, ("total_time_s", "avg_wait_s", "p90_wait_s", "tokens_per_s"),
                              ("total time (s)", "average wait (s)", "p90 wait (s)", "tokens/s"), strict=True):
        for name in result["params"]["contenders"]:
            ax.plot(ns, [result["results"][name][str(n)][key] for n in ns], marker="o", label=name)
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


def run_agents_bench(settings: Settings, *, agents: list[int], steps: int = 2, short: int = 24, long: int = 160,
                     batch_size: int = 16, quantum: int = 16, threads: int = 2, contenders: tuple[str, ...] = CONTENDERS,
                     json_path: Path | None = None) -> dict[str, Any]:
    if not agents or min(agents) < 1 or steps < 1 or short < 1 or long < 1:
        raise ConfigError("need --agents >= 1, --steps >= 1 and positive --short/--long token counts")
    unknown = set(contenders) - set(CONTENDERS)
    if unknown:
        raise ConfigError(f"unknown contenders {sorted(unknown)}; known: {', '.join(CONTENDERS)}")
    out, err = consoles()
    log = err.log
    settings = settings.updated(**{"broker_url": None, "redis_url": None, "llm_backend": "llamacpp",
                                           "llm_model": None, "llm_n_threads": threads,
                                           "llm_n_ctx": 1024, "approvals": "off"})
    configs: dict[str, dict[str, Any]] = {
        "fifo": {"llm_batch_size": 1, "llm_quantum_tokens": 0, "policies": {"llm": "fifo"}},
        "rr": {"llm_batch_size": 1, "llm_quantum_tokens": quantum, "policies": {"llm": "rr"}},
        "batching": {"llm_batch_size": batch_size, "llm_quantum_tokens": 0, "policies": {"llm": "fifo"}},
    }
    results: dict[str, dict[int, dict[str, Any]]] = {}
    with progress_bars(err, 20) as progress:
        tasks = {(c, n): progress.add_task(f"{c} N={n}", total=n * steps * 2) for c in contenders for n in agents}
        for name in contenders:
            contender = Baseline(settings, log) if name == "baseline" else \
                KernelContender(name, settings, log, **configs[name])
            try:
                results[name] = {}
                run_agents(contender, 1, 1, 4, 4, progress, progress.add_task(f"{name} warm-up", total=2))
                for n in agents:
                    results[name][n] = run_agents(contender, n, steps, short, long, progress, tasks[(name, n)])
            finally:
                contender.close()
    result: dict[str, Any] = {
        "benchmark": "agents",
        "machine": machine(),
        "params": {"agents": agents, "steps": steps, "short_tokens": short, "long_tokens": long,
                   "batch_size": batch_size, "quantum": quantum, "contenders": list(contenders),
                   "model": default_model_path().name, "n_threads": settings.llm.n_threads},
        "results": {c: {str(n): r for n, r in by_n.items()} for c, by_n in results.items()},
        "targets": targets(results, agents),
        "ratios": ratios(results, agents),
    }
    print_table(out, result)
    save(json_path, result, lambda png: plot(png, result), err.log)
    return result
