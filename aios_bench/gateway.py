"""``aios bench gateway``: many concurrent OpenAI-client agents through the gateway, against the same clients
calling the provider directly and against the SDK path, on the provider emulator (:mod:`aios_bench.emulator`).

One emulator (no rate limits, a fixed service time) and one kernel in front of it (an LLM worker on the ``openai``
backend with ``--llm-threads`` threads, and ``aios gateway`` in its own process), then for each number of agents
(64 and 256 by default), plain and streamed, three contenders one after the other in one run:

- **direct**: each agent an ``openai.AsyncOpenAI`` client of its own calling the emulator;
- **sdk**: each agent an :class:`~aios.sdk.AsyncKernel` of its own (``llm_chat``, ``stream=True`` when streamed);
- **gateway**: each agent an ``openai.AsyncOpenAI`` client with its own agent key, calling the gateway.

Every agent makes ``calls`` calls, in as many rounds: in each round every contender in turn (the order rotated
from round to round, so that a slow spell of a shared machine falls on all of them) has all its agents make one
call at once (asyncio, one process). Per call: the end-to-end latency and, streamed, the time to the first piece
of text (TTFT; for a plain call, its latency); per contender the CPU time per call of this process (the clients),
of the gateway's and of the rest (the kernel's worker and Redis, the emulator).
``gateway_p50_overhead_ms`` is the gateway's p50 latency minus the SDK path's, plain, at 64 agents (the first
number of agents if 64 is not among them; every other is in ``overhead_p50_ms``); ``gateway_streams_256_ok``:
every streamed call of 256 agents through the gateway ended with the whole text. The kernel's LLM worker does
not stream from the provider (the ``openai`` backend sends its text whole, in the reply), so through the kernel TTFT is
close to the latency; direct streaming shows the provider's own.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import openai
from rich.console import Console
from rich.table import Table

from aios.ops.embedded import LocalKernel
from aios.policy.identity import Credentials
from aios.sdk import AsyncKernel
from aios.settings import Settings
from aios_bench.common import Bound, consoles, machine, print_targets, save, target
from aios_bench.emulator import DEFAULT_MODEL, EmulatorProcess, completion_text

PROMPT = "Say something short about operating systems for agents."
CONTENDERS = ("direct", "sdk", "gateway")
TARGET_AGENTS = 64
"""``gateway_p50_overhead_ms`` is measured at this many agents (at the first of ``--agents`` without it)."""
TARGETS: dict[str, tuple[float, Bound]] = {"gateway_p50_overhead_ms": (5.0, "max"),
                                           "gateway_streams_256_ok": (1, "min")}


@dataclass(frozen=True)
class GatewayParams:
    agents: tuple[int, ...] = (64, 256)
    calls: int = 3
    """Calls per agent, in as many rounds: each round one call per agent (all at once) of every contender in turn,
    the order rotated from round to round."""
    max_tokens: int = 32
    service_ms: float = 50.0
    """The provider's service time per request."""
    llm_threads: int = 64
    """Threads of the kernel's LLM worker (each holds one provider request)."""


QUICK = GatewayParams(calls=1)


