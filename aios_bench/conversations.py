"""``aios bench conversations``: what the conversation cache buys on a multi-turn agent workload, engine alone.

N agents take S steps each, concurrently; every call carries the agent's whole conversation so far (a system
prompt, then each earlier question and reply: the shape of a chat or ReAct agent), and an agent sends its next
call once its last reply is back. Two contenders, each on a freshly loaded LLM backend (the kernel's own
:class:`~aios.services.llm.service.LlamaCppBackend`: chat template, tokenizer, batching engine): the engine
without the cache (every call prefills its whole conversation) and with it (a call prefills only what its agent's
last call did not hold). Reported: makespan, prompt tokens prefilled and taken from the cache, and how many replies
are identical between the two (greedy: all of them, or the cache changed an answer).

With ``--workers N`` (N >= 2) the same agents run through a whole kernel instead (embedded Valkey, N LLM workers of
one core, each with its own conversation cache, the agents calling through the SDK), once with
``AIOS_LLM_AFFINITY=false`` (an agent's turn runs on whichever worker takes it) and once with it on (it goes to
the worker holding its context, :mod:`aios.worker.affinity`). Reported besides: the affinity hit rate (turns run
on the worker holding the agent's context, of those whose context some worker held) and hand-overs.
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rich.table import Table

from aios.services.llm.service import LlamaCppBackend
from aios.settings import Settings
from aios.wire.errors import ConfigError
from aios.wire.syscalls import ChatMessage, LLMSyscall
from aios_bench.common import consoles, machine, print_targets, progress_bars, save, target

SYSTEM = ("You are a helpful research assistant working in a team of agents. Think step by step, answer in a few "
          "plain sentences, and say when you are unsure.")
TOPICS = ("the sea", "volcanoes", "bees", "the moon", "trains", "glaciers", "owls", "deserts", "coral", "comets",
          "forests", "rivers", "tides", "bridges", "clocks", "maps")
QUESTIONS = ("Tell me one fact about {t}.", "Why does that matter?", "Give an example.", "What is a common myth "
             "about it?", "How would you explain it to a child?", "Sum up in one sentence.")
BOUNDS = {"speedup": "min", "prefill_saved": "min", "identical_replies": "min", "affinity_hit_rate": "min"}
COUNTERS = ("prefill_tokens", "prefill_tokens_saved", "cache_hits", "cache_misses", "affinity_hit", "affinity_miss",
            "affinity_new", "handovers")
"""The LLM workers' counters a kernel contender reports (``aios status``'s, fleet-wide)."""


def question(i: int, s: int) -> ChatMessage:
    return ChatMessage(role="user", content=QUESTIONS[s % len(QUESTIONS)].format(t=TOPICS[i % 16]))


def run_agents(backend: LlamaCppBackend, agents: int, steps: int, tokens: int, progress: Any,
               label: str) -> dict[str, Any]:
    engine = backend.engine
    task = progress.add_task(label, total=agents * steps)
    replies: list[list[str]] = [[] for _ in range(agents)]

    def agent(i: int) -> None:
        conv = [ChatMessage(role="system", content=SYSTEM)]
        for s in range(steps):
            conv.append(question(i, s))
            out = backend.chat(LLMSyscall(agent_id=f"agent-{i}", messages=tuple(conv), max_tokens=tokens))
            text = out["content"] or ""
            replies[i].append(text)
            conv.append(ChatMessage(role="assistant", content=text))
            progress.advance(task)

    prefilled, reused, hits = engine.prefilled, engine.prefix_tokens_reused, engine.prefix_hits
    t0 = time.perf_counter()
    with ThreadPoolExecutor(agents) as pool:
        list(pool.map(agent, range(agents)))
    makespan = time.perf_counter() - t0
    return {"makespan_s": makespan, "prefilled_tokens": engine.prefilled - prefilled,
            "cached_tokens": engine.prefix_tokens_reused - reused, "cache_hits": engine.prefix_hits - hits,
            "replies": replies}


def run_kernel_agents(workers: int, affinity: bool, agents: int, steps: int, tokens: int, threads: int, batch: int,
                      requantize: str, progress: Any, label: str, log: Any) -> dict[str, Any]:
    """The agents through a kernel of ``workers`` LLM workers, with or without affinity: makespan, replies and
    the LLM workers' counters over the run."""
    from aios.ops.embedded import LocalKernel
    from aios.ops.status import llm_workers
    from aios.policy.identity import Credentials
    from aios.sdk import Kernel

    task = progress.add_task(label, total=agents * steps)
    replies: list[list[str]] = [[] for _ in range(agents)]
    with tempfile.TemporaryDirectory(prefix="aios-bench-conv-") as tmp:
        values: dict[str, Any] = {"data_dir": Path(tmp), "llm_n_ctx": 2048, "llm_n_threads": threads,
                                  "llm_batch_size": batch, "llm_requantize": requantize, "llm_affinity": affinity,
                                  "approvals": "off", "quotas": {}, "default_timeout_s": 600.0}
        settings = Settings(**values)
        with LocalKernel(settings, resources=["llm"], progress=log) as lk:
            if workers > 1:
                lk.add_workers("llm", workers - 1)
            creds = Credentials(lk.settings)
            kernels = [Kernel(f"agent-{i}", settings=lk.settings,
                              credential=creds.create(f"agent-{i}", write_file=False).secret) for i in range(agents)]

            def agent(i: int) -> None:
                k = kernels[i]
                conv = [ChatMessage(role="system", content=SYSTEM)]
                for s in range(steps):
                    conv.append(question(i, s))
                    text = k.call(k.llm_syscall(conv, max_tokens=tokens))["content"] or ""
                    replies[i].append(text)
                    conv.append(ChatMessage(role="assistant", content=text))
                    progress.advance(task)

            def counters() -> dict[str, int]:
                time.sleep(2.5)  # every worker's heartbeat flushed its counters (one a second)
                c = llm_workers(lk.settings)["llm_counters"]
                return {name: int(c.get(name, 0)) for name in COUNTERS}

            try:
                before = counters()
                t0 = time.perf_counter()
                with ThreadPoolExecutor(agents) as pool:
                    list(pool.map(agent, range(agents)))
                makespan = time.perf_counter() - t0
                after = counters()
            finally:
                for k in kernels:
                    k.close()
    c = {name: after[name] - before[name] for name in COUNTERS}
    held = c["affinity_hit"] + c["affinity_miss"]
    return {"makespan_s": makespan, "prefilled_tokens": c["prefill_tokens"], "cached_tokens": c["prefill_tokens_saved"],
            "cache_hits": c["cache_hits"], "cache_misses": c["cache_misses"], "affinity_hits": c["affinity_hit"],
            "affinity_misses": c["affinity_miss"], "new_agents": c["affinity_new"], "handovers": c["handovers"],
            "affinity_hit_rate": c["affinity_hit"] / held if held else 0.0, "replies": replies}


