"""``aios bench chaos`` and ``aios bench soak``: their pure parts (the fault plan, the counting, growth), and a small
run of each that writes its JSON and plot."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from aios.settings import Settings
from aios_bench.chaos import Fault, Record, Run, fault_plan, run_chaos, summarize
from aios_bench.soak import growth, run_soak


def test_the_fault_plan_kills_each_worker_type_and_restarts_the_broker_once_within_the_phase() -> None:
    plan = fault_plan(random.Random(1), 30.0, 3)
    kinds = Counter(what for _, what in plan)
    assert kinds == {"kill:llm": 3, "kill:tool": 3, "kill:storage": 3, "restart:broker": 1}
    times = [t for t, _ in plan]
    assert times == sorted(times) and 0 <= times[0] and times[-1] < 30.0


def test_summarize_counts_lost_duplicated_effects_and_recovery() -> None:
    run = Run("embedded", t0=100.0)
    run.records = [
        Record("tool", 100.0, 100.1, "ok", "a"),
        Record("tool", 101.0, 109.0, "ok", "b"),  # in flight at the kill at 102: recovered in 7 s
        Record("tool", 101.5, 130.0, "timeout", "c"),  # in flight, never answered: lost
        Record("llm", 101.0, 103.0, "ok", "d"),  # another resource: not affected by the tool kill
        Record("storage", 104.0, 104.5, "deadline_exceeded", "e"),
        Record("tool", 105.0, 105.0, "refused:kernel_unavailable"),  # never accepted
    ]
    run.faults = [Fault(102.0, "kill:tool")]
    run.ledger = Counter({"a": 1, "b": 2})
    run.leftover_replies = {"a", "c"}
    s = summarize(run)
    assert (s["submitted"], s["answered"], s["lost"], s["refused_at_submit"]) == (5, 4, 1, 1)
    assert s["failed"] == {"deadline_exceeded": 1}
    assert s["duplicated_effects"] == 1 and s["tool_executions"] == 3
    assert (s["extra_replies"], s["late_answers"]) == (1, 1)
    assert s["recovery_s"]["affected"] == 1 and s["recovery_s"]["unrecovered"] == 1
    assert s["recovery_s"]["p50"] == pytest.approx(7.0)
    assert [r["id"] for r in s["lost_syscalls"]] == ["c"]
    assert not s["targets"]["lost"]["met"] and s["targets"]["recovery_p99_s"]["value"] is None


def test_growth_compares_the_end_with_the_start_after_warm_up() -> None:
    assert growth([50.0] * 4 + [100.0] * 11 + [110.0] * 5) == pytest.approx(0.1)  # warm-up: the first fifth
    assert growth([1.0]) is None  # too few samples to compare


@pytest.mark.integration
def test_chaos_writes_json_with_every_target_and_a_plot(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    run_chaos(Settings(data_dir=tmp_path), brokers=["embedded"], agents=3, phase_s=6.0, kills=1, timeout_s=20.0,
              json_path=out)
    result = json.loads(out.read_text())
    embedded = result["brokers"]["embedded"]
    assert set(result["targets"]) == {"lost[embedded]", "duplicated_effects[embedded]", "recovery_p99_s[embedded]"}
    assert [f["what"] for f in embedded["faults"]].count("restart:broker") == 1
    assert len(embedded["faults"]) == 4
    assert embedded["submitted"] > 0 and embedded["answered"] + embedded["lost"] == embedded["submitted"]
    assert out.with_suffix(".png").stat().st_size > 0


@pytest.mark.integration
def test_soak_writes_json_with_every_target_and_a_plot(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    run_soak(Settings(data_dir=tmp_path), minutes=0.25, agents=2, sample_s=1.0, json_path=out)
    result = json.loads(out.read_text())
    assert set(result["targets"]) == {"worker_rss_growth", "redis_memory_growth", "fd_growth",
                                      "syscall_keys_without_ttl"}
    assert len(result["samples"]) >= 10 and set(result["samples"][0]["rss"]) == {"llm", "tool", "storage"}
    assert result["keys_without_ttl"]["per_syscall_count"] == 0
    assert out.with_suffix(".png").stat().st_size > 0
