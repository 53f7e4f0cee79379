"""``aios bench gateway``: many concurrent OpenAI-client agents through the gateway, against the same clients
calling the provider directly and against the SDK path, on the provider emulator (:mod:`aios_bench.emulator`).

One emulator (no rate limits, a fixed service time) and one kernel in front of it (an LLM worker on the ``openai``
backend with ``--llm-threads`` threads, and ``aios gateway`` in its own process), then for each number of agents
(64 and 256 by default), plain and streamed, three contenders one after the other in one run:

- **direct**: each agent an ``openai.AsyncOpenAI`` client of its own calling the emulator;
- **sdk**: each agent an :class:`~aios.sdk.AsyncKernel` of its own (``llm_chat``, ``stream=True`` when streamed);
- **gateway**: each agent an ``openai.AsyncOpenAI`` client with its own agent key, calling the gateway.

Every agent makes ``calls`` calls one after the other, all agents at once (asyncio, one process). Per call: the
end-to-end latency and, streamed, the time to the first piece of text (TTFT; for a plain call, its latency).
``gateway_p50_overhead_ms`` is the gateway's p50 latency minus the SDK path's, plain, at the first number of
agents; ``gateway_streams_256_ok``: every streamed call of 256 agents through the gateway ended with the whole
text. The kernel's LLM worker does not stream from the provider (the ``openai`` backend sends its reply as one
chunk), so through the kernel TTFT is close to the latency; direct streaming shows the provider's own.
"""

from __future__ import annotations

import asyncio
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
TARGETS: dict[str, tuple[float, Bound]] = {"gateway_p50_overhead_ms": (5.0, "max"),
                                           "gateway_streams_256_ok": (1, "min")}


@dataclass(frozen=True)
class GatewayParams:
    agents: tuple[int, ...] = (64, 256)
    calls: int = 3
    """Calls per agent, one after the other."""
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

    def done(self, start: float, first: float | None, got: str, want: str) -> None:
        """One call that answered: its latency, its time to first token (its latency when nothing streamed), and
        whether its text is the one expected."""
        end = time.perf_counter()
        self.latency_s.append(end - start)
        self.ttft_s.append((first or end) - start)
        self.wrong_text += got != want


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


async def _run(contender: str, n: int, stream: bool, params: GatewayParams, clients: list[Any]) -> Calls:
    out = Calls()
    want = completion_text(params.max_tokens)

    async def agent(i: int) -> None:
        for _ in range(params.calls):
            if contender == "sdk":
                await _one_sdk(clients[i], stream, params.max_tokens, out, want)
            else:
                await _one_openai(clients[i], DEFAULT_MODEL if contender == "direct" else "default", stream,
                                  params.max_tokens, out, want)

    start = time.perf_counter()
    await asyncio.gather(*(agent(i) for i in range(n)))
    out.wall_s = time.perf_counter() - start
    return out


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
            "first_errors": c.failed[:3]}


async def _bench(lk: LocalKernel, emu_url: str, keys: dict[str, str], params: GatewayParams, gw_url: str,
                 log: Any) -> dict[str, Any]:
    ids = sorted(keys)
    direct = [openai.AsyncOpenAI(base_url=f"{emu_url}/v1", api_key="none", max_retries=0) for _ in ids]
    through = [openai.AsyncOpenAI(base_url=gw_url, api_key=keys[a], max_retries=0) for a in ids]
    sdk = [await asyncio.to_thread(AsyncKernel, a, settings=lk.settings, credential=keys[a], timeout_s=300)
           for a in ids]
    clients: dict[str, list[Any]] = {"direct": direct, "sdk": sdk, "gateway": through}
    runs: dict[str, Any] = {}
    try:
        for name in CONTENDERS:  # warm every client's connections once, outside the measurements
            await _run(name, len(ids), False, GatewayParams(calls=1, max_tokens=4), clients[name])
        for n in params.agents:
            for stream in (False, True):
                mode = "stream" if stream else "plain"
                for name in CONTENDERS:
                    log(f"{n} agents, {mode}, {name}")
                    got = await _run(name, n, stream, params, clients[name])
                    runs[f"{n}/{mode}/{name}"] = summarize(got, n * params.calls)
    finally:
        for k in sdk:
            await k.aclose()
        for c in direct + through:
            await c.close()
    return runs


def targets_of(runs: dict[str, Any], params: GatewayParams) -> dict[str, dict[str, Any]]:
    first = params.agents[0]
    gw, sdk = runs[f"{first}/plain/gateway"]["p50_ms"], runs[f"{first}/plain/sdk"]["p50_ms"]
    overhead = None if gw is None or sdk is None else gw - sdk
    streams = runs.get("256/stream/gateway")
    ok = None if streams is None else float(streams["calls_ok"] == streams["calls_asked"]
                                            and streams["wrong_text"] == 0)
    values = {"gateway_p50_overhead_ms": overhead, "gateway_streams_256_ok": ok}
    return {name: target(values[name], goal, bound) for name, (goal, bound) in TARGETS.items()}


def print_table(console: Console, runs: dict[str, Any]) -> None:
    t = Table(title="aios bench gateway (ms; calls/s)")
    for col in ("agents", "mode", "contender", "ok", "p50", "p90", "TTFT p50", "calls/s"):
        t.add_column(col, justify="right")
    for key, r in runs.items():
        n, mode, name = key.split("/")
        t.add_row(n, mode, name, f"{r['calls_ok']}/{r['calls_asked']}",
                  *(f"{r[k]:.1f}" if r[k] is not None else "n/a" for k in ("p50_ms", "p90_ms", "ttft_p50_ms")),
                  f"{r['calls_per_s']:.0f}" if r["calls_per_s"] else "n/a")
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
                runs = asyncio.run(_bench(lk, emu.url, keys, params, gw.url, err.log))
            finally:
                gw.stop()
    targets = targets_of(runs, params)
    result = {"benchmark": "gateway", "params": asdict(params), "machine": machine(), "runs": runs,
              "targets": targets}
    print_table(out, runs)
    print_targets(out, targets, {k: b for k, (_, b) in TARGETS.items()})
    save(json_path, result, lambda png: plot(png, runs, params), err.log)
    return result