def run_conversations_bench(*, agents: int = 16, steps: int = 6, tokens: int = 32, threads: int = 2,
                            batch: int = 16, requantize: str = "auto", data_dir: Path | None = None,
                            workers: int = 1, json_path: Path | None = None) -> dict[str, Any]:
    if min(agents, steps, tokens, batch) < 1 or batch > 64:
        raise ConfigError("need --agents, --steps, --tokens >= 1 and --batch between 1 and 64")
    if not 1 <= workers <= 8:
        raise ConfigError("need --workers between 1 and 8")
    if workers > 1:
        return run_workers_bench(agents=agents, steps=steps, tokens=tokens, threads=threads, batch=batch,
                                 requantize=requantize, workers=workers, json_path=json_path)
    out, err = consoles()
    results: dict[str, Any] = {}
    with progress_bars(err, 16) as progress:
        for name, cache in (("no cache", False), ("conversation cache", True)):
            values: dict[str, Any] = {"llm_backend": "llamacpp", "llm_n_ctx": 2048, "llm_n_threads": threads,
                                      "llm_batch_size": batch, "llm_prefix_cache": cache,
                                      "llm_requantize": requantize}
            if data_dir is not None:
                values["data_dir"] = data_dir
            backend = LlamaCppBackend(Settings(**values))
            try:
                backend.chat(LLMSyscall(agent_id="warm-up", messages=(ChatMessage(role="user", content="Hi"),),
                                        max_tokens=2))
                backend.engine.cache.clear()
                results[name] = run_agents(backend, agents, steps, tokens, progress, name)
                results[name]["model"] = backend.model_name
            finally:
                backend.engine.close()
    off, on = results["no cache"], results["conversation cache"]
    identical, saved, speedup = compare(off, on)
    total = agents * steps
    targets = {"speedup": target(speedup, 1.5, "min"), "prefill_saved": target(saved, 0.5, "min"),
               "identical_replies": target(identical / total, 1.0, "min")}
    table = Table(title=f"aios bench conversations: {agents} agents x {steps} steps, whole conversation per call, "
                        f"{tokens} tokens, batch {batch}, {on['model']}")
    for col in ("contender", "makespan s", "prompt tokens prefilled", "from the cache", "cache hits"):
        table.add_column(col, justify="left" if col == "contender" else "right")
    for name, r in results.items():
        table.add_row(name, f"{r['makespan_s']:.1f}", str(r["prefilled_tokens"]), str(r["cached_tokens"]),
                      str(r["cache_hits"]))
    out.print(table)
    out.print(f"speedup {speedup:.2f}x, prefill saved {saved:.0%}, identical replies {identical}/{total}")
    print_targets(out, targets, BOUNDS)
    result = {"benchmark": "conversations", "machine": machine(),
              "params": {"agents": agents, "steps": steps, "tokens": tokens, "threads": threads, "batch": batch,
                         "model": on["model"]},
              "results": {n: {k: v for k, v in r.items() if k != "replies"} for n, r in results.items()},
              "identical_replies": identical, "calls": total, "targets": targets}
    save(json_path, result, lambda png: plot(png, result), err.log)
    return result


