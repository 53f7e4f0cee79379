"""The ``aios`` command: run an agent, run the kernel, run a worker, look at the fleet, benchmark."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import signal
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import click

from aios.ops.cli_access import _fail, _say
from aios.ops.cli_access import register as register_access_commands
from aios.wire.errors import AIOSError, ConfigError
from aios.settings import QUEUES, Settings, get_settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """AIOS: an operating system for LLM agents on a message broker."""


# -- agents -------------------------------------------------------------------------------------------------

def load_agent(name_or_path: str) -> ModuleType:
    """An agent by its name in ``agents/`` or by the path of its folder (which holds ``agent.py``)."""
    path = Path(name_or_path)
    if path.is_dir() or name_or_path.endswith(".py"):
        file = path / "agent.py" if path.is_dir() else path
        if not file.exists():
            raise ConfigError(f"{file} does not exist: an agent folder must hold agent.py with run(kernel, task)")
        spec = importlib.util.spec_from_file_location(f"aios_agent_{file.parent.name}", file)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(f"agents.{name_or_path}.agent")
        except ModuleNotFoundError as exc:
            import agents

            known = sorted(p.name for p in Path(agents.__file__).parent.iterdir() if (p / "agent.py").exists())
            raise ConfigError(f"no agent named {name_or_path!r} ({exc}); known agents: {', '.join(known)}, "
                              "or give the path of an agent folder") from None
    if not callable(getattr(module, "run", None)):
        raise ConfigError(f"agent {name_or_path!r} has no run(kernel, task) function")
    return module


@main.command()
@click.argument("agent")
@click.argument("task")
@click.option("--agent-id", default=None, help="The agent's id (default: the agent's name).")
@click.option("--timeout", "timeout_s", type=float, default=None, help="Per-syscall timeout in seconds.")
@click.option("-v", "--verbose", is_flag=True, help="Show each step and the kernel's start-up.")
def run(agent: str, task: str, agent_id: str | None, timeout_s: float | None, verbose: bool) -> None:
    """Run AGENT (a name in agents/ or a folder) on TASK and print its answer.

    With AIOS_BROKER_URL set, or an `aios up` running, the agent uses that kernel; otherwise an embedded
    Redis and the three workers start for this run and stop after it.
    """
    from aios.sdk.client import Kernel
    from aios.ops.embedded import LocalKernel
    from aios.settings import discover

    interrupts = _Interrupts()
    try:
        with interrupts:
            module = load_agent(agent)
            settings = get_settings()
            agent_id = agent_id or Path(agent).name.removesuffix(".py").replace("_", "-")
            local: LocalKernel | None = None
            if settings.broker_url is None and discover(settings) is None:
                local = LocalKernel(settings, progress=_say if verbose else None)
                _say("starting an embedded kernel (set AIOS_BROKER_URL or run `aios up` to use a long-lived one)")
                t0 = time.monotonic()
                local.start()
                settings = local.settings
                _say(f"kernel ready in {time.monotonic() - t0:.1f}s")
            if settings.auth == "required":
                from aios.policy.identity import Credentials

                Credentials(settings).ensure(agent_id)  # who runs `aios run` may act as the agent it starts
            try:
                with Kernel(agent_id, settings=settings, timeout_s=timeout_s) as kernel:
                    extra = {"verbose": True} if verbose and _accepts(module.run, "verbose") else {}
                    answer = module.run(kernel, task, **extra)
            finally:
                if local is not None:
                    _say("stopping the embedded kernel")
                    local.stop()
    except BaseException as exc:
        # An interrupt can surface as another exception (Python wraps one raised during an import, say).
        if interrupts.seen or isinstance(exc, KeyboardInterrupt):
            _say("interrupted; kernel stopped")
            sys.exit(130)
        if isinstance(exc, (AIOSError, ValueError)):
            _fail(exc)
        raise
    click.echo(answer)


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    import inspect

    return name in inspect.signature(fn).parameters


class _Interrupts:
    """Ctrl-C and SIGTERM both raise KeyboardInterrupt, and are remembered: shutdown is the same for both."""

    def __init__(self) -> None:
        self.seen = False

    def _raise(self, signum: int, frame: Any) -> None:
        self.seen = True
        raise KeyboardInterrupt

    def __enter__(self) -> "_Interrupts":
        self._old = {sig: signal.signal(sig, self._raise) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


# -- kernel and workers ---------------------------------------------------------------------------------------

@main.command()
@click.option("--flower", "flower_port", type=int, default=None, help="Also serve Flower on this port.")
@click.option("--metrics-port", type=int, default=None, help="Also serve the kernel's Prometheus metrics on this port.")
@click.option("--loglevel", default="WARNING", show_default=True)
def up(flower_port: int | None, metrics_port: int | None, loglevel: str) -> None:
    """Run the local kernel (embedded Redis unless AIOS_BROKER_URL is set, plus the three workers) until Ctrl-C."""
    from aios.ops.embedded import LocalKernel

    settings = get_settings()
    local = LocalKernel(settings, persistent=True, loglevel=loglevel, progress=_say,
                        extra_worker_args=("-E",) if flower_port else ())
    interrupts = _Interrupts()
    try:
        with interrupts:
            local.start()
            local.publish_discovery()
            if flower_port:
                local.start_flower(flower_port)
            if metrics_port is not None:
                from aios.ops.metrics import serve

                _server, url = serve(local.settings.model_copy(update={"redis_url": local.settings.state_redis_url()}),
                                     port=metrics_port)
                _say(f"Prometheus metrics on {url}")
            _say(f"kernel up: broker {local.broker_url}; logs in {local.log_dir}")
            click.echo(f"export AIOS_BROKER_URL={local.broker_url} AIOS_REDIS_URL={local.settings.state_redis_url()}")
            _say("processes on this machine find this kernel without configuration; Ctrl-C stops it")
            while all(local.alive().values()):
                time.sleep(0.5)
            dead = [n for n, ok in local.alive().items() if not ok]
            _fail(RuntimeError(f"{', '.join(dead)} exited; see the logs in {local.log_dir}; stopping the kernel"))
    except BaseException as exc:
        if not (interrupts.seen or isinstance(exc, KeyboardInterrupt)):
            if isinstance(exc, AIOSError):
                _fail(exc)
            raise
        _say("stopping (waiting for syscalls in progress)")
    finally:
        local.withdraw_discovery()
        local.stop()


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("resource", type=click.Choice(sorted(QUEUES)))
@click.option("--core", default=None, help="LLM worker: serve this core of AIOS_LLM_MODELS (queue aios.llm.<core>).")
@click.pass_context
def worker(ctx: click.Context, resource: str, core: str | None) -> None:
    """Run one RESOURCE worker in the foreground; extra arguments go to `celery worker`."""
    from aios.sdk.client import resolve_settings
    from aios.settings import worker_queue

    try:
        settings = resolve_settings(None)
        if core is not None:
            if resource != "llm":
                raise ConfigError("--core is for LLM workers: `aios worker llm --core <name>`")
            settings = Settings(**{**settings.model_dump(), "llm_core": core})
    except AIOSError as exc:
        _fail(exc)
    env = {**os.environ, **settings.to_env()}
    argv = [sys.executable, "-m", "celery", "-A", f"workers.{resource}", "worker", "-Q",
            worker_queue(settings, resource), *ctx.args]
    os.execvpe(argv[0], argv, env)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def status(as_json: bool) -> None:
    """Queues, workers and syscalls in flight."""
    from aios.sdk.client import resolve_settings
    from aios.ops.status import collect

    try:
        info = collect(resolve_settings(None))
    except AIOSError as exc:
        _fail(exc)
    except Exception as exc:
        _fail(RuntimeError(f"cannot read the kernel's state: {exc}; is the broker up? (`aios up`)"))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"broker: {info['broker']}")
    t = Table("queue", "waiting")
    for q, n in info["queues"].items():
        t.add_row(q, "-" if n is None else str(n))
    console.print(t)
    t = Table("worker", "active", "reserved")
    for w in info["workers"]:
        t.add_row(w["name"], str(w["active"]), str(w["reserved"]))
    console.print(t if info["workers"] else "[yellow]no worker answered[/yellow]")
    if info["in_flight"]:
        t = Table("syscall", "kind", "agent", "priority", "worker")
        for s in info["in_flight"]:
            t.add_row(str(s["id"]), str(s["kind"]), str(s["agent_id"]), str(s["priority"]), s["worker"])
        console.print(t)
    t = Table("resource", "policy", "wait p50", "wait p90", "wait p99", "of last")
    for r in info["scheduling"]:
        t.add_row(r["resource"], r["policy"], f"{r['wait_p50_s'] * 1000:.0f} ms", f"{r['wait_p90_s'] * 1000:.0f} ms",
                  f"{r['wait_p99_s'] * 1000:.0f} ms", str(r["recent"]))
    console.print(t)
    if info["agents"]:
        t = Table("agent", "resource", "syscalls", "attained", "service", "mean wait", "tokens used")
        for a in info["agents"]:
            t.add_row(a["agent"], a["resource"], str(a["syscalls"]), f"{a['attained_s']:.2f} s",
                      f"{a['service_s']:.2f} s", f"{a['mean_wait_s'] * 1000:.0f} ms",
                      str(info["tokens_used"].get(a["agent"], "")) if a["resource"] == "llm" else "")
        console.print(t)
    if info["quotas"]:
        window = f"{info['quota_window_s']:g} s"
        t = Table("quota scope", f"requests / {window}", f"tokens / {window}", "running", "limits")
        for q in info["quotas"]:
            t.add_row(q["scope"], str(q["requests"]), str(q["tokens"]), str(q["running"]),
                      ", ".join(f"{k}={v}" for k, v in q["limits"].items()))
        console.print(t)
    console.print(f"answered: {info['answered'] or '{}'}")
    console.print(f"rejected: {info['rejected'] or '{}'}; dead letters kept: {info['deadletters']} (`aios deadletters`)")


@main.command()
@click.option("--port", default=9464, show_default=True, type=click.IntRange(0, 65535))
@click.option("--address", default="127.0.0.1", show_default=True)
def metrics(port: int, address: str) -> None:
    """Serve the kernel's metrics for Prometheus on http://ADDRESS:PORT/metrics (until Ctrl-C)."""
    from aios.sdk.client import resolve_settings
    from aios.ops.metrics import serve

    try:
        settings = resolve_settings(None)
        server, url = serve(settings, port=port, address=address)
    except (AIOSError, OSError) as exc:
        _fail(exc)
    _say(f"serving Prometheus metrics on {url}; Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()


@main.group()
def quota() -> None:
    """Token budgets: what agents used, and resetting an agent's account."""


@quota.command("reset")
@click.argument("agent_id")
def quota_reset(agent_id: str) -> None:
    """Set AGENT_ID's used tokens back to zero (its token_budget starts again)."""
    import redis as redis_py

    from aios.state import keys
    from aios.sdk.client import resolve_settings

    try:
        r = redis_py.Redis.from_url(resolve_settings(None).state_redis_url())
        used = r.hget(keys.TOKENS_USED, agent_id)
        r.hdel(keys.TOKENS_USED, agent_id)
    except AIOSError as exc:
        _fail(exc)
    _say(f"token account of {agent_id!r} reset (it had used {int(used or 0)} tokens)")


@main.command()
@click.option("--limit", default=20, show_default=True)
def deadletters(limit: int) -> None:
    """The most recent rejected messages, newest first, as JSON lines."""
    from aios.sdk.client import resolve_settings
    from aios.ops.status import deadletters as read

    try:
        for entry in read(resolve_settings(None), limit):
            click.echo(json.dumps(entry))
    except AIOSError as exc:
        _fail(exc)


# -- approvals ------------------------------------------------------------------------------------------------

def _approvals() -> "Any":
    from aios.policy.approvals import Approvals
    from aios.sdk.client import resolve_settings

    try:
        return Approvals(resolve_settings(None))
    except AIOSError as exc:
        _fail(exc)


@main.command()
@click.option("--json", "as_json", is_flag=True)
def approvals(as_json: bool) -> None:
    """Irreversible syscalls waiting for an operator, oldest first."""
    pending = [r.public() for r in _approvals().pending()]
    if as_json:
        click.echo(json.dumps(pending, indent=2))
        return
    if not pending:
        click.echo("no syscall waits for approval")
        return
    from rich.console import Console
    from rich.table import Table

    t = Table("id", "agent", "what", "why", "time left")
    for r in pending:
        left = r["deadline"] - time.time()
        t.add_row(r["id"], r["agent_id"], r["summary"], r["reason"], f"{left:.0f}s" if left > 0 else "expired")
    Console().print(t)
    click.echo("approve with `aios approve <id>`, deny with `aios deny <id>`")


@main.command()
@click.argument("syscall_id")
def approve(syscall_id: str) -> None:
    """Let a waiting irreversible syscall run."""
    try:
        _approvals().approve(syscall_id)
    except AIOSError as exc:
        _fail(exc)
    _say(f"approved {syscall_id}: it runs on the next free worker")


@main.command()
@click.argument("syscall_id")
@click.option("--reason", default="denied by an operator", show_default=True)
def deny(syscall_id: str, reason: str) -> None:
    """Refuse a waiting irreversible syscall: the agent gets an error, nothing runs."""
    try:
        _approvals().deny(syscall_id, reason)
    except AIOSError as exc:
        _fail(exc)
    _say(f"denied {syscall_id}")


# -- agent identities ---------------------------------------------------------------------------------------

@main.group()
def agent() -> None:
    """Agent credentials: every syscall is signed with its agent's credential."""


def _credentials() -> "Any":
    from aios.sdk.client import resolve_settings
    from aios.policy.identity import Credentials

    try:
        return Credentials(resolve_settings(None))
    except AIOSError as exc:
        _fail(exc)


@agent.command("create")
@click.argument("agent_id")
@click.option("--group", "groups", multiple=True, help="A privilege group the agent belongs to (repeatable).")
@click.option("--expires-in", "expires_in_s", type=float, default=None, help="Seconds until the credential expires.")
@click.option("--print-secret", is_flag=True, help="Also print the secret (for AIOS_AGENT_SECRET elsewhere).")
def agent_create(agent_id: str, groups: tuple[str, ...], expires_in_s: float | None, print_secret: bool) -> None:
    """Issue a credential for AGENT_ID (replacing any earlier one) and save it for processes on this machine."""
    from aios.policy.identity import credential_file

    store = _credentials()
    try:
        cred = store.create(agent_id, groups=groups, expires_in_s=expires_in_s)
    except AIOSError as exc:
        _fail(exc)
    _say(f"credential for {agent_id!r} saved in {credential_file(store.settings, agent_id)}")
    if print_secret:
        click.echo(cred.secret)


@agent.command("revoke")
@click.argument("agent_id")
def agent_revoke(agent_id: str) -> None:
    """Revoke AGENT_ID's credential: workers refuse its syscalls from now on."""
    if not _credentials().revoke(agent_id):
        _fail(ValueError(f"no agent {agent_id!r}; see `aios agent list`"))
    _say(f"credential of {agent_id!r} revoked")


@agent.command("list")
@click.option("--json", "as_json", is_flag=True)
def agent_list(as_json: bool) -> None:
    """Agents with credentials."""
    creds = [c.public() for c in _credentials().list()]
    if as_json:
        click.echo(json.dumps(creds, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table("agent", "created", "expires", "revoked", "groups")
    fmt = lambda ts: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "never"  # noqa: E731
    for c in creds:
        t.add_row(c["agent_id"], fmt(c["created_at"]), fmt(c["expires_at"]), "yes" if c["revoked"] else "no",
                  ",".join(c["groups"]))
    Console().print(t)


# -- benchmarks -----------------------------------------------------------------------------------------------

@main.group()
def bench() -> None:
    """Benchmarks: each runs its contenders side by side and reports ratios."""


@bench.command()
@click.option("--requests", "n_latency", default=1000, show_default=True, help="Sequential round trips per contender, in total, split across the rounds.")
@click.option("--throughput-requests", "n_throughput", default=2000, show_default=True,
              help="Syscalls per contender for throughput, in total, split across the rounds.")
@click.option("--rounds", default=5, show_default=True, help="Interleaved rounds (contenders alternate).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def overhead(n_latency: int, n_throughput: int, rounds: int, json_path: Path | None) -> None:
    """Kernel no-op tool syscall vs raw Celery no-op task, on the same broker and worker."""
    from aios_bench.overhead import run_overhead

    try:
        run_overhead(get_settings(), n_latency=n_latency, n_throughput=n_throughput, rounds=rounds,
                     json_path=json_path)
    except AIOSError as exc:
        _fail(exc)


def _params(defaults: Any, quick: Any, use_quick: bool, given: dict[str, Any]) -> Any:
    """The benchmark's parameters: its defaults (or its --quick ones), then the options given on the command line."""
    from dataclasses import replace

    return replace(quick if use_quick else defaults, **{k: v for k, v in given.items() if v is not None})


@bench.command()
@click.option("--agents", type=int, default=None, help="Agents (threads), each with its own client.  [default: 64]")
@click.option("--calls", type=int, default=None, help="LLM calls per agent, one after the other.  [default: 6]")
@click.option("--rpm", type=int, default=None, help="Provider limit: requests per window.  [default: 48]")
@click.option("--tpm", type=int, default=None,
              help="Provider limit: tokens per window.  [default: 25% above what --rpm requests use]")
@click.option("--window-s", type=float, default=None,
              help="Sliding window of the limits, provider's and kernel's (60: per minute).  [default: 15]")
@click.option("--service-ms", type=float, default=None, help="Provider service time per request.  [default: 100]")
@click.option("--max-tokens", type=int, default=None, help="max_tokens of every call.  [default: 32]")
@click.option("--quota-margin", type=float, default=None,
              help="Set the kernel's quota this fraction below the provider's limits.  [default: 0]")
@click.option("--quick", is_flag=True, help="A short run (5 s window, 40 requests per window, 2 calls per agent).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def ratelimit(quick: bool, json_path: Path | None, **given: Any) -> None:
    """Agents against a rate-limited provider: direct openai client vs the kernel with a global quota."""
    from aios_bench.ratelimit import QUICK, RateParams, run_ratelimit

    try:
        run_ratelimit(get_settings(), _params(RateParams(), QUICK, quick, given), json_path=json_path)
    except AIOSError as exc:
        _fail(exc)


def _int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    """A comma-separated list of integers (``1,2,4``; ``10_000`` allowed); None stays None (the default applies)."""
    if value is None:
        return None
    try:
        numbers = tuple(int(v.replace("_", "")) for v in value.split(",") if v.strip())
    except ValueError:
        numbers = ()
    if not numbers:
        raise click.BadParameter(f"expected integers separated by commas, like 1,2,4; got {value!r}")
    return numbers


@bench.command()
@click.option("--workers", callback=_int_list, default=None,
              help="LLM worker counts to compare, comma-separated; must include 1 and 4.  [default: 1,2,4]")
@click.option("--agents", type=int, default=None, help="Agents (threads) keeping the workers busy.  [default: 16]")
@click.option("--calls-per-worker", type=int, default=None,
              help="Measured calls per worker in each block.  [default: 25]")
@click.option("--rounds", type=int, default=None, help="Interleaved rounds (order alternates).  [default: 3]")
@click.option("--service-ms", type=float, default=None, help="Provider service time per request.  [default: 200]")
@click.option("--max-tokens", type=int, default=None, help="max_tokens of every call.  [default: 16]")
@click.option("--quick", is_flag=True, help="A short run (1 round, 8 calls per worker, 8 agents).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def scale(quick: bool, json_path: Path | None, **given: Any) -> None:
    """LLM throughput with 1, 2 and 4 worker processes against a provider with a fixed service time."""
    from aios_bench.scale import QUICK, ScaleParams, run_scale

    try:
        run_scale(get_settings(), _params(ScaleParams(), QUICK, quick, given), json_path=json_path)
    except AIOSError as exc:
        _fail(exc)


@bench.command()
@click.option("--seconds", default=8.0, show_default=True, help="Length of each share measurement.")
@click.option("--demands", default="1,2,4,8", show_default=True, callback=_int_list, help="Syscalls each competing agent keeps in flight.")
@click.option("--urgent", default=40, show_default=True, help="Sequential syscalls of the high-priority agent.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def fairness(seconds: float, demands: tuple[int, ...], urgent: int, json_path: Path | None) -> None:
    """Fair share (fifo vs fair) among unequal demands, and an urgent agent under a flood (fifo vs priority)."""
    from aios_bench.fairness import run_fairness

    try:
        run_fairness(get_settings(), seconds=seconds, demands=demands, urgent=urgent, json_path=json_path)
    except AIOSError as exc:
        _fail(exc)


@bench.command()
@click.option("--items", default=2000, show_default=True, help="Eviction: memory items per contender.")
@click.option("--accesses", default=20_000, show_default=True, help="Eviction: reads in the skewed trace.")
@click.option("--budget", default=0, show_default=True,
              help="Eviction: fast-tier budget in bytes per agent; 0: a tenth of the items' bytes.")
@click.option("--sizes", default="10000", show_default=True, callback=_int_list,
              help="Search latency: memory sizes, comma-separated (e.g. 10000,100000).")
@click.option("--queries", default=200, show_default=True, help="Search latency: queries per size.")
@click.option("--embed-limit", default=10_000, show_default=True,
              help="Search latency: items embedded by the model; further items reuse those vectors plus noise.")
@click.option("--seed", default=1, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def memory(items: int, accesses: int, budget: int, sizes: tuple[int, ...], queries: int, embed_limit: int, seed: int,
           json_path: Path | None) -> None:
    """LRU-K vs LRU fast-tier hit rate at one budget, and memory search latency by size."""
    from aios_bench.memory import run_memory_bench

    try:
        run_memory_bench(get_settings(), items=items, accesses=accesses, budget=budget, sizes=sizes,
                         queries=queries, embed_limit=embed_limit, seed=seed, json_path=json_path)
    except AIOSError as exc:
        _fail(exc)


@bench.command()
@click.option("--sizes", default="1,4,8,16,32", show_default=True, callback=_int_list,
              help="Batch sizes, comma-separated.")
@click.option("--tokens", default=64, show_default=True, help="Tokens generated per sequence (greedy).")
@click.option("--threads", default=2, show_default=True, help="llama.cpp threads.")
@click.option("--quantize", default="", help="Also measure the model converted to these types, e.g. q8_0,q4_0.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def engine(sizes: tuple[int, ...], tokens: int, threads: int, quantize: str, json_path: Path | None) -> None:
    """The batching engine alone: the same prompts one at a time vs batched, per batch size and weight type."""
    from aios_bench.engine import run_engine_bench

    try:
        settings = get_settings()
        run_engine_bench(Path(settings.data_dir), sizes=list(sizes), tokens=tokens, threads=threads,
                         gpu_layers=settings.llm_n_gpu_layers,
                         quantize=[q.strip() for q in quantize.split(",") if q.strip()], json_path=json_path)
    except AIOSError as exc:
        _fail(exc)


@bench.command()
@click.option("--agents", default="8,16,32", show_default=True, callback=_int_list,
              help="Numbers of concurrent agents, comma-separated.")
@click.option("--steps", default=2, show_default=True, help="LLM + tool syscall pairs per agent script.")
@click.option("--short", "short", default=24, show_default=True, help="max_tokens of a short LLM step.")
@click.option("--long", "long", default=160, show_default=True, help="max_tokens of a long LLM step (every eighth).")
@click.option("--batch-size", default=16, show_default=True, help="Sequences decoded together (batching).")
@click.option("--quantum", default=16, show_default=True, help="Time slice in tokens (round robin).")
@click.option("--threads", default=2, show_default=True, help="llama.cpp threads, for the server and the kernel alike.")
@click.option("--contenders", default=",".join(("baseline", "fifo", "rr", "batching")), show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def agents(agents: tuple[int, ...], steps: int, short: int, long: int, batch_size: int, quantum: int, threads: int,
           contenders: str, json_path: Path | None) -> None:
    """N concurrent ReAct-style agents: llama.cpp server directly vs the kernel with FIFO, RR, batching."""
    from aios_bench.agents import run_agents_bench

    try:
        run_agents_bench(get_settings(), agents=list(agents), steps=steps, short=short, long=long, batch_size=batch_size,
                         quantum=quantum, threads=threads,
                         contenders=tuple(c.strip() for c in contenders.split(",") if c.strip()),
                         json_path=json_path)
    except AIOSError as exc:
        _fail(exc)


register_access_commands(main)

if __name__ == "__main__":
    main()
