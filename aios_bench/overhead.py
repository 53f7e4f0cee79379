"""``aios bench overhead``: what the kernel adds to a round trip, measured against raw Celery on the same broker.

Two contenders share one broker; each has its own worker process of the same kind (a single worker thread):

- **raw Celery**: ``send_task("aios.bench.noop")`` on queue ``aios.bench.raw`` at the kernel's default priority,
  served by :mod:`aios_bench.raw_worker`, and ``AsyncResult.get()`` through Celery's Redis result backend;
- **kernel**: ``Kernel.call_tool("noop")``: a typed syscall, the worker's gates, idempotency record and reply list.

After a warm-up, ``rounds`` interleaved rounds each run a latency block (sequential round trips) and a throughput
block (publish a batch, then collect every answer) for both contenders, alternating which goes first. Samples are
pooled per contender; the ratios are kernel / raw Celery.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import redis
from kombu.utils.url import maybe_sanitize_url
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from aios.broker.app import make_app
from aios.ops.embedded import LocalKernel
from aios.policy.identity import Credentials
from aios.sdk.client import Kernel
from aios.settings import Settings
from aios.wire.errors import ConfigError
from aios.wire.priority import DEFAULT_PRIORITY, is_redis_url, to_broker
from aios_bench.common import RAW_QUEUE, RAW_TASK, Bound, consoles, machine, print_targets, progress_bars, save, target
from aios_bench.profile import profile_pipeline

WARMUP = 200
TIMEOUT_S = 30.0
WORKER_CONCURRENCY = 1
PROFILE_SYSCALLS = 2000
TARGETS: dict[str, tuple[str, float, Bound]] = {
    # name: (ratio it reads, goal, how the goal bounds it)
    "kernel_p50_vs_celery": ("p50", 1.2, "max"),
    "kernel_throughput_vs_celery": ("throughput", 0.9, "min"),
    "signing_overhead_p50": ("signing_p50_added", 0.10, "max"),
}


class Contender(Protocol):
    name: str

    def one(self) -> None: ...
    def batch(self, n: int) -> None: ...
    def close(self) -> None: ...


class RawCelery:
    name = "raw_celery"

    def __init__(self, settings: Settings) -> None:
        self.app = make_app(settings, name="aios-bench-raw")
        self.priority = to_broker(DEFAULT_PRIORITY, settings.require_broker())

    def _send(self) -> Any:
        return self.app.send_task(RAW_TASK, queue=RAW_QUEUE, priority=self.priority)

    def one(self) -> None:
        self._send().get(timeout=TIMEOUT_S)

    def batch(self, n: int) -> None:
        for result in [self._send() for _ in range(n)]:
            result.get(timeout=TIMEOUT_S)

    def close(self) -> None:
        self.app.close()


class KernelSyscalls:
    """Kernel no-op tool syscalls; signed unless the kernel's settings turn authentication off."""

    def __init__(self, settings: Settings, name: str = "kernel") -> None:
        self.name = name
        key = Credentials(settings).create("bench", write_file=False).key if settings.security.auth == "required" \
            else None
        self.kernel = Kernel("bench", settings=settings, timeout_s=TIMEOUT_S, credential=key)

    def one(self) -> None:
        self.kernel.call_tool("noop")

    def batch(self, n: int) -> None:
        k = self.kernel
        for pending in [k.submit(k.tool_syscall("noop")) for _ in range(n)]:
            k.wait(pending)

    def close(self) -> None:
        self.kernel.close()


@dataclass
class Samples:
    latencies_s: list[float] = field(default_factory=list)
    batch_ops: int = 0
    batch_wall_s: float = 0.0
    redis_commands: dict[str, int] = field(default_factory=dict)
    """Commands the kernel's Redis served during this contender's throughput blocks, by command."""
    round_p50_s: list[float] = field(default_factory=list)
    """The p50 latency of each round (contenders alternate within a round: ratios per round share its noise)."""
    round_ops_s: list[float] = field(default_factory=list)
    """The throughput of each round."""

    def summary(self) -> dict[str, float | int | dict[str, float] | list[float]]:
        ms = np.asarray(self.latencies_s) * 1000.0
        return {
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "max_ms": float(ms.max()),
            "latency_samples": int(ms.size), "throughput_ops_s": self.batch_ops / self.batch_wall_s,
            "throughput_ops": self.batch_ops, "throughput_wall_s": self.batch_wall_s,
            "redis_commands_per_syscall": sum(self.redis_commands.values()) / max(1, self.batch_ops),
            "redis_commands": {k: v / max(1, self.batch_ops) for k, v in sorted(self.redis_commands.items())},
            "round_p50_ms": [x * 1000.0 for x in self.round_p50_s], "round_throughput_ops_s": self.round_ops_s,
        }


