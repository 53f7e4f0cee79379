"""``aios bench engine``: what continuous batching buys on this machine, engine alone (no broker, no kernel).

For each GGUF file and each batch size B, the same B prompts (greedy, ``--tokens`` each) are generated twice on
one :class:`~aios.engine.BatchEngine` of B slots: one after the other (each alone in the engine), then all at
once. Reported: aggregate generated tokens/s both ways, their ratio (the batching speedup), and how many of the B
outputs are identical token for token (batch invariance: all of them). The prefix cache is off, so that the
ratio is batching's alone.

Which weight types batch well on a CPU depends on llama.cpp's matrix kernels for that type: ``--quantize`` adds
copies of the model converted with ``llama_model_quantize`` (e.g. ``q8_0,q4_0``) to compare.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.progress import Progress
from rich.table import Table

from aios.services.llm.engine import BatchEngine, Request
from aios.services.llm.service import default_model_path
from aios.services.llm.weights import FTYPES, load_llama, quantized
from aios.wire.errors import ConfigError
from aios_bench.common import consoles, machine, progress_bars, save

TOPICS = ("a cat", "the sea", "a robot", "Paris", "a dragon", "the moon", "a train", "a lost map")


def measure(label: str, path: Path, sizes: list[int], tokens: int, threads: int, gpu_layers: int,
            progress: Progress) -> dict[str, Any]:
    llama = load_llama(path, n_ctx=256, n_batch=256, n_threads=threads, n_gpu_layers=gpu_layers, verbose=False)
    out: dict[str, Any] = {}
    for b in sizes:
        task = progress.add_task(f"{label} B={b}", total=2 * b)
        prompts = [llama.tokenize(f"<|im_start|>user\nAgent {i}: write a detailed story about {TOPICS[i % 8]}."
                                  "<|im_end|>\n<|im_start|>assistant\n".encode(), special=True) for i in range(b)]
        engine = BatchEngine(llama, n_ctx=tokens + 64, n_seq=b, n_threads=threads)
        try:
            engine.submit(Request(prompt=prompts[0], max_tokens=4)).result()  # warm-up
            t0 = time.perf_counter()
            alone = []
            for p in prompts:
                alone.append(engine.submit(Request(prompt=p, max_tokens=tokens)).result().tokens)
                progress.advance(task)
            t_alone = time.perf_counter() - t0
            t0 = time.perf_counter()
            futures = [engine.submit(Request(prompt=p, max_tokens=tokens)) for p in prompts]
            together = []
            for f in futures:
                together.append(f.result().tokens)
                progress.advance(task)
            t_together = time.perf_counter() - t0
        finally:
            engine.close()
        n_alone, n_together = sum(map(len, alone)), sum(map(len, together))
        out[str(b)] = {"alone_s": t_alone, "together_s": t_together, "alone_tokens_per_s": n_alone / t_alone,
                       "together_tokens_per_s": n_together / t_together,
                       "speedup": (n_together / t_together) / (n_alone / t_alone),
                       "identical": sum(a == t for a, t in zip(alone, together, strict=True)), "sequences": b,
                       "tokens": n_together}
    return out


def plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, by_b) in enumerate(result["results"].items()):
        sizes = [int(b) for b in by_b]
        ax.plot(sizes, [by_b[str(b)]["together_tokens_per_s"] for b in sizes], marker="o", color=f"C{i}",
                label=f"{name} batched")
        ax.plot(sizes, [by_b[str(b)]["alone_tokens_per_s"] for b in sizes], ls="--", marker=".", color=f"C{i}",
                label=f"{name} one at a time")
    ax.set_xlabel("sequences (batch size)")
    ax.set_ylabel("generated tokens/s")
    ax.set_xscale("log", base=2)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"aios bench engine: {result['params']['threads']} thread(s), {result['machine']['cpus']} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_engine_bench(data_dir: Path, *, sizes: list[int], tokens: int = 64, threads: int = 2, gpu_layers: int = 0,
                     quantize: list[str] | None = None, json_path: Path | None = None) -> dict[str, Any]:
    if not sizes or min(sizes) < 1 or max(sizes) > 64 or tokens < 1:
        raise ConfigError("need --sizes between 1 and 64 and --tokens >= 1")
    out, err = consoles()
    src = default_model_path()
    models = {"bundled": src}
    for kind in quantize or []:
        if kind not in FTYPES:
            raise ConfigError(f"--quantize: unknown type {kind!r}; known: {', '.join(FTYPES)}")
        err.log(f"converting {src.name} to {kind} (cached in {data_dir / 'models'})")
        models[kind] = quantized(src, kind, data_dir / "models")
    results: dict[str, Any] = {}
    with progress_bars(err, 12) as progress:
        for name, path in models.items():
            results[name] = measure(name, path, sizes, tokens, threads, gpu_layers, progress)
    result = {"benchmark": "engine", "machine": machine(),
              "params": {"sizes": sizes, "tokens": tokens, "threads": threads, "gpu_layers": gpu_layers,
                         "models": {name: path.name for name, path in models.items()}},
              "results": results}
    table = Table(title=f"aios bench engine: the same prompts one at a time vs batched (greedy); bundled = {src.name}")
    for col in ("weights", "B", "one at a time tok/s", "batched tok/s", "speedup", "identical"):
        table.add_column(col, justify="left" if col == "weights" else "right")
    for name, by_b in results.items():
        for b, r in by_b.items():
            table.add_row(name, b, f"{r['alone_tokens_per_s']:.0f}", f"{r['together_tokens_per_s']:.0f}",
                          f"{r['speedup']:.2f}x", f"{r['identical']}/{r['sequences']}")
    out.print(table)
    save(json_path, result, lambda png: plot(png, result), err.log)
    return result