@dataclass
class Calls:
    latency_s: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    wrong_text: int = 0
    wall_s: float = 0.0
    cpu_s: dict[str, float] | None = None
    """CPU seconds spent during the run (:class:`CpuMeter`): by the clients' process, the gateway's, the rest."""

    def done(self, start: float, first: float | None, got: str, want: str) -> None:
        """One call that answered: its latency, its time to first token (its latency when nothing streamed), and
        whether its text is the one expected."""
        end = time.perf_counter()
        self.latency_s.append(end - start)
        self.ttft_s.append((first or end) - start)
        self.wrong_text += got != want


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds user + system) of a process, from /proc (Linux); ``None`` where unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds spent by this process (the clients: every contender's agents run here), by the gateway's
    process, and by every other process below this one (the kernel's LLM worker, its Redis, the emulator). Read
    from /proc: on a system without it every figure is ``None``."""

    def __init__(self, gateway_pid: int) -> None:
        self.gateway_pid = gateway_pid

    def read(self) -> dict[str, float] | None:
        if not os.path.isdir("/proc/self"):
            return None
        stats = {int(d): s for d in os.listdir("/proc") if d.isdigit() and (s := _proc_stat(int(d))) is not None}
        below: set[int] = {os.getpid()}
        grew = True
        while grew:  # every descendant of this process
            grew = False
            for pid, (ppid, _) in stats.items():
                if ppid in below and pid not in below:
                    below.add(pid)
                    grew = True
        out = {"client": time.process_time(), "gateway": 0.0, "kernel": 0.0}
        for pid in below - {os.getpid()}:
            out["gateway" if pid == self.gateway_pid else "kernel"] += stats[pid][1]
        return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GatewayProcess:
    """``aios gateway`` in its own process, in front of ``lk``."""

    def __init__(self, lk: LocalKernel, key: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc = subprocess.Popen([sys.executable, "-m", "aios", "gateway", f"--port={self.port}"], env=lk.env(),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        deadline = time.time() + 60
        while True:
            try:
                req = urllib.request.Request(f"{self.url}/models", headers={"Authorization": f"Bearer {key}"})
                with urllib.request.urlopen(req, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("aios gateway did not start")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _one_openai(client: openai.AsyncOpenAI, model: str, stream: bool, max_tokens: int,
                      out: Calls, want: str) -> None:
    start = time.perf_counter()
    first: float | None = None
    try:
        if stream:
            pieces = []
            async for chunk in await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=max_tokens, stream=True):
                text = chunk.choices[0].delta.content if chunk.choices else None
                if text:
                    first = first or time.perf_counter()
                    pieces.append(text)
            got = "".join(pieces)
        else:
            reply = await client.chat.completions.create(model=model, max_tokens=max_tokens,
                                                         messages=[{"role": "user", "content": PROMPT}])
            got = reply.choices[0].message.content or ""
    except Exception as exc:  # noqa: BLE001 - a failed call is counted, not fatal
        out.failed.append(f"{type(exc).__name__}: {exc}"[:200])
        return
    out.done(start, first, got, want)


async def _one_sdk(kernel: AsyncKernel, stream: bool, max_tokens: int, out: Calls, want: str) -> None:
    start = time.perf_counter()
    first: float | None = None
    try:
        if stream:
            s = await kernel.stream(kernel.llm_syscall(PROMPT, max_tokens=max_tokens, stream=True))
            async for _ in s:
                first = first or time.perf_counter()
            got = s.text
        else:
            got = await kernel.llm_chat(PROMPT, max_tokens=max_tokens)
    except Exception as exc:  # noqa: BLE001
        out.failed.append(f"{type(exc).__name__}: {exc}"[:200])
        return
    out.done(start, first, got, want)


async def _run(contender: str, n: int, stream: bool, params: GatewayParams, clients: list[Any], out: Calls,
               cpu: CpuMeter | None = None) -> None:
    """One round of ``contender``: each of ``n`` agents makes one call, all at once; adds them to ``out``."""
    want = completion_text(params.max_tokens)

    async def agent(i: int) -> None:
        if contender == "sdk":
            await _one_sdk(clients[i], stream, params.max_tokens, out, want)
        else:
            await _one_openai(clients[i], DEFAULT_MODEL if contender == "direct" else "default", stream,
                              params.max_tokens, out, want)

    before = cpu.read() if cpu is not None else None
    start = time.perf_counter()
    await asyncio.gather(*(agent(i) for i in range(n)))
    out.wall_s += time.perf_counter() - start
    after = cpu.read() if cpu is not None else None
    if before is not None and after is not None:
        out.cpu_s = {k: (out.cpu_s or {}).get(k, 0.0) + after[k] - before[k] for k in after}


def rounds(calls: int) -> list[tuple[str, ...]]:
    """The contenders' order in each round: rotated, so that none always runs first (or right after another)."""
    return [CONTENDERS[r % len(CONTENDERS):] + CONTENDERS[:r % len(CONTENDERS)] for r in range(calls)]


def _ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(c: Calls, asked: int) -> dict[str, Any]:
    return {"calls_asked": asked, "calls_ok": len(c.latency_s), "failed": len(c.failed), "wrong_text": c.wrong_text,
            "p50_ms": _ms(c.latency_s, 0.5), "p90_ms": _ms(c.latency_s, 0.9),
            "mean_ms": 1000 * statistics.fmean(c.latency_s) if c.latency_s else None,
            "ttft_p50_ms": _ms(c.ttft_s, 0.5), "ttft_p90_ms": _ms(c.ttft_s, 0.9),
            "calls_per_s": len(c.latency_s) / c.wall_s if c.wall_s else None, "wall_s": c.wall_s,
            "cpu_ms_per_call": None if c.cpu_s is None or not c.latency_s else
            {k: round(1000 * v / len(c.latency_s), 3) for k, v in c.cpu_s.items()},
            "first_errors": c.failed[:3]}


async def _bench(lk: LocalKernel, emu_url: str, keys: dict[str, str], params: GatewayParams, gw: GatewayProcess,
                 log: Any) -> dict[str, Any]:
    gw_url, cpu = gw.url, CpuMeter(gw.proc.pid)
    ids = sorted(keys)
    direct = [openai.AsyncOpenAI(base_url=f"{emu_url}/v1", api_key="none", max_retries=0) for _ in ids]
    through = [openai.AsyncOpenAI(base_url=gw_url, api_key=keys[a], max_retries=0) for a in ids]
    sdk = [await asyncio.to_thread(AsyncKernel, a, settings=lk.settings, credential=keys[a], timeout_s=300)
           for a in ids]
    clients: dict[str, list[Any]] = {"direct": direct, "sdk": sdk, "gateway": through}
    runs: dict[str, Any] = {}
    try:
        for name in CONTENDERS:  # warm every client's connections once, outside the measurements
            await _run(name, len(ids), False, GatewayParams(calls=1, max_tokens=4), clients[name], Calls())
        for n in params.agents:
            for stream in (False, True):
                mode = "stream" if stream else "plain"
                got = {name: Calls() for name in CONTENDERS}
                log(f"{n} agents, {mode}: {params.calls} round(s) of one call per agent, each contender in turn")
                for order in rounds(params.calls):
                    for name in order:
                        await _run(name, n, stream, params, clients[name], got[name], cpu)
                for name in CONTENDERS:
                    runs[f"{n}/{mode}/{name}"] = summarize(got[name], n * params.calls)
    finally:
        for k in sdk:
            await k.aclose()
        for c in direct + through:
            await c.close()
    return runs


def overheads(runs: dict[str, Any], params: GatewayParams) -> dict[str, float | None]:
    """The gateway's p50 latency minus the SDK path's, for every number of agents and mode (``"64/plain"``)."""
    out: dict[str, float | None] = {}
    for n in params.agents:
        for mode in ("plain", "stream"):
            gw, sdk = runs[f"{n}/{mode}/gateway"]["p50_ms"], runs[f"{n}/{mode}/sdk"]["p50_ms"]
            out[f"{n}/{mode}"] = None if gw is None or sdk is None else round(gw - sdk, 3)
    return out


def targets_of(runs: dict[str, Any], params: GatewayParams) -> dict[str, dict[str, Any]]:
    # At 64 agents, as the target says; other numbers of agents are extra figures (``overhead_p50_ms``).
    at = TARGET_AGENTS if TARGET_AGENTS in params.agents else params.agents[0]
    overhead = overheads(runs, params)[f"{at}/plain"]
    streams = runs.get("256/stream/gateway")
    ok = None if streams is None else float(streams["calls_ok"] == streams["calls_asked"]
                                            and streams["wrong_text"] == 0)
    values = {"gateway_p50_overhead_ms": overhead, "gateway_streams_256_ok": ok}
    return {name: target(values[name], goal, bound) for name, (goal, bound) in TARGETS.items()}


def print_table(console: Console, runs: dict[str, Any]) -> None:
    t = Table(title="aios bench gateway (ms; calls/s)")
    for col in ("agents", "mode", "contender", "ok", "p50", "p90", "TTFT p50", "calls/s",
                "CPU ms/call: client/gw/kernel"):
        t.add_column(col, justify="right")
    for key, r in runs.items():
        n, mode, name = key.split("/")
        t.add_row(n, mode, name, f"{r['calls_ok']}/{r['calls_asked']}",
                  *(f"{r[k]:.1f}" if r[k] is not None else "n/a" for k in ("p50_ms", "p90_ms", "ttft_p50_ms")),
                  f"{r['calls_per_s']:.0f}" if r["calls_per_s"] else "n/a",
                  " / ".join(f"{v:.2f}" for v in cpu.values()) if (cpu := r.get("cpu_ms_per_call")) else "n/a")
    console.print(t)


def plot(path: Path, runs: dict[str, Any], params: GatewayParams) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [f"{n}/{m}" for n in params.agents for m in ("plain", "stream")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, metric, label in zip(axes, ("p50_ms", "ttft_p50_ms", "calls_per_s"),
                                 ("p50 latency (ms)", "p50 time to first text (ms)", "calls per second"),
                                 strict=True):
        width = 0.8 / len(CONTENDERS)
        for j, name in enumerate(CONTENDERS):
            ax.bar([i + j * width for i in range(len(groups))],
                   [runs[f"{g}/{name}"][metric] or 0 for g in groups], width, label=name)
        ax.set_xticks([i + width for i in range(len(groups))], [g.replace("/", " agents\n") for g in groups])
        ax.set_ylabel(label)
    axes[0].legend()
    fig.suptitle(f"OpenAI clients: direct vs the kernel's SDK vs the gateway (provider {params.service_ms:g} ms, "
                 f"{params.calls} calls per agent)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_gateway_bench(settings: Settings, params: GatewayParams = GatewayParams(), *,
                      json_path: Path | None = None) -> dict[str, Any]:
    out, err = consoles()
    with EmulatorProcess(service_s=params.service_ms / 1000) as emu:
        ks = Settings(**{**settings.model_dump(), "llm_backend": "openai", "llm_base_url": f"{emu.url}/v1",
                         "llm_model": DEFAULT_MODEL, "llm_quantum_tokens": 0, "default_timeout_s": 300})
        with LocalKernel(ks, resources=["llm"], extra_worker_args=["--concurrency", str(params.llm_threads)],
                         progress=err.log) as lk:
            creds = Credentials(lk.settings)
            keys = {f"bench-gw-{i:03d}": creds.create(f"bench-gw-{i:03d}", write_file=False).key
                    for i in range(max(params.agents))}
            creds.redis.close()
            gw = GatewayProcess(lk, next(iter(keys.values())))
            try:
                runs = asyncio.run(_bench(lk, emu.url, keys, params, gw, err.log))
            finally:
                gw.stop()
    targets = targets_of(runs, params)
    extra = overheads(runs, params)
    result = {"benchmark": "gateway", "params": asdict(params), "machine": machine(), "runs": runs,
              "overhead_p50_ms": extra, "targets": targets}
    print_table(out, runs)
    out.print("gateway p50 minus sdk p50 (ms): " + ", ".join(
        f"{k} {v:.1f}" if v is not None else f"{k} n/a" for k, v in extra.items()))
    print_targets(out, targets, {k: b for k, (_, b) in TARGETS.items()})
    save(json_path, result, lambda png: plot(png, runs, params), err.log)
    return result
