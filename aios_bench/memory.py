"""``aios bench memory``: the memory manager's eviction policy and its search latency.

**Eviction.** Two memory managers side by side, alike but for the policy: LRU-K (``K=2``, the default) and plain
LRU (``K=1``), each with its own durable tier (SQLite + Milvus Lite) and its fast tier in one private embedded
Redis, the same per-agent budget. Both get the same items and then the same skewed access trace, access by
access, alternating which goes first: Zipf-distributed reads of a hot set, interrupted by sequential scans
of cold items (the pattern LRU-K was designed for: one scan flushes an LRU cache). Hits and misses are the
managers' own counts; the fast tier's bytes are read back from Redis every ``check_every`` accesses and must
never exceed the budget. Embeddings do not matter here, so this part uses the FAKE hashing embedder.

**Search latency.** For each size, a memory of that many items with real all-MiniLM-L6-v2 vectors in Milvus
Lite (the distinct texts are embedded by the model; past ``--embed-limit`` items, further items reuse those
vectors with a little noise, so that building 100,000 items does not take an hour on 2 cores), bulk-loaded.
Then ``--queries`` searches: end to end (embed the query with the model, Milvus top-5, read the values from
SQLite) and the Milvus search alone.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from aios.ops.embedded import LocalKernel
from aios.services.storage.embeddings import HashEmbedderFake
from aios.services.storage.service import StorageService
from aios.settings import Settings
from aios.wire.errors import ConfigError
from aios.wire.syscalls import MemorySyscall
from aios_bench.common import consoles, machine, progress_bars, save

AGENT = "bench"
SUBJECTS = ["the cat", "our team", "the server", "my sister", "the robot", "a farmer", "the museum", "the train",
            "an old friend", "the committee", "the chef", "a student", "the river", "the printer", "the market"]
VERBS = ["visited", "repaired", "painted", "ignored", "bought", "described", "photographed", "cleaned",
         "delayed", "celebrated", "measured", "planted", "cancelled", "translated", "watched"]
OBJECTS = ["the garden", "a blue bicycle", "the annual report", "three red apples", "the broken window",
           "a jazz concert", "the mountain trail", "an ancient map", "the quarterly budget", "a wooden boat",
           "the birthday cake", "a chemistry exam", "the parking lot", "a winter coat", "the solar panels"]
PLACES = ["in Paris", "on Monday", "after lunch", "near the lake", "during the storm", "at midnight",
          "in the library", "before the meeting", "on the farm", "downtown", "in spring", "at the airport"]


def sentence(i: int) -> str:
    """A distinct, meaningful sentence per ``i`` (15*15*15*12 = 40,500 before a suffix repeats them)."""
    a, b, c, d = i % 15, (i // 15) % 15, (i // 225) % 15, (i // 3375) % 12
    extra = f" (note {i // 40500})" if i >= 40500 else ""
    return f"{SUBJECTS[a]} {VERBS[b]} {OBJECTS[c]} {PLACES[d]}{extra}"


def skewed_trace(n_items: int, n_accesses: int, seed: int, hot_fraction: float = 0.2, scan_every: int = 1000,
                 scan_length: int | None = None, zipf_s: float = 1.0) -> list[int]:
    """Zipf reads over a hot set, with a sequential scan over cold items every ``scan_every`` reads."""
    rng = random.Random(seed)
    hot = max(1, int(n_items * hot_fraction))
    weights = np.array([1.0 / (r + 1) ** zipf_s for r in range(hot)])
    cdf = np.cumsum(weights / weights.sum())
    perm = list(range(n_items))
    rng.shuffle(perm)
    hot_ids, cold_ids = perm[:hot], perm[hot:] or perm
    scan_length = scan_length or max(1, n_items // 4)
    trace: list[int] = []
    cursor = 0
    while len(trace) < n_accesses:
        for _ in range(scan_every):
            trace.append(hot_ids[int(np.searchsorted(cdf, rng.random()))])
        for _ in range(scan_length):
            trace.append(cold_ids[cursor % len(cold_ids)])
            cursor += 1
    return trace[:n_accesses]


def _percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1000.0
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "samples": int(ms.size)}


def run_eviction(base: Settings, redis_url: str, workdir: Path, *, n_items: int, n_accesses: int, budget: int,
                 seed: int, check_every: int, progress: Progress) -> dict[str, Any]:
    rng = random.Random(seed)
    values = [sentence(i) + " " + "x" * rng.randint(20, 220) for i in range(n_items)]
    total_bytes = sum(len(json.dumps(v, separators=(",", ":")).encode()) for v in values)
    budget = budget or total_bytes // 10
    contenders = {}
    for name, k in (("lru_k", 2), ("lru", 1)):
        settings = base.updated(**{"data_dir": workdir / name, "memory_budget_bytes": budget,
                                           "memory_lru_k": k, "redis_url": redis_url, "milvus_uri": None})
        contenders[name] = StorageService(settings, embedder=HashEmbedderFake())
    # Both fast tiers live in one Redis: each contender's agent gets its own hash.
    agents = {"lru_k": f"{AGENT}-lruk", "lru": f"{AGENT}-lru"}
    trace = skewed_trace(n_items, n_accesses, seed)
    load = progress.add_task("eviction: load items", total=n_items * 2)
    run = progress.add_task("eviction: access trace", total=n_accesses * 2)
    max_bytes = {name: 0 for name in contenders}
    timeline: dict[str, list[tuple[int, int]]] = {name: [] for name in contenders}
    latencies: dict[str, list[float]] = {name: [] for name in contenders}

    def fast_bytes(name: str) -> int:
        return contenders[name].memory.fast.size(agents[name])[1]

    for i, value in enumerate(values):
        for name, svc in contenders.items():
            svc.handle(MemorySyscall(agent_id=agents[name], op="put", key=f"item-{i}", value=value))
            progress.advance(load)
    before = {name: svc.memory.stats(agents[name]) for name, svc in contenders.items()}
    clock = time.perf_counter
    for step, item in enumerate(trace):
        order = list(contenders.items()) if step % 2 == 0 else list(contenders.items())[::-1]
        for name, svc in order:
            t0 = clock()
            svc.handle(MemorySyscall(agent_id=agents[name], op="get", key=f"item-{item}"))
            latencies[name].append(clock() - t0)
            progress.advance(run)
        if step % check_every == 0 or step == len(trace) - 1:
            for name in contenders:
                b = fast_bytes(name)
                max_bytes[name] = max(max_bytes[name], b)
                timeline[name].append((step, b))
    result: dict[str, Any] = {"items": n_items, "accesses": n_accesses, "budget_bytes": budget,
                              "total_bytes": total_bytes, "trace": "zipf(s=1.0) over 20% hot items, a sequential "
                              "scan of 25% of the items (cold) after every 1000 hot reads", "seed": seed}
    for name, svc in contenders.items():
        after = svc.memory.stats(agents[name])
        hits, misses = after["hits"] - before[name]["hits"], after["misses"] - before[name]["misses"]
        result[name] = {"k": svc.settings.storage.memory_lru_k, "hits": hits, "misses": misses,
                        "hit_rate": hits / max(1, hits + misses), "max_fast_bytes": max_bytes[name],
                        "get_latency": _percentiles(latencies[name]), "fast_bytes_timeline": timeline[name]}
        svc.vectors().close()
    return result


def run_search(base: Settings, workdir: Path, *, size: int, n_queries: int, embed_limit: int, seed: int,
               progress: Progress) -> dict[str, Any]:
    settings = base.updated(**{"data_dir": workdir / f"search-{size}", "milvus_uri": None,
                                       "broker_url": None, "redis_url": None})
    svc = StorageService(settings)
    embedder, vectors = svc.embedder(), svc.vectors()
    rng = np.random.default_rng(seed)
    t_build = time.perf_counter()
    n_real = min(size, embed_limit)
    task = progress.add_task(f"search {size:,}: embed {n_real:,}", total=n_real)
    real = np.zeros((n_real, embedder.dim), np.float32)
    for i in range(0, n_real, 256):
        real[i:i + 256] = embedder.embed([sentence(j) for j in range(i, min(n_real, i + 256))])
        progress.advance(task, min(256, n_real - i))
    db = svc._db(AGENT, True)
    load = progress.add_task(f"search {size:,}: load", total=size)
    now = time.time()
    for start in range(0, size, 2000):
        ids = range(start, min(size, start + 2000))
        rows, vecs = [], []
        for i in ids:
            v = real[i % n_real]
            if i >= n_real:  # a neighbour of a real sentence's vector
                v = v + rng.normal(0, 0.02, v.shape).astype(np.float32)
                v /= np.linalg.norm(v)
            text = sentence(i)
            rows.append((f"m{i}", json.dumps(text), now, now))
            vecs.append((f"m{i}", v))
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT OR REPLACE INTO memory VALUES (?, ?, ?, ?)", rows)
        vectors.put_memory(AGENT, vecs)
        progress.advance(load, len(rows))
    vectors.flush()
    build_s = time.perf_counter() - t_build
    queries = [f"{SUBJECTS[q % 15]} {VERBS[(q * 7) % 15]} something {PLACES[(q * 5) % 12]}" for q in range(n_queries)]
    qvecs = embedder.embed(queries)
    end_to_end, vector_only = [], []
    for q, v in zip(queries[:5], qvecs[:5], strict=True):  # warm-up
        svc.memory.search(AGENT, q, 5)
        vectors.search_memory(AGENT, v, 5)
    task = progress.add_task(f"search {size:,}: queries", total=n_queries)
    clock = time.perf_counter
    for q, v in zip(queries, qvecs, strict=True):
        t0 = clock()
        hits = svc.memory.search(AGENT, q, 5)["results"]
        end_to_end.append(clock() - t0)
        t0 = clock()
        vectors.search_memory(AGENT, v, 5)
        vector_only.append(clock() - t0)
        assert len(hits) == 5
        progress.advance(task)
    vectors.close()
    return {"items": size, "embedded_by_model": n_real, "build_s": build_s, "queries": n_queries,
            "end_to_end": _percentiles(end_to_end), "vector_only": _percentiles(vector_only),
            "example": {"query": queries[-1], "top": [h["value"] for h in hits[:3]]}}


def print_tables(console: Console, result: dict[str, Any]) -> None:
    ev = result["eviction"]
    t = Table(title=f"aios bench memory: eviction, {ev['items']:,} items, {ev['accesses']:,} reads, "
                    f"budget {ev['budget_bytes']:,} B ({ev['budget_bytes'] / ev['total_bytes']:.0%} of the data)")
    for col in ("", "LRU-K (K=2)", "LRU", "LRU-K / LRU"):
        t.add_column(col, justify="right" if col else "left")
    lk, lru = ev["lru_k"], ev["lru"]
    t.add_row("fast-tier hit rate", f"{lk['hit_rate']:.3f}", f"{lru['hit_rate']:.3f}",
              f"{result['ratios']['lruk_hit_rate_vs_lru']:.2f}x")
    t.add_row("max fast-tier bytes", f"{lk['max_fast_bytes']:,}", f"{lru['max_fast_bytes']:,}", "")
    t.add_row("get p50 (ms)", f"{lk['get_latency']['p50_ms']:.2f}", f"{lru['get_latency']['p50_ms']:.2f}", "")
    t.add_row("get p99 (ms)", f"{lk['get_latency']['p99_ms']:.2f}", f"{lru['get_latency']['p99_ms']:.2f}", "")
    console.print(t)
    s = Table(title="memory search latency (top-5, all-MiniLM-L6-v2 + Milvus Lite FLAT)")
    for col in ("items", "end to end p50 (ms)", "p99 (ms)", "Milvus only p50 (ms)", "p99 (ms)", "build (s)"):
        s.add_column(col, justify="right")
    for r in result["search"]:
        s.add_row(f"{r['items']:,}", f"{r['end_to_end']['p50_ms']:.1f}", f"{r['end_to_end']['p99_ms']:.1f}",
                  f"{r['vector_only']['p50_ms']:.1f}", f"{r['vector_only']['p99_ms']:.1f}", f"{r['build_s']:.0f}")
    console.print(s)
    console.print(f"  {result['machine']['cpus']} CPUs, {result['machine']['platform']}", highlight=False)
    for name, tg in result["targets"].items():
        mark = "[green]met[/]" if tg["met"] else "[red]missed[/]"
        console.print(f"  {name}: {tg['value']:.3f} (goal {tg['bound']} {tg['goal']}) {mark}")


def plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev = result["eviction"]
    fig, (ax_hit, ax_bytes, ax_search) = plt.subplots(1, 3, figsize=(15, 4.2))
    names, labels = ["lru_k", "lru"], ["LRU-K (K=2)", "LRU"]
    bars = ax_hit.bar(labels, [ev[n]["hit_rate"] for n in names], color=["tab:orange", "tab:blue"])
    ax_hit.bar_label(bars, fmt="%.3f")
    ax_hit.set_ylim(0, 1)
    ax_hit.set_ylabel("fast-tier hit rate")
    ax_hit.set_title(f"hit rate, same budget (LRU-K/LRU {result['ratios']['lruk_hit_rate_vs_lru']:.2f}x)")
    for n, label, color in zip(names, labels, ["tab:orange", "tab:blue"], strict=True):
        steps, held = zip(*ev[n]["fast_bytes_timeline"], strict=True)
        ax_bytes.plot(steps, held, label=label, color=color)
    ax_bytes.axhline(ev["budget_bytes"], color="red", linestyle="--", label="budget")
    ax_bytes.set_xlabel("access")
    ax_bytes.set_ylabel("bytes in the fast tier (Redis)")
    ax_bytes.set_ylim(0, ev["budget_bytes"] * 1.2)
    ax_bytes.set_title("fast tier stays within its budget")
    ax_bytes.legend(loc="lower right")
    sizes = [f"{r['items']:,}" for r in result["search"]]
    x = np.arange(len(sizes))
    for off, key, label in ((-0.3, ("end_to_end", "p50_ms"), "end to end p50"), (-0.1, ("end_to_end", "p99_ms"), "end to end p99"),
                            (0.1, ("vector_only", "p50_ms"), "Milvus only p50"), (0.3, ("vector_only", "p99_ms"), "Milvus only p99")):
        vals = [r[key[0]][key[1]] for r in result["search"]]
        b = ax_search.bar(x + off, vals, width=0.2, label=label)
        ax_search.bar_label(b, fmt="%.1f", fontsize=7)
    ax_search.set_xticks(x, sizes)
    ax_search.set_xlabel("items in the agent's memory")
    ax_search.set_ylabel("ms")
    ax_search.set_title("memory search latency (top-5)")
    ax_search.legend(fontsize=8)
    fig.suptitle(f"aios bench memory, {result['machine']['cpus']} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_memory_bench(settings: Settings, *, items: int = 2000, accesses: int = 20_000, budget: int = 0,
                     sizes: tuple[int, ...] = (10_000,), queries: int = 200, embed_limit: int = 10_000,
                     seed: int = 1, check_every: int = 50, json_path: Path | None = None) -> dict[str, Any]:
    """Run both parts, print the tables, write JSON (and a PNG beside it) when asked; return the figures."""
    if items < 10 or accesses < 10 or queries < 5 or any(s < 5 for s in sizes):
        raise ConfigError("need --items >= 10, --accesses >= 10, --queries >= 5 and every size >= 5")
    out, err = consoles()
    log = err.log
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aios-bench-memory-")))
        private = settings.updated(**{"broker_url": None, "redis_url": None, "data_dir": workdir / "kernel"})
        lk = stack.enter_context(LocalKernel(private, resources=(), progress=log))  # its Redis: the fast tiers
        with progress_bars(err, 32) as progress:
            eviction = run_eviction(settings, lk.settings.state_redis_url(), workdir, n_items=items,
                                    n_accesses=accesses, budget=budget, seed=seed, check_every=check_every,
                                    progress=progress)
            search = [run_search(settings, workdir, size=s, n_queries=queries, embed_limit=embed_limit, seed=seed,
                                 progress=progress) for s in sizes]
    ratio = eviction["lru_k"]["hit_rate"] / max(1e-9, eviction["lru"]["hit_rate"])
    worst = max(eviction["lru_k"]["max_fast_bytes"], eviction["lru"]["max_fast_bytes"]) / eviction["budget_bytes"]
    result: dict[str, Any] = {
        "benchmark": "memory", "machine": machine(),
        "params": {"items": items, "accesses": accesses, "budget": eviction["budget_bytes"], "sizes": list(sizes),
                   "queries": queries, "embed_limit": embed_limit, "seed": seed, "check_every": check_every},
        "eviction": eviction, "search": search, "ratios": {"lruk_hit_rate_vs_lru": ratio},
        "targets": {
            "lruk_hit_rate_vs_lru": {"value": ratio, "goal": 1.0, "bound": ">=", "met": ratio >= 1.0},
            # The largest fraction of its budget either fast tier ever held, read back from Redis.
            "fast_tier_within_budget": {"value": worst, "goal": 1.0, "bound": "<=", "met": worst <= 1.0},
        },
    }
    print_tables(out, result)
    save(json_path, result, lambda png: plot(png, result), err.log)
    return result
