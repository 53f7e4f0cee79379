"""The benchmarks run end to end at a tiny size and write what docs/benchmarks.md says they write.

Their figures are not checked here (performance is measured by the benchmarks, not by tests); their shape is.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aios.bench.overhead import run_overhead
from tests.conftest import base_settings


@pytest.mark.integration
def test_overhead_writes_json_with_every_target_and_a_plot(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    result = run_overhead(base_settings(tmp_path / "k"), n_latency=20, n_throughput=20, rounds=2, json_path=out)
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(result))
    assert set(written["targets"]) == {"kernel_p50_vs_celery", "kernel_throughput_vs_celery", "signing_overhead_p50"}
    for target in written["targets"].values():
        assert set(target) == {"value", "goal", "met"} and isinstance(target["value"], float)
    for contender in (written["raw_celery"], written["kernel"], *written["signing"].values()):
        assert contender["latency_samples"] == 20 and contender["throughput_ops"] == 20
    assert out.with_suffix(".png").stat().st_size > 10_000


@pytest.mark.integration
def test_fairness_writes_json_with_both_targets_and_a_plot(tmp_path: Path) -> None:
    from aios.bench.fairness import run_fairness

    out = tmp_path / "fairness.json"
    run_fairness(base_settings(tmp_path / "k"), seconds=1.0, demands=(1, 3), urgent=3, json_path=out)
    written = json.loads(out.read_text())
    assert set(written["targets"]) == {"jain_index", "high_priority_p99_wait"}
    assert set(written["share"]) == {"fifo", "fair"} and set(written["priority"]) == {"fifo", "priority"}
    assert all(len(run["service_s"]) == 2 for run in written["share"].values())
    assert all(len(run["waits_s"]) == 3 for run in written["priority"].values())
    assert out.with_suffix(".png").stat().st_size > 10_000
