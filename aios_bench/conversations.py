"""``aios bench conversations``: what the conversation cache buys on a multi-turn agent workload, engine alone.

N agents take S steps each, concurrently; every call carries the agent's whole conversation so far (a system
prompt, then each earlier question and reply: the shape of a chat or ReAct agent), and an agent sends its next
call once its last reply is back. Two contenders, each on a freshly loaded LLM backend (the kernel's own
:class:`~aios.services.llm.service.LlamaCppBackend`: chat template, tokenizer, batching engine): the engine
without the cache (every call prefills its whole conversation) and with it (a call prefills only what its agent's
last call did not hold). Reported: makespan, prompt tokens prefilled and taken from the cache, and how many replies
are identical between the two (greedy: all of them, or the cache changed an answer).
"""

from __future__ import annotations

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
BOUNDS = {"speedup": "min", "prefill_saved": "min", "identical_replies": "min"}


def run_agents(backend: LlamaCppBackend, agents: int, steps: int, tokens: int, progress: Any,
               label: str) -> dict[str, Any]:
    engine = backend.engine
    task = progress.add_task(label, total=agents * steps)
    replies: list[list[str]] = [[] for _ in range(agents)]

    def agent(i: int) -> None:
        conv = [ChatMessage(role="system", content=SYSTEM)]
        for s in range(steps):
            conv.append(ChatMessage(role="user", content=QUESTIONS[s % len(QUESTIONS)].format(t=TOPICS[i % 16])))
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


def run_conversations_bench(*, agents: int = 16, steps: int = 6, tokens: int = 32, threads: int = 2,
                            batch: int = 16, requantize: str = "auto", data_dir: Path | None = None,
                            json_path: Path | None = None) -> dict[str, Any]:
    if min(agents, steps, tokens, batch) < 1 or batch > 64:
        raise ConfigError("need --agents, --steps, --tokens >= 1 and --batch between 1 and 64")
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
    identical = sum(a == b for ra, rb in zip(off["replies"], on["replies"], strict=True)
                    for a, b in zip(ra, rb, strict=True))
    total = agents * steps
    saved = 1 - on["prefilled_tokens"] / off["prefilled_tokens"] if off["prefilled_tokens"] else 0.0
    speedup = off["makespan_s"] / on["makespan_s"]
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
    fig.suptitle(f"aios bench conversations: {p['agents']} agents x {p['steps']} steps, {p['model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