def split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal block sizes that add up to it exactly."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def describe_broker(lk: LocalKernel) -> dict[str, str]:
    url = lk.broker_url
    kind = "embedded-redis" if lk.embedded else ("redis" if is_redis_url(url) else "rabbitmq")
    return {"kind": kind, "url": maybe_sanitize_url(url),
            "state_redis": maybe_sanitize_url(lk.settings.state_redis_url())}


def command_counts(client: redis.Redis | None) -> dict[str, int]:
    """Calls per command served so far (``INFO commandstats``), or nothing without a Redis to ask."""
    if client is None:
        return {}
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in client.info("commandstats").items()}


def measure(contenders: list[Contender], n_latency: int, n_throughput: int, rounds: int,
            progress: Progress, state: redis.Redis | None = None) -> dict[str, Samples]:
    samples = {c.name: Samples() for c in contenders}
    warm = progress.add_task("warm-up", total=WARMUP * len(contenders))
    lat = progress.add_task("latency (sequential)", total=n_latency * len(contenders))
    thr = progress.add_task("throughput (batches)", total=n_throughput * len(contenders))
    for c in contenders:
        for _ in range(WARMUP):
            c.one()
            progress.advance(warm)
        c.batch(WARMUP)
    clock = time.perf_counter
    for i, (n_lat, n_thr) in enumerate(zip(split(n_latency, rounds), split(n_throughput, rounds), strict=True)):
        order = contenders if i % 2 == 0 else contenders[::-1]
        for c in order:
            sink = samples[c.name].latencies_s
            start = len(sink)
            for _ in range(n_lat):
                t0 = clock()
                c.one()
                sink.append(clock() - t0)
                progress.advance(lat)
            samples[c.name].round_p50_s.append(float(np.percentile(sink[start:], 50)))
        for c in order:
            before = command_counts(state)
            t0 = clock()
            c.batch(n_thr)
            wall = clock() - t0
            samples[c.name].batch_wall_s += wall
            samples[c.name].batch_ops += n_thr
            samples[c.name].round_ops_s.append(n_thr / wall)
            after, seen = command_counts(state), samples[c.name].redis_commands
            for cmd, calls in after.items():
                if cmd != "info" and calls > before.get(cmd, 0):
                    seen[cmd] = seen.get(cmd, 0) + calls - before.get(cmd, 0)
            progress.advance(thr, n_thr)
    return samples


def report(raw: dict[str, Any], kern: dict[str, Any], signed: dict[str, Any], unsigned: dict[str, Any]
           ) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    def per_round(a: dict[str, Any], b: dict[str, Any], key: str, minus: float = 0.0) -> list[float]:
        return [x / y - minus for x, y in zip(a[key], b[key], strict=True)]

    # Each ratio per round: the contenders of one round ran back to back, so a round's ratio shares its noise.
    # The targets read the median over the rounds; the pooled figures and each round's are reported beside.
    rounds = {
        "p50": per_round(kern, raw, "round_p50_ms"),
        "throughput": per_round(kern, raw, "round_throughput_ops_s"),
        # What the trust boundary adds to the p50 (signing in the SDK, verification and the reply's seal in the
        # worker, the broker users' ACLs), as a fraction of the p50 with all of it off.
        "signing_p50_added": per_round(signed, unsigned, "round_p50_ms", 1.0),
        "signing_throughput": per_round(signed, unsigned, "round_throughput_ops_s"),
    }
    ratios: dict[str, Any] = {name: float(np.median(values)) for name, values in rounds.items()}
    ratios.update({
        "p99": kern["p99_ms"] / raw["p99_ms"], "mean": kern["mean_ms"] / raw["mean_ms"],
        "pooled": {"p50": kern["p50_ms"] / raw["p50_ms"],
                   "throughput": kern["throughput_ops_s"] / raw["throughput_ops_s"],
                   "signing_p50_added": signed["p50_ms"] / unsigned["p50_ms"] - 1.0},
        "per_round": rounds,
        "spread": {name: [float(min(v)), float(max(v))] for name, v in rounds.items()},
    })
    targets = {name: target(ratios[ratio], goal, bound) for name, (ratio, goal, bound) in TARGETS.items()}
    return ratios, targets


