"""`aios bench agents`: the scripts every contender runs, and how its targets are computed (unit; the benchmark
itself is run by hand, see docs/benchmarks.md); `aios bench engine` run small on the real model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aios.wire.errors import ConfigError
from aios_bench.agents import ratios, script, targets
from aios_bench.engine import run_engine_bench


def test_scripts_are_fixed_and_mix_short_and_long_llm_steps() -> None:
    first = [script(i, 2, 24, 160) for i in range(16)]
    assert first == [script(i, 2, 24, 160) for i in range(16)]
    steps = [s for agent in first for s in agent]
    assert [s.kind for s in first[0]] == ["llm", "tool", "llm", "tool"]
    lengths = [s.max_tokens for s in steps if s.kind == "llm"]
    assert lengths.count(160) == len(lengths) // 8 and set(lengths) == {24, 160}


def test_targets_read_n32_and_say_whether_met() -> None:
    def r(total: float, p90: float) -> dict[str, float]:
        return {"total_time_s": total, "p90_wait_s": p90}

    results = {"baseline": {32: r(100, 30)}, "batching": {32: r(40, 20)}, "fifo": {32: r(90, 30)},
               "rr": {32: r(95, 33)}}
    t = targets(results, [8, 32])
    assert t["speedup_total_time_n32"] == {"value": 2.5, "goal": 2.1, "met": True}
    assert t["rr_p90_wait_vs_fifo"]["value"] == 1.1 and not t["rr_p90_wait_vs_fifo"]["met"]
    assert ratios(results, [32]) == {"fifo_vs_baseline": {"32": 100 / 90}, "rr_vs_baseline": {"32": 100 / 95},
                                     "batching_vs_baseline": {"32": 2.5}, "batching_vs_fifo": {"32": 90 / 40}}
    missing = targets({"fifo": {8: r(1, 2)}, "rr": {8: r(1, 1)}}, [8])
    assert missing["speedup_total_time_n32"]["value"] is None and not missing["speedup_total_time_n32"]["met"]
    assert missing["rr_p90_wait_vs_fifo"]["value"] == 0.5 and missing["rr_p90_wait_vs_fifo"]["n_agents"] == 8


@pytest.mark.integration
def test_engine_bench_runs_small_and_finds_batched_output_identical(tmp_path: Path) -> None:
    """`aios bench engine` on the real model, tiny: batched output equals one-at-a-time output, JSON and plot."""
    out = tmp_path / "engine.json"
    result = run_engine_bench(tmp_path, sizes=[1, 3], tokens=8, threads=1, json_path=out)
    by_b = result["results"]["bundled"]
    assert by_b["3"]["identical"] == 3 and by_b["3"]["tokens"] > 0 and by_b["3"]["speedup"] > 0
    assert json.loads(out.read_text())["params"]["sizes"] == [1, 3] and out.with_suffix(".png").stat().st_size
    with pytest.raises(ConfigError, match="--quantize"):
        run_engine_bench(tmp_path, sizes=[1], tokens=4, quantize=["q3_z"])
