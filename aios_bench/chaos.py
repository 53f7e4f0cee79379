"""``aios bench chaos``: steady load while workers are SIGKILLed and the broker restarts; nothing lost, nothing twice?

Per broker (``embedded``: the ``aios up`` Valkey with its append-only file; ``redis``: a redis-server of the
benchmark's own, append-only file on, restarted by SIGKILL; ``rabbitmq``: a private vhost of the local RabbitMQ,
restarted with ``rabbitmqctl stop_app/start_app``, its state in a redis-server of the benchmark's own), a kernel with
all three workers under the ``aios up`` supervisor (:class:`aios.ops.supervisor.Supervisor`, which restarts what
dies). ``agents`` agent threads, a third on each resource, loop over an LLM chat (the LLM provider emulator, :mod:`aios_bench.emulator`: the
benchmark is about the kernel's faults, not the model's speed, and a killed LLM worker comes back in a second
instead of reloading a model), a tool syscall with a side effect (``ledger_append`` of :mod:`aios_bench.ledger`:
each execution appends its syscall id to a ledger file) and a file read. During the fault phase the benchmark
SIGKILLs each worker type ``kills`` times at random moments and restarts the broker once; then agents stop
submitting and the load drains.

Counted per broker: syscalls submitted (accepted by the SDK), answered (any answer, an error included), lost
(accepted, never answered: the SDK timed out), failed (answered with an error, by code), replies left over after
their caller had one (answered twice), ledger ids that ran more than once (side effects twice), time to recover
(from a kill to the answer of each syscall of that worker type in flight at the kill; from the broker restart, every
syscall in flight), and the p99 latency of syscalls that overlapped a fault window (a fault and the
``FAULT_WINDOW_S`` after it) against the others.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis

from aios.ops.embedded import LocalKernel
from aios.ops.supervisor import Supervisor
from aios.policy.identity import Credentials
from aios.sdk.client import Kernel
from aios.settings import Settings
from aios.state import keys
from aios.wire.errors import AIOSError, KernelUnavailable, SyscallTimeout
from aios.wire.priority import is_redis_url
from aios.wire.syscalls import Status, Syscall
from aios_bench.common import Bound, consoles, machine, print_targets, save, target
from aios_bench.emulator import EmulatorProcess
from aios_bench.ledger import LEDGER_ONCE, executions

RESOURCES = ("llm", "tool", "storage")
FAULT_WINDOW_S = 10.0
"""A syscall whose life overlaps ``[fault, fault + FAULT_WINDOW_S]`` counts as "during faults"."""
TIMEOUT_S = 30.0
"""Each syscall's ``timeout_s`` (and the kernel's ``AIOS_MAX_SYSCALL_TIMEOUT_S``); ``--quick``: 20."""
VISIBILITY_MARGIN_S = 5
"""The kernel's ``AIOS_VISIBILITY_TIMEOUT_S`` here is the timeout plus this (it must be above it). A Redis broker
gives a killed worker's message back only after it (until a lease requeues it sooner); by then the syscall is past
its deadline and is answered ``deadline_exceeded``: counted as failed, not lost."""
WARMUP_S = 5.0
"""Load without faults before the first one."""
TOOL_WORK_MS = 50
LLM_SERVICE_MS = 100
TARGETS: dict[str, tuple[float, Bound]] = {"lost": (0, "max"), "duplicated_effects": (0, "max"),
                                           "recovery_p99_s": (15.0, "max")}


@dataclass
class Record:
    resource: str
    submitted: float
    answered: float | None = None
    outcome: str = "pending"
    """``ok``, an error code, ``timeout`` (accepted, never answered) or ``refused`` (the SDK could not submit)."""
    syscall_id: str = ""


@dataclass
class Fault:
    at: float
    what: str
    """``kill:<resource>`` or ``restart:broker``."""


@dataclass
class Run:
    broker: str
    records: list[Record] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    leftover_replies: set[str] = field(default_factory=set)
    """Ids of syscalls whose reply was still waiting after the load drained."""
    ledger: Counter[str] = field(default_factory=Counter)
    t0: float = 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnRedis:
    """A redis-server of the benchmark's own on a private port, append-only file on (fsync every second), that it
    can kill and start again on the same files."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="aios-chaos-redis-"))
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or shutil.which("valkey-server")
        if binary is None:
            from aios.ops.embedded import redis_server_binary

            binary = redis_server_binary()
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                                      "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        for _ in range(200):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise KernelUnavailable(f"redis-server on port {self.port} did not start")

    def restart(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        time.sleep(0.5)
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def rabbitmqctl(*args: str, check: bool = True) -> None:
    if shutil.which("rabbitmqctl") is None:
        raise KernelUnavailable("the rabbitmq contender restarts the local RabbitMQ with rabbitmqctl, which is not "
                                "on PATH here: run it on the RabbitMQ machine, or leave rabbitmq out of --brokers")
    subprocess.run(["rabbitmqctl", *args], check=check, capture_output=True, timeout=120)


class Agent(threading.Thread):
    def __init__(self, k: Kernel, run: Run, stop: threading.Event, offset: int, tool: str) -> None:
        super().__init__(daemon=True)
        self.k, self.run_, self.stop, self.i, self.tool = k, run, stop, offset, tool

    def syscall(self, resource: str) -> Syscall:
        if resource == "llm":
            return self.k.llm_syscall("Say hi.", max_tokens=16)
        if resource == "tool":
            return self.k.tool_syscall(self.tool, {"work_ms": TOOL_WORK_MS})
        return self.k.storage_syscall("read", "notes.txt")

    def run(self) -> None:
        # Each agent keeps to one resource, so that a dead worker of one stalls only its own agents and the others'
        # load goes on through the fault (an agent looping over all three would wait on whichever is down).
        resource = RESOURCES[self.i % len(RESOURCES)]
        while not self.stop.is_set():
            rec = Record(resource, time.time())
            self.run_.records.append(rec)
            try:
                pending = self.k.submit(self.syscall(resource))
            except AIOSError as exc:  # not accepted: the agent was told at once
                rec.outcome, rec.answered = f"refused:{exc.code}", time.time()
                time.sleep(0.2)
                continue
            rec.syscall_id = pending.id
            try:
                response = self.k.wait_response(pending)
                rec.outcome = "ok" if response.status is Status.OK else (response.error.code if response.error
                                                                        else "error")
            except SyscallTimeout:
                rec.outcome = "timeout"
            except AIOSError as exc:
                rec.outcome = f"wait:{exc.code}"
            rec.answered = time.time()


def fault_plan(rng: random.Random, phase_s: float, kills: int) -> list[tuple[float, str]]:
    """When to do what, as seconds into the fault phase: ``kills`` kills of each worker type and one broker
    restart, in shuffled slots spread over the phase (a random moment in the first half of each slot)."""
    events = [f"kill:{r}" for r in RESOURCES for _ in range(kills)] + ["restart:broker"]
    rng.shuffle(events)
    slot = phase_s / len(events)
    return [(i * slot + rng.uniform(0, slot / 2), what) for i, what in enumerate(events)]


def _setup_broker(broker: str, stack: ExitStack, base: Settings) -> tuple[Settings, Any]:
    """The kernel's settings for ``broker`` and how to restart that broker (``None``: the embedded one, which the
    supervisor restarts after a SIGKILL)."""
    if broker == "embedded":
        return base, None
    if broker == "redis":
        own = OwnRedis()
        own.start()
        stack.callback(own.stop)
        return base.updated(broker_url=own.url, broker_users="off"), own.restart
    state = OwnRedis()
    state.start()
    stack.callback(state.stop)
    vhost = "aios-chaos"
    rabbitmqctl("delete_vhost", vhost, check=False)  # what an interrupted run left
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    stack.callback(lambda: rabbitmqctl("delete_vhost", vhost))

    def restart_rabbit() -> None:
        rabbitmqctl("stop_app")
        time.sleep(1.0)
        rabbitmqctl("start_app")

    url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    return base.updated(broker_url=url, redis_url=state.url, broker_users="off"), restart_rabbit


def run_broker(broker: str, settings: Settings, *, agents: int, phase_s: float, kills: int, seed: int,
               timeout_s: float, log: Any, tool: str = LEDGER_ONCE) -> Run:
    run = Run(broker)
    rng = random.Random(seed)
    data = Path(tempfile.mkdtemp(prefix=f"aios-chaos-{broker}-"))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, data, True)
        emu = stack.enter_context(EmulatorProcess(service_s=LLM_SERVICE_MS / 1000))
        base = settings.updated(
            data_dir=str(data), broker_url=None, redis_url=None, llm_backend="openai", llm_base_url=f"{emu.url}/v1",
            llm_model="emulated", llm_api_key="emulated", tool_modules="aios_bench.ledger", approvals="off",
            max_syscall_timeout_s=timeout_s, default_timeout_s=timeout_s,
            visibility_timeout_s=int(timeout_s) + VISIBILITY_MARGIN_S,
            worker_concurrency=4)
        ks, restart_broker = _setup_broker(broker, stack, base)
        log(f"[{broker}] starting the kernel")
        lk = stack.enter_context(LocalKernel(ks, persistent=broker == "embedded", progress=log))
        creds = Credentials(lk.settings)
        kernels = []
        for i in range(agents):
            agent_id = f"chaos-{i:03d}"
            secret = creds.create(agent_id, write_file=False).secret
            k = Kernel(agent_id, settings=lk.settings, credential=secret, timeout_s=timeout_s)
            stack.callback(k.close)
            k.write_file("notes.txt", f"notes of {agent_id}")
            kernels.append(k)
        creds.redis.close()
        sup = Supervisor(lk, report=lambda message, loud: log(f"[{broker}] supervisor: {message}"))
        sup.start()
        sup_stop = threading.Event()
        sup_thread = threading.Thread(target=sup.run, args=(sup_stop,), daemon=True)
        sup_thread.start()
        stack.callback(sup_thread.join, 5)
        stack.callback(sup_stop.set)
        stop = threading.Event()
        threads = [Agent(k, run, stop, i, tool) for i, k in enumerate(kernels)]
        run.t0 = time.time()
        for t in threads:
            t.start()
        log(f"[{broker}] load from {agents} agents; faults for {phase_s:.0f} s after {WARMUP_S:.0f} s")
        for offset, what in fault_plan(rng, phase_s, kills):
            offset += WARMUP_S
            time.sleep(max(0.0, run.t0 + offset - time.time()))
            if what == "restart:broker":
                at = time.time()
                if restart_broker is None:  # the embedded Valkey: SIGKILL, and the supervisor starts it again
                    proc = lk.supervised()["redis"]
                    proc.kill()
                else:
                    restart_broker()
            else:
                name = what.split(":", 1)[1]
                deadline = time.time() + 30
                while time.time() < deadline and not lk.alive().get(name, False):
                    time.sleep(0.1)  # still coming back from the last kill
                at = time.time()
                try:
                    lk.kill_worker(name)
                except (KeyError, ProcessLookupError):
                    continue
            run.faults.append(Fault(at, what))
            log(f"[{broker}] {at - run.t0:5.1f} s {what}")
        time.sleep(max(0.0, run.t0 + WARMUP_S + phase_s - time.time()))
        stop.set()
        log(f"[{broker}] draining")
        for t in threads:
            t.join(timeout_s + 10)
        time.sleep(1.0)
        run.leftover_replies = _leftover_replies(lk.settings, kernels)
        run.ledger = executions(data)
    return run