def print_table(console: Console, result: dict[str, Any]) -> None:
    raw, kern, ratios = result["raw_celery"], result["kernel"], result["ratios"]
    broker = result["broker"]
    table = Table(title=f"aios bench overhead: no-op round trip on {broker['kind']}")
    for col, justify in (("", "left"), ("raw Celery", "right"), ("kernel", "right"), ("kernel / raw", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for label, key, ratio in (("p50 latency (ms)", "p50_ms", "p50"), ("p99 latency (ms)", "p99_ms", "p99"),
                              ("mean latency (ms)", "mean_ms", "mean"),
                              ("throughput (ops/s)", "throughput_ops_s", "throughput")):
        table.add_row(label, f"{raw[key]:.2f}" if key.endswith("ms") else f"{raw[key]:.0f}",
                      f"{kern[key]:.2f}" if key.endswith("ms") else f"{kern[key]:.0f}", f"{ratios[ratio]:.2f}x")
    console.print(table)
    signed, unsigned = result["signing"]["signed"], result["signing"]["unsigned"]
    console.print(f"  trust boundary (on two embedded kernels): p50 {unsigned['p50_ms']:.2f} ms with it off, "
                  f"{signed['p50_ms']:.2f} ms with signatures, sealed replies and broker users "
                  f"(+{ratios['signing_p50_added'] * 100:.1f}%); "
                  f"throughput ratio {ratios['signing_throughput']:.2f}", highlight=False)
    spread = ratios["spread"]
    console.print(f"  medians of {len(ratios['per_round']['p50'])} interleaved rounds (spread): p50 "
                  f"{ratios['p50']:.2f} ({spread['p50'][0]:.2f}-{spread['p50'][1]:.2f}), throughput "
                  f"{ratios['throughput']:.2f} ({spread['throughput'][0]:.2f}-{spread['throughput'][1]:.2f}), trust "
                  f"boundary {ratios['signing_p50_added'] * 100:+.1f}% ({spread['signing_p50_added'][0] * 100:+.1f}% "
                  f"to {spread['signing_p50_added'][1] * 100:+.1f}%); pooled: p50 {ratios['pooled']['p50']:.2f}, "
                  f"throughput {ratios['pooled']['throughput']:.2f}, trust boundary "
                  f"{ratios['pooled']['signing_p50_added'] * 100:+.1f}%", highlight=False)
    console.print(f"  broker {broker['url']}, one worker thread, {result['machine']['cpus']} CPUs", highlight=False)
    cmds = f"{raw.get('redis_commands_per_syscall', 0):.1f} vs {kern.get('redis_commands_per_syscall', 0):.1f}"
    console.print(f"  Redis commands per round trip (raw vs kernel, all clients): {cmds}", highlight=False)
    prof = result["pipeline_profile"]
    steps = Table(title=f"worker pipeline, in-process: {prof['us_per_syscall']:.0f} us, "
                        f"{prof['round_trips_per_syscall']:.2f} Redis round trips, "
                        f"{prof['bytes_sent_per_syscall']:.0f} bytes sent per no-op syscall")
    for col in ("step", "us", "round trips", "bytes sent"):
        steps.add_column(col, justify="left" if col == "step" else "right")
    for name, st in sorted(prof["steps"].items(), key=lambda kv: -kv[1]["us"]):
        steps.add_row(name, f"{st['us']:.0f}", f"{st['round_trips']:.2f}", f"{st['bytes_sent']:.0f}")
    console.print(steps)
    print_targets(console, result["targets"], {name: bound for name, (_, _, bound) in TARGETS.items()})


def plot(path: Path, samples: dict[str, Samples], result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"raw_celery": "raw Celery", "kernel": "kernel", "signed": "kernel signed (embedded)",
              "unsigned": "kernel unsigned (embedded)"}
    fig, (ax_cdf, ax_bar) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [2.2, 1]})
    for name, s in samples.items():
        ms = np.sort(np.asarray(s.latencies_s) * 1000.0)
        ax_cdf.plot(ms, np.arange(1, ms.size + 1) / ms.size, label=f"{labels[name]} (p50 {np.median(ms):.2f} ms)")
    ax_cdf.set_xscale("log")
    ax_cdf.set_xlabel("round-trip latency (ms, log scale)")
    ax_cdf.set_ylabel("fraction of round trips")
    ax_cdf.set_title("sequential no-op round trips: CDF")
    ax_cdf.grid(True, which="both", alpha=0.3)
    ax_cdf.legend(loc="lower right")
    names = list(samples)
    summaries = {**result["signing"], "raw_celery": result["raw_celery"], "kernel": result["kernel"]}
    values = [summaries[n]["throughput_ops_s"] for n in names]
    bars = ax_bar.bar([labels[n].replace(" (", "\n(") for n in names], values,
                      color=["tab:blue", "tab:orange", "tab:green", "tab:gray"][: len(names)])
    ax_bar.bar_label(bars, fmt="%.0f")
    ax_bar.set_ylim(0, max(values) * 1.15)
    ax_bar.set_ylabel("ops/s")
    ax_bar.set_title(f"throughput (kernel/raw {result['ratios']['throughput']:.2f})")
    fig.suptitle(f"aios bench overhead on {result['broker']['kind']}, {result['machine']['cpus']} CPUs, "
                 f"1 worker thread")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_overhead(settings: Settings, *, n_latency: int = 1000, n_throughput: int = 2000, rounds: int = 10,
                 json_path: Path | None = None) -> dict[str, Any]:
    """Run the benchmark, print its table, write JSON (and a PNG beside it) when asked; return the figures."""
    if rounds < 1 or n_latency < rounds or n_throughput < rounds:
        raise ConfigError(f"need rounds >= 1 and at least one request per round (got --requests {n_latency}, "
                          f"--throughput-requests {n_throughput}, --rounds {rounds})")
    out, err = consoles()
    settings = settings.updated(**{"worker_concurrency": WORKER_CONCURRENCY})
    log = err.log
    # Signing is measured on two private embedded kernels, alike but for authentication, so that the broker
    # is the same for both even when the main comparison runs on a configured one.
    embedded = settings.updated(**{"broker_url": None, "redis_url": None})
    with ExitStack() as stack:
        lk = stack.enter_context(LocalKernel(settings, resources=["tool"], progress=log))
        lk.start_celery_worker("raw", "aios_bench.raw_worker", RAW_QUEUE)
        # "unsigned": the whole trust boundary off (no identities, no sealed replies, no broker users: ACLs)
        off = stack.enter_context(LocalKernel(embedded.updated(**{"auth": "off", "broker_users": "off"}),
                                              resources=["tool"], progress=log))
        # "signed": the same embedded kernel with all of it on. Its own, on every broker: the main kernel also
        # serves raw Celery's worker and traffic, which the unsigned one would not share.
        on = stack.enter_context(LocalKernel(embedded, resources=["tool"], progress=log))
        contenders: list[Contender] = [RawCelery(lk.settings), KernelSyscalls(lk.settings),
                                       KernelSyscalls(off.settings, "unsigned"), KernelSyscalls(on.settings, "signed")]
        try:
            state = redis.Redis.from_url(lk.settings.state_redis_url()) if is_redis_url(lk.broker_url) else None
            with progress_bars(err, 22) as progress:
                samples = measure(contenders, n_latency, n_throughput, rounds, progress, state)
                prof = progress.add_task("pipeline profile", total=PROFILE_SYSCALLS)
                profile = profile_pipeline(lk.settings, PROFILE_SYSCALLS,
                                           progress=lambda k: progress.advance(prof, k))
        finally:
            for c in contenders:
                c.close()
        broker = describe_broker(lk)
    raw, kern = samples["raw_celery"].summary(), samples["kernel"].summary()
    unsigned = samples["unsigned"].summary()
    signed = samples["signed"].summary()
    ratios, targets = report(raw, kern, signed, unsigned)
    result: dict[str, Any] = {
        "benchmark": "overhead", "broker": broker,
        "machine": machine(),
        "params": {"n_latency": n_latency, "n_throughput": n_throughput, "rounds": rounds, "warmup": WARMUP,
                   "worker_pool": "threads", "worker_concurrency": WORKER_CONCURRENCY,
                   "priority": DEFAULT_PRIORITY},
        "raw_celery": raw, "kernel": kern, "signing": {"signed": signed, "unsigned": unsigned},
        "pipeline_profile": profile, "ratios": ratios, "targets": targets,
    }
    print_table(out, result)
    save(json_path, result, lambda png: plot(png, samples, result), err.log)
    return result
