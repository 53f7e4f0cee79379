"""The ``aios`` command: run an agent, run the kernel, run a worker, look at the fleet, benchmark."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import click

from aios.ops.cli_access import _fail, _say
from aios.ops.cli_access import register as register_access_commands
from aios.ops.cli_agents import register as register_agent_commands
from aios.ops.cli_gateway import gateway as gateway_command
from aios.settings import QUEUES, Settings, get_settings
from aios.wire.errors import AIOSError, ConfigError


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
            module = importlib.import_module(f"aios_agents.{name_or_path}.agent")
        except ModuleNotFoundError as exc:
            import aios_agents

            known = sorted(p.name for p in Path(aios_agents.__file__).parent.iterdir() if (p / "agent.py").exists())
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
    from aios.ops.embedded import LocalKernel
    from aios.sdk.client import Kernel
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
            if settings.security.auth == "required":
                from aios.policy.identity import Credentials

                for who in (agent_id, *(f"{agent_id}-{role}" for role in getattr(module, "PEERS", ()))):
                    Credentials(settings).ensure(who)  # who runs `aios run` may act as the agents it starts
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
@click.option("--gateway", "gateway_port", type=int, default=None, help="Also serve the OpenAI gateway on this port.")
@click.option("--loglevel", default="WARNING", show_default=True)
def up(flower_port: int | None, metrics_port: int | None, gateway_port: int | None, loglevel: str) -> None:
    """Run the local kernel (embedded Redis unless AIOS_BROKER_URL is set, plus the three workers) until Ctrl-C."""
    from aios.ops.embedded import LocalKernel
    from aios.ops.supervisor import Supervisor

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
            if gateway_port is not None:
                local.start_gateway(gateway_port)
            if metrics_port is not None:
                from aios.ops.metrics import serve
                _server, url = serve(local.settings.updated(**{"redis_url": local.settings.state_redis_url()}),
                                     port=metrics_port)
                _say(f"Prometheus metrics on {url}")
            from aios.policy.broker_users import without_user
            _say(f"kernel up: broker {without_user(local.broker_url)}; logs in {local.log_dir}")
            # What agents elsewhere on this machine need (they add their own broker user); the kernel's own user is
            # in <data_dir>/kernel/operator.json, for operators.
            click.echo(f"export AIOS_BROKER_URL={without_user(local.broker_url)} "
                       f"AIOS_REDIS_URL={without_user(local.settings.state_redis_url())}")
            _say("processes on this machine find this kernel without configuration; Ctrl-C stops it; "
                 "a worker that exits is started again")
            Supervisor(local, report=_report).run()  # until Ctrl-C or SIGTERM
    except BaseException as exc:
        if not (interrupts.seen or isinstance(exc, KeyboardInterrupt)):
            if isinstance(exc, AIOSError):
                _fail(exc)
            raise
        _say("stopping (waiting for syscalls in progress)")
    finally:
        local.withdraw_discovery()
        local.stop()


def _report(message: str, loud: bool) -> None:
    """The supervisor's lines on `aios up`'s stderr: a crash loop or a failed start in red."""
    if loud:
        click.secho(f"[aios] {message}", fg="red", bold=True, err=True)
    else:
        _say(message)


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
    from aios.ops.status import collect
    from aios.sdk.client import resolve_settings

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
    if info["restarts"]:
        t = Table("process", "restarts", "last exit", "at")
        for name, r in info["restarts"].items():
            at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["last_exit_at"])) if r["last_exit_at"] else ""
            t.add_row(name, str(r["restarts"]), r["last_exit"] or "", at)
        console.print(t)
    if info["llm_workers"]:
        t = Table("LLM worker", "pid", "running", "beat", "cache hit/miss", "prefill saved", "affinity hit/miss/new",
                  "handed over")
        for w in info["llm_workers"]:
            t.add_row(w["id"] + (" (left)" if w.get("left") else ""), str(w.get("pid", "")),
                      f"{w['running']}/{w['slots']}", f"{w['seen_s_ago']:.0f} s",
                      f"{w.get('cache_hits', '-')}/{w.get('cache_misses', '-')}", str(w.get("prefill_tokens_saved", "-")),
                      f"{w['affinity_hit']}/{w['affinity_miss']}/{w['affinity_new']}", str(w["handovers"]))
        console.print(t)
    if info["llm_counters"]:
        c = info["llm_counters"]
        console.print(f"LLM, all workers: conversation cache hit rate {c['cache_hit_rate']:.0%}, prompt tokens from "
                      f"the cache {c['prefill_saved_share']:.0%} ({c.get('prefill_tokens_saved', 0)} saved), "
                      f"affinity hit rate {c['affinity_hit_rate']:.0%} ({c.get('affinity_hit', 0)} hits, "
                      f"{c.get('affinity_miss', 0)} misses, {c.get('handovers', 0)} handed over)")
    console.print(f"answered: {info['answered'] or '{}'}")
    console.print(f"rejected: {info['rejected'] or '{}'}; dead letters kept: {info['deadletters']} (`aios deadletters`)")


@main.command()
@click.option("--port", default=9464, show_default=True, type=click.IntRange(0, 65535))
@click.option("--address", default="127.0.0.1", show_default=True)
def metrics(port: int, address: str) -> None:
    """Serve the kernel's metrics for Prometheus on http://ADDRESS:PORT/metrics (until Ctrl-C)."""
    from aios.ops.metrics import serve
    from aios.sdk.client import resolve_settings
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
    from aios.sdk.client import resolve_settings
    from aios.state import keys
    from aios.state.connections import state_client
    try:
        r = state_client(resolve_settings(None))
        used = r.hget(keys.TOKENS_USED, agent_id)
        r.hdel(keys.TOKENS_USED, agent_id)
    except AIOSError as exc:
        _fail(exc)
    _say(f"token account of {agent_id!r} reset (it had used {int(used or 0)} tokens)")