def compare(off: dict[str, Any], on: dict[str, Any]) -> tuple[int, float, float]:
    """Two contenders' runs of the same agents, without and with the mechanism: replies identical call for call,
    the share of prompt tokens no longer prefilled, and the makespan speedup."""
    identical = sum(a == b for ra, rb in zip(off["replies"], on["replies"], strict=True)
                    for a, b in zip(ra, rb, strict=True))
    saved = 1 - on["prefilled_tokens"] / off["prefilled_tokens"] if off["prefilled_tokens"] else 0.0
    return identical, saved, off["makespan_s"] / on["makespan_s"]


def run_workers_bench(*, agents: int, steps: int, tokens: int, threads: int, batch: int, requantize: str,
                      workers: int, json_path: Path | None) -> dict[str, Any]:
    out, err = consoles()
    results: dict[str, Any] = {}
    with progress_bars(err, 24) as progress:
        for name, affinity in (("no affinity", False), ("affinity", True)):
            results[name] = run_kernel_agents(workers, affinity, agents, steps, tokens, threads, batch, requantize,
                                              progress, f"{workers} workers, {name}", err.log)
    off, on = results["no affinity"], results["affinity"]
    identical, saved, speedup = compare(off, on)
    total = agents * steps
    targets = {"affinity_hit_rate": target(on["affinity_hit_rate"], 0.9, "min"),
               "prefill_saved": target(saved, 0.3, "min"), "speedup": target(speedup, 1.0, "min"),
               "identical_replies": target(identical / total, 1.0, "min")}
    table = Table(title=f"aios bench conversations --workers {workers}: {agents} agents x {steps} steps, whole "
                        f"conversation per call, {tokens} tokens, batch {batch} per worker, {threads} threads each")
    for col in ("contender", "makespan s", "prompt tokens prefilled", "from the cache", "cache hits",
                "affinity hit rate", "hand-overs"):
        table.add_column(col, justify="left" if col == "contender" else "right")
    for name, r in results.items():
        table.add_row(name, f"{r['makespan_s']:.1f}", str(r["prefilled_tokens"]), str(r["cached_tokens"]),
                      f"{r['cache_hits']}/{r['cache_hits'] + r['cache_misses']}",
                      f"{r['affinity_hit_rate']:.0%} ({r['affinity_hits']}/{r['affinity_hits'] + r['affinity_misses']})",
                      str(r["handovers"]))
    out.print(table)
    out.print(f"affinity: prefill {saved:.0%} less than without, speedup {speedup:.2f}x, identical replies "
              f"{identical}/{total}")
    print_targets(out, targets, BOUNDS)
    result = {"benchmark": "conversations", "machine": machine(),
              "params": {"agents": agents, "steps": steps, "tokens": tokens, "threads": threads, "batch": batch,
                         "workers": workers},
              "results": {n: {k: v for k, v in r.items() if k != "replies"} for n, r in results.items()},
              "identical_replies": identical, "calls": total, "targets": targets}
    save(json_path, result, lambda png: plot(png, result), err.log)
    return result


def plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["results"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.5))
    left.bar(names, [result["results"][n]["makespan_s"] for n in names], color=["C0", "C1"])
    left.set_ylabel("makespan (s)")
    right.bar(names, [result["results"][n]["prefilled_tokens"] for n in names], color=["C0", "C1"])
    right.set_ylabel("prompt tokens prefilled")
    p = result["params"]
    what = f"{p['workers']} LLM workers" if p.get("workers", 1) > 1 else p["model"]
    fig.suptitle(f"aios bench conversations: {p['agents']} agents x {p['steps']} steps, {what}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