def _leftover_replies(settings: Settings, kernels: list[Kernel]) -> set[str]:
    """Ids of syscalls with a reply still waiting after the load drained: a second answer to a syscall whose caller
    had one, or a late answer to one whose caller gave up (told apart in :func:`summarize`)."""
    if not is_redis_url(settings.require_broker()):
        return {sid for k in kernels if k._inbox is not None for sid in k._inbox._got}
    r = redis.Redis.from_url(settings.state_redis_url())
    try:
        return {raw.decode().rsplit(":", 1)[1] for raw in r.scan_iter(match=keys.reply("*", "*"), count=1000)}
    finally:
        r.close()


def summarize(run: Run) -> dict[str, Any]:
    accepted = [r for r in run.records if not r.outcome.startswith("refused")]
    answered = [r for r in accepted if r.outcome not in ("timeout", "pending") and not r.outcome.startswith("wait:")]
    lost = len(accepted) - len(answered)
    answered_ids = {r.syscall_id for r in answered}
    twice = run.leftover_replies & answered_ids
    late = run.leftover_replies - answered_ids
    failed = Counter(r.outcome for r in answered if r.outcome != "ok")
    tool_ids = {r.syscall_id for r in accepted if r.resource == "tool"}
    dup_effects = sum(1 for sid, n in run.ledger.items() if n > 1 and sid in tool_ids)
    recoveries: list[float] = []
    unrecovered = 0
    unrecovered_ids: set[str] = set()
    per_fault: list[dict[str, Any]] = []
    for f in run.faults:
        hit = [r for r in accepted if r.submitted <= f.at and (r.answered is None or r.answered > f.at)
               and (f.what == "restart:broker" or r.resource == f.what.split(":", 1)[1])]
        these: list[float] = []
        for r in hit:
            if r.syscall_id in answered_ids and r.answered is not None:
                these.append(r.answered - f.at)
            else:
                unrecovered += 1
                unrecovered_ids.add(r.syscall_id)
        recoveries += these
        per_fault.append({"t_s": f.at - run.t0, "what": f.what, "affected": len(hit),
                          "unanswered": len(hit) - len(these), "recovery_max_s": max(these, default=None),
                          "recovery_p50_s": float(np.percentile(these, 50)) if these else None})
    windows = [(f.at, f.at + FAULT_WINDOW_S) for f in run.faults]

    def during(r: Record) -> bool:
        end = r.answered or r.submitted
        return any(r.submitted <= hi and end >= lo for lo, hi in windows)

    lat_in = [r.answered - r.submitted for r in answered if r.answered and during(r)]
    lat_out = [r.answered - r.submitted for r in answered if r.answered and not during(r)]

    def pct(values: list[float], q: float) -> float | None:
        return float(np.percentile(values, q)) if values else None

    recovery_p99 = pct(recoveries, 99) if not unrecovered else None
    out = {
        "submitted": len(accepted), "answered": len(answered), "ok": sum(1 for r in answered if r.outcome == "ok"),
        "lost": lost, "failed": dict(failed), "refused_at_submit": len(run.records) - len(accepted),
        "lost_syscalls": [{"id": r.syscall_id, "resource": r.resource, "submitted_t_s": r.submitted - run.t0,
                           "outcome": r.outcome, **_nearest_fault(run, r)}
                          for r in accepted if r.syscall_id not in answered_ids][:20],
        "extra_replies": len(twice), "late_answers": len(late), "tool_executions": sum(run.ledger[s] for s in tool_ids),
        "duplicated_effects": dup_effects, "faults": [{"t_s": f.at - run.t0, "what": f.what} for f in run.faults],
        "recovery_s": {"p50": pct(recoveries, 50), "p99": pct(recoveries, 99), "affected": len(recoveries),
                       "unrecovered": unrecovered, "unrecovered_syscalls": len(unrecovered_ids)},
        "per_fault": per_fault,
        "duplicated_effect_syscalls": [
            {"id": r.syscall_id, "runs": run.ledger[r.syscall_id], "submitted_t_s": r.submitted - run.t0,
             "answered_after_s": None if r.answered is None else r.answered - r.submitted, **_nearest_fault(run, r)}
            for r in accepted if r.resource == "tool" and run.ledger[r.syscall_id] > 1][:20],
        "latency_s": {"during_faults_p99": pct(lat_in, 99), "outside_faults_p99": pct(lat_out, 99),
                      "during_faults_n": len(lat_in), "outside_faults_n": len(lat_out)},
    }
    out["targets"] = {
        "lost": target(float(lost), *TARGETS["lost"]),
        "duplicated_effects": target(float(dup_effects), *TARGETS["duplicated_effects"]),
        "recovery_p99_s": target(recovery_p99, *TARGETS["recovery_p99_s"]),
    }
    return out