@main.command()
@click.option("--limit", default=20, show_default=True)
def deadletters(limit: int) -> None:
    """The most recent rejected messages, newest first, as JSON lines."""
    from aios.ops.status import deadletters as read
    from aios.sdk.client import resolve_settings

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
@click.option("--json", "as_json", is_flag=True, help="Print JSON, with each request's full signed payload.")
def approvals(as_json: bool) -> None:
    """Irreversible syscalls waiting for an operator, the nearest deadline first: what each would do (its summary),
    the digest of exactly that payload, and why it needs approval."""
    pending = [r.public() for r in _approvals().pending()]
    if as_json:
        click.echo(json.dumps(pending, indent=2))
        return
    if not pending:
        click.echo("no syscall waits for approval")
        return
    for r in pending:  # one block each: the digest and the summary must not be cut or wrapped away
        left = r["deadline"] - time.time()
        click.secho(f"{r['id']}  agent {r['agent_id']}, {f'{left:.0f}s left' if left > 0 else 'expired'}", bold=True)
        click.echo(f"  what:    {r['summary']}\n  digest:  {r['digest']}\n  why:     {r['reason']}")
    click.echo("approve with `aios approve <id> [--digest <prefix>]`, deny with `aios deny <id>`")


def _hex_prefix(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not (8 <= len(value) <= 64 and all(c in "0123456789abcdefABCDEF" for c in value)):
        raise click.BadParameter("8 to 64 hex digits of the digest `aios approvals` shows")
    return value


@main.command()
@click.argument("syscall_id")
@click.option("--digest", "digest_prefix", default=None, callback=_hex_prefix,
              help="Approve only if the parked payload's digest starts with this (what you read in `aios approvals`).")
def approve(syscall_id: str, digest_prefix: str | None) -> None:
    """Let a waiting irreversible syscall run: exactly the payload parked under SYSCALL_ID."""
    try:
        request = _approvals().approve(syscall_id, digest_prefix=digest_prefix or "")
    except AIOSError as exc:
        _fail(exc)
    _say(f"approved {syscall_id} ({request.summary}; digest {request.digest[:16]}): it runs on the next free worker")


@main.command()
@click.argument("syscall_id")
@click.option("--reason", default="denied by an operator", show_default=True,
              help="Your note: the agent gets it with the kernel's own reason.")
def deny(syscall_id: str, reason: str) -> None:
    """Refuse a waiting irreversible syscall: the agent gets an error, nothing runs."""
    try:
        _approvals().deny(syscall_id, reason)
    except AIOSError as exc:
        _fail(exc)
    _say(f"denied {syscall_id}")


# -- benchmarks: aios_bench.cli, when the bench extra is installed ------------------------------------------

@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.pass_context
def bench(ctx: click.Context) -> None:
    """Benchmarks (the ``bench`` extra): each runs its contenders side by side and reports ratios."""
    try:
        from aios_bench.cli import bench as commands
    except ImportError as exc:
        _fail(ConfigError(f"the benchmarks need the bench extra ({exc.name} is missing): "
                          'pip install "aios-kernel[bench]"'))
    commands.main(args=ctx.args, prog_name="aios bench", standalone_mode=True)


register_access_commands(main)
register_agent_commands(main)
main.add_command(gateway_command)

if __name__ == "__main__":
    main()

