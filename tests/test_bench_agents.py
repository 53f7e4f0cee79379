"""`aios bench agents`: the scripts and conversations every contender runs, how its targets are computed, the
llama-server build's arguments and cache, the emulated GPU's stepping and the overhead arithmetic (unit; the
benchmark itself is run by hand, see docs/benchmarks.md); small real runs of its workloads and of `aios bench engine`
(integration). No test builds llama-server (about 15 minutes): the one that runs it skips, saying how to build it."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from aios.settings import Settings
from aios.wire.errors import ConfigError
from aios_bench import llama_server_build as build
from aios_bench.agents import Conversation, ratios, run_agents_bench, script, targets
from aios_bench.emulated import EmulatedParams, Sample, prompt, run_emulated, summarize
from aios_bench.emulator import TAG, prompt_tokens
from aios_bench.engine import run_engine_bench
from aios_bench.gpu_model import BatchedGPU, GPUShape


def test_scripts_are_fixed_and_mix_short_and_long_llm_steps() -> None:
    first = [script(i, 2, 24, 160) for i in range(16)]
    assert first == [script(i, 2, 24, 160) for i in range(16)]
    steps = [s for agent in first for s in agent]
    assert [s.kind for s in first[0]] == ["llm", "tool", "llm", "tool"]
    lengths = [s.max_tokens for s in steps if s.kind == "llm"]
    assert lengths.count(160) == len(lengths) // 8 and set(lengths) == {24, 160}


def test_a_multi_turn_call_carries_the_whole_conversation_and_a_single_turn_call_only_its_step() -> None:
    steps = script(3, 2, 24, 160)
    talk = Conversation(multi_turn=True)
    first = talk.ask(steps[0])
    assert [m["role"] for m in first] == ["system", "user"] and first[1]["content"] == steps[0].prompt
    talk.answered(first, "Once upon a time")
    talk.observe("16")
    second = talk.ask(steps[2])
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[:2] == first and second[2]["content"] == "Once upon a time"
    assert second[3]["content"] == f"Observation: 16. {steps[2].prompt}"
    alone = Conversation(multi_turn=False)
    alone.answered(alone.ask(steps[0]), "ignored")
    alone.observe("16")
    assert alone.ask(steps[2]) == [first[0], {"role": "user", "content": steps[2].prompt}]


def r(total: float, p90: float = 1.0) -> dict[str, float]:
    return {"total_time_s": total, "p90_wait_s": p90}


def test_targets_read_n32_the_multi_turn_run_and_the_emulated_scale_and_say_whether_met() -> None:
    results = {"baseline": {32: r(100, 30)}, "llama_server": {32: r(44)}, "batching": {32: r(40, 20)},
               "fifo": {32: r(90, 30)}, "rr": {32: r(95, 33)}}
    multi = {"llama_server": r(33.0), "batching": r(30.0)}
    t = targets(results, [8, 32], multi, {"max_agents": 2000, "overhead_p99_ms_at_max": 12.5})
    assert t["speedup_total_time_n32"] == {"value": 2.5, "goal": 2.5, "met": True}
    assert t["single_turn_vs_llama_server"] == {"value": 1.1, "goal": 1.0, "met": True}
    assert t["multi_turn_vs_llama_server"] == {"value": 1.1, "goal": 1.25, "met": False}
    assert t["emulated_2000_overhead_p99_ms"] == {"value": 12.5, "goal": 10.0, "met": False}
    assert t["rr_p90_wait_vs_fifo"]["value"] == 1.1 and not t["rr_p90_wait_vs_fifo"]["met"]
    assert ratios(results, [32]) == {
        "fifo_vs_baseline": {"32": 100 / 90}, "rr_vs_baseline": {"32": 100 / 95}, "batching_vs_baseline": {"32": 2.5},
        "fifo_vs_llama_server": {"32": 44 / 90}, "rr_vs_llama_server": {"32": 44 / 95},
        "batching_vs_llama_server": {"32": 1.1}, "batching_vs_fifo": {"32": 90 / 40}}
    missing = targets({"fifo": {8: r(1, 2)}, "rr": {8: r(1, 1)}}, [8], {}, {"max_agents": 100,
                                                                          "overhead_p99_ms_at_max": 1.0})
    for name in ("speedup_total_time_n32", "single_turn_vs_llama_server", "multi_turn_vs_llama_server",
                 "emulated_2000_overhead_p99_ms"):  # not measured (a smaller emulated run does not count)
        assert missing[name]["value"] is None and not missing[name]["met"], name
    assert missing["rr_p90_wait_vs_fifo"]["value"] == 0.5 and missing["rr_p90_wait_vs_fifo"]["n_agents"] == 8


def test_the_llama_server_build_uses_the_documented_cmake_line_and_leaves_amx_out_under_a_hypervisor() -> None:
    assert build.cmake_args({"avx2", "hypervisor"}) == list(build.CMAKE_ARGS)
    assert build.cmake_args({"amx_tile"}) == list(build.CMAKE_ARGS)  # bare metal: AMX works
    under_vm = build.cmake_args({"amx_tile", "hypervisor"})
    assert under_vm[:len(build.CMAKE_ARGS)] == list(build.CMAKE_ARGS)
    assert {"-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF",
            f"-DCMAKE_CXX_FLAGS={build.NO_AMX_FLAGS}"} <= set(under_vm)


def test_a_cached_llama_server_is_used_as_is_and_a_missing_one_says_why(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build, "llama_cpp_version", lambda: "9.9.9")
    with pytest.raises(build.Unavailable, match="not built yet"):
        build.find_or_build(print, root=tmp_path, build=False)
    monkeypatch.setattr(build.shutil, "which", lambda tool: None)  # a machine without a compiler
    with pytest.raises(build.Unavailable, match="cmake and c\\+\\+ not found"):
        build.find_or_build(print, root=tmp_path)
    binary = build.binary_path("9.9.9", tmp_path)
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert build.find_or_build(print, root=tmp_path) == binary and os.access(binary, os.X_OK)
    (build.cache_dir("9.9.9", tmp_path) / "build.json").write_text('{"seconds": 900.0}')
    assert build.build_info("9.9.9", tmp_path) == {"seconds": 900.0}


def test_the_emulated_gpu_batches_up_to_its_limit_and_queues_the_rest_in_order() -> None:
    shape = GPUShape(max_batch=2, step_base_ms=1.0, step_per_seq_ms=0.5, prefill_per_token_ms=0.01)
    assert shape.step_ms(2, 100) == 1.0 + 1.0 + 1.0
    assert shape.alone_s(100, 3) == pytest.approx((2.5 + 2 * 1.5) / 1000)
    gpu = BatchedGPU(shape)
    done: list[int] = []

    async def one(i: int, tokens: int) -> None:
        await gpu.serve(10, tokens)
        done.append(i)

    async def main() -> None:
        await asyncio.gather(one(0, 3), one(1, 2), one(2, 2))

    asyncio.run(main())
    # steps: {0,1} x2 (1 leaves), {0,2} (0 leaves), {2}: four steps, never more than two running
    assert done == [1, 0, 2] and gpu.steps == 4 and gpu.max_running == 2 and not gpu.running and not gpu.waiting


def test_emulated_requests_carry_their_tag_and_overhead_is_the_wait_minus_the_emulators_time() -> None:
    msgs = prompt("k7-1", 400)
    assert TAG.search(msgs[1]["content"]).group(1) == "k7-1"  # type: ignore[union-attr]
    assert 400 <= prompt_tokens(msgs) <= 420
    samples = [Sample("a-0", 0.0, 1.0), Sample("a-1", 0.5, 2.5), Sample("c-0", 0.0, 9.0, ok=False)]
    out = summarize(samples, {"a-0": [0.1, 0.95], "a-1": [0.6, 2.48]})
    assert out["calls"] == 3 and out["errors"] == 1 and out["makespan_s"] == 9.0
    assert out["overhead_p50_ms"] == pytest.approx((150 + 120) / 2) and out["avg_wait_s"] == 1.5
    assert out["overhead_later_p99_ms"] == pytest.approx(120)  # the agents' later calls alone
    assert "parts_ms" not in out  # direct calls have no kernel timing to split


@pytest.mark.integration
def test_emulated_scale_runs_small_on_the_real_kernel(tmp_path: Path) -> None:
    """A few agents through the SDK, the embedded broker and one LLM worker to the emulated GPU, and directly."""
    p = EmulatedParams(agents=(6,), calls=2, max_tokens=4, prompt_tokens=50, workers=1, ramp_s=0.1)
    e = run_emulated(Settings(data_dir=tmp_path), p, print)
    for name in ("direct", "kernel"):
        got = e["results"][name]["6"]
        assert got["calls"] == 12 and got["errors"] == 0, got
        assert got["overhead_p50_ms"] > 0 and got["makespan_s"] > 0
    parts = e["results"]["kernel"]["6"]["parts_ms"]
    assert set(parts) == {"to_worker", "worker_before_provider", "worker_after_provider", "reply"}
    assert e["max_agents"] == 6 and e["overhead_p99_ms_at_max"] == e["results"]["kernel"]["6"]["overhead_p99_ms"]
    assert e["emulator"]["kernel/6"]["gpu_max_running"] >= 1


def _tiny(tmp_path: Path, contenders: tuple[str, ...], **kw: Any) -> dict[str, Any]:
    return run_agents_bench(Settings(data_dir=tmp_path), agents=[2], steps=1, short=4, long=8, batch_size=2,
                            threads=1, contenders=contenders, multi_turn=True, multi_agents=2, multi_steps=2,
                            multi_contenders=contenders, json_path=tmp_path / "agents.json", **kw)


@pytest.mark.integration
def test_the_kernel_runs_both_workloads_small_on_the_real_model(tmp_path: Path) -> None:
    result = _tiny(tmp_path, ("batching",), llama_server=None)
    single, multi = result["results"]["batching"]["2"], result["multi_turn"]["results"]["batching"]
    assert single["syscalls"] == 4 and multi["syscalls"] == 8 and single["errors"] == multi["errors"] == 0
    # the second call of each agent carries its first call, its answer and the tool's result
    assert multi["prompt_tokens"] > 2 * single["prompt_tokens"] + 2 * single["tokens"]
    saved = json.loads((tmp_path / "agents.json").read_text())
    assert set(saved["targets"]) == {"multi_turn_vs_llama_server", "single_turn_vs_llama_server",
                                     "speedup_total_time_n32", "rr_p90_wait_vs_fifo", "emulated_2000_overhead_p99_ms"}
    assert saved["skipped"] == {}


@pytest.mark.integration
def test_llama_server_runs_both_workloads_small_when_it_is_built(tmp_path: Path) -> None:
    try:
        binary = build.find_or_build(print, build=False)
    except build.Unavailable as exc:
        pytest.skip(f"{exc}: `aios bench agents --contenders llama_server --agents 1 --steps 1` builds it once "
                    "(about 15 minutes on 2 cores)")
    result = _tiny(tmp_path, ("llama_server",), llama_server=binary)
    single, multi = result["results"]["llama_server"]["2"], result["multi_turn"]["results"]["llama_server"]
    assert single["syscalls"] == 4 and multi["syscalls"] == 8 and single["errors"] == multi["errors"] == 0
    assert single["tokens"] > 0 and multi["prompt_tokens"] > 2 * single["prompt_tokens"]


def test_an_unbuildable_llama_server_is_skipped_with_its_reason(tmp_path: Path) -> None:
    result = run_agents_bench(Settings(data_dir=tmp_path), agents=[1], contenders=("llama_server",),
                              llama_server=tmp_path / "no-such-binary")
    assert result["skipped"] == {"llama_server": f"--llama-server {tmp_path / 'no-such-binary'} is not a file"}
    assert result["results"] == {} and result["targets"]["single_turn_vs_llama_server"]["value"] is None


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