def _nearest_fault(run: Run, r: Record) -> dict[str, Any]:
    """The fault nearest to a syscall's submission, for the diagnosis of a lost one: which, and how long after the
    submission it came (negative: before)."""
    if not run.faults:
        return {}
    f = min(run.faults, key=lambda f: abs(f.at - r.submitted))
    return {"nearest_fault": f.what, "fault_after_submit_s": f.at - r.submitted}


def plot(path: Path, runs: list[Run]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(11, 3.2 * len(runs)), squeeze=False)
    colors = {"llm": "tab:blue", "tool": "tab:orange", "storage": "tab:green", "broker": "black"}
    for ax, run in zip(axes[:, 0], runs, strict=True):
        for res in RESOURCES:
            pts = [(r.answered - run.t0, r.answered - r.submitted) for r in run.records
                   if r.resource == res and r.answered is not None and r.outcome == "ok"]
            bad = [(r.answered - run.t0, r.answered - r.submitted) for r in run.records
                   if r.resource == res and r.answered is not None and r.outcome != "ok"]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=4, color=colors[res], label=f"{res} ok")
            if bad:
                ax.scatter([p[0] for p in bad], [p[1] for p in bad], s=14, marker="x", color=colors[res],
                           label=f"{res} error/timeout")
        for f in run.faults:
            what = f.what.split(":", 1)[1]
            ax.axvline(f.at - run.t0, color=colors.get(what, "gray"), linestyle="--" if what != "broker" else "-",
                       linewidth=1)
        ax.set_yscale("log")
        ax.set_ylabel("latency (s)")
        ax.set_title(f"{run.broker}: answers over time; dashed: a worker SIGKILLed, solid: broker restart")
        ax.legend(fontsize=7, loc="upper right", ncol=2)
    axes[-1, 0].set_xlabel("seconds since the load began")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_chaos(settings: Settings, *, brokers: list[str], agents: int = 32, phase_s: float = 60.0, kills: int = 3,
              seed: int = 13, timeout_s: float = TIMEOUT_S, json_path: Path | None = None,
              tool: str = LEDGER_ONCE) -> dict[str, Any]:
    """``tool``: the side-effecting tool the agents call: ``ledger_append_once`` (at-most-once: a copy of a syscall
    that started is answered ``interrupted``) or ``ledger_append`` (at-least-once: the window where an effect runs
    twice)."""
    out, err = consoles()
    runs = [run_broker(b, settings, agents=agents, phase_s=phase_s, kills=kills, seed=seed, timeout_s=timeout_s,
                       log=err.log, tool=tool) for b in brokers]
    result: dict[str, Any] = {
        "benchmark": "chaos", "machine": machine(),
        "params": {"agents": agents, "fault_phase_s": phase_s, "kills_per_worker_type": kills, "seed": seed,
                   "warmup_s": WARMUP_S, "syscall_timeout_s": timeout_s,
                   "visibility_timeout_s": int(timeout_s) + VISIBILITY_MARGIN_S,
                   "fault_window_s": FAULT_WINDOW_S, "llm": f"emulator ({LLM_SERVICE_MS} ms a call)",
                   "tool_work_ms": TOOL_WORK_MS, "tool": tool},
        "brokers": {run.broker: summarize(run) for run in runs},
    }
    result["targets"] = {f"{name}[{b}]": t for b, s in result["brokers"].items() for name, t in s["targets"].items()}
    for b, s in result["brokers"].items():
        rec, lat = s["recovery_s"], s["latency_s"]
        out.print(f"[bold]{b}[/]: submitted {s['submitted']}, answered {s['answered']} (ok {s['ok']}, failed "
                  f"{s['failed'] or 0}), lost {s['lost']}, extra replies {s['extra_replies']}, side effects twice "
                  f"{s['duplicated_effects']} of {s['tool_executions']}; recovery p50 {_fmt(rec['p50'])} p99 "
                  f"{_fmt(rec['p99'])} ({rec['unrecovered']} never); p99 latency during faults "
                  f"{_fmt(lat['during_faults_p99'])}, outside {_fmt(lat['outside_faults_p99'])}")
    print_targets(out, result["targets"], {k: TARGETS[k.split("[")[0]][1] for k in result["targets"]})
    save(json_path, result, lambda png: plot(png, runs), err.log)
    return result


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f} s"
