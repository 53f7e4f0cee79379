"""The benchmarks run end to end at a tiny size and write what docs/benchmarks.md says they write.

Their figures are not checked here (performance is measured by the benchmarks, not by tests); their shape is.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aios.wire.errors import ConfigError
from aios_bench.overhead import run_overhead
from aios_bench.ratelimit import RateParams, run_ratelimit, steady_throughput
from aios_bench.scale import ScaleParams, run_scale
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
def test_ratelimit_writes_json_with_every_target_and_a_plot(tmp_path: Path) -> None:
    out = tmp_path / "ratelimit.json"
    params = RateParams(agents=6, calls=3, rpm=4, window_s=1.0, service_ms=20, max_tokens=4)
    result = run_ratelimit(base_settings(tmp_path / "k"), params, json_path=out)
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(result))
    assert set(written["targets"]) == {"zero_429", "zero_failed_agents", "throughput_vs_limit"}
    for target in written["targets"].values():
        assert set(target) == {"value", "goal", "met"} and isinstance(target["met"], bool)
    assert written["limits"]["binding_requests"] == 4 and written["limits"]["binding"] == "rpm"
    for name in ("direct", "kernel"):
        c = written[name]
        assert c["agents"] == 6
        # What the provider counted agrees with what the agents saw: every successful call was admitted once.
        assert c["admitted"] >= c["calls_ok"] and c["calls_ok"] + 3 * c["failed_agents"] >= 18
        if c["steady"]["windows"]:  # the direct agents may all have died too soon for a whole steady window
            assert c["requests_per_window"] <= 4  # the provider enforced its limit
    assert written["kernel"]["steady"]["windows"] >= 1  # 18 requests at 4 a window: at least 4 windows
    # 6 agents at once against 4 requests per window: the direct clients must have been refused.
    assert written["direct"]["provider_429"] > 0
    assert written["targets"]["zero_429"]["value"] == written["kernel"]["provider_429"]
    # Not a performance figure but the quota's contract: set to the provider's limits, the kernel never makes it
    # refuse (a request counts in the kernel's window until it ended, after the provider counted it).
    assert written["kernel"]["provider_429"] == 0 and written["kernel"]["failed_agents"] == 0
    assert out.with_suffix(".png").stat().st_size > 10_000


@pytest.mark.integration
def test_scale_writes_json_with_its_target_and_a_plot(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    params = ScaleParams(agents=8, calls_per_worker=2, rounds=2, service_ms=50, max_tokens=2)
    result = run_scale(base_settings(tmp_path / "k"), params, json_path=out)
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(result))
    assert set(written["targets"]) == {"linear_scaling_4_workers"}
    target = written["targets"]["linear_scaling_4_workers"]
    assert set(target) == {"value", "goal", "met"} and target["value"] > 0
    assert target["value"] == written["configs"]["4"]["vs_linear"]
    assert [c["calls"] for c in written["configs"].values()] == [4, 8, 16]  # per worker x workers x rounds
    assert written["configs"]["1"]["vs_linear"] == 1.0
    # The provider saw four requests at once: four worker processes really served in parallel.
    assert written["provider"]["max_in_flight"] == 4 and written["provider"]["rejected_429"] == 0
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_bad_benchmark_options_are_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="not enough to measure"):
        RateParams(agents=2, calls=1, rpm=10).check()
    with pytest.raises(ConfigError, match="admits no request"):
        RateParams(tpm=10).check()
    with pytest.raises(ConfigError, match="include 1"):
        ScaleParams(workers=(2, 4)).check()
    with pytest.raises(ConfigError, match="busy"):
        ScaleParams(agents=4).check()


def test_steady_throughput_counts_whole_windows_after_the_burst() -> None:
    # Bursts of 3 at the start of each 10 s window, the last at t=30: windows [10, 20) and [20, 30) count.
    at = [0.0, 0.1, 0.2, 10.1, 10.2, 10.3, 20.1, 20.2, 20.3, 30.1]
    steady = steady_throughput(at, [5] * len(at), 10.0)
    assert steady["windows"] == 2 and steady["requests_per_window"] == 3 and steady["tokens_per_window"] == 15
    assert steady_throughput(at[:4], [5] * 4, 10.0)["windows"] == 0  # no whole window after the burst


@pytest.mark.integration
def test_fairness_writes_json_with_both_targets_and_a_plot(tmp_path: Path) -> None:
    from aios_bench.fairness import run_fairness

    out = tmp_path / "fairness.json"
    run_fairness(base_settings(tmp_path / "k"), seconds=1.0, demands=(1, 3), urgent=3, json_path=out)
    written = json.loads(out.read_text())
    assert set(written["targets"]) == {"jain_index", "high_priority_p99_wait"}
    assert set(written["share"]) == {"fifo", "fair"} and set(written["priority"]) == {"fifo", "priority"}
    assert all(len(run["service_s"]) == 2 for run in written["share"].values())
    assert all(len(run["waits_s"]) == 3 for run in written["priority"].values())
    assert out.with_suffix(".png").stat().st_size > 10_000


@pytest.mark.integration
def test_attacks_writes_json_with_both_targets_and_a_plot(tmp_path: Path) -> None:
    from aios_bench.attacks import all_attacks
    from aios_bench.attacks.bench import run_attacks

    out = tmp_path / "attacks.json"
    result = run_attacks(base_settings(tmp_path / "k"), brokers=["embedded"], redis_url="", rabbitmq_url="",
                         json_path=out)
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(result))
    assert set(written["targets"]) == {"attacks_tried", "attacks_succeeded"}
    embedded = {a.name for a in all_attacks() if "embedded" in a.brokers or a.area == "approvals"}
    assert {r["attack"] for r in written["attacks"]} == embedded
    assert written["targets"]["attacks_tried"]["value"] == len(embedded) >= 25
    assert written["succeeded"] == [] and written["targets"]["attacks_succeeded"] == {"value": 0, "goal": 0,
                                                                                      "met": True}
    assert all(r["saw"] for r in written["attacks"])
    assert out.with_suffix(".png").stat().st_size > 10_000


@pytest.mark.integration
def test_gateway_writes_json_with_both_targets_and_a_plot(tmp_path: Path) -> None:
    from aios_bench.gateway import GatewayParams, run_gateway_bench

    out = tmp_path / "gateway.json"
    params = GatewayParams(agents=(3,), calls=2, max_tokens=4, service_ms=10, llm_threads=4)
    result = run_gateway_bench(base_settings(tmp_path / "k"), params, json_path=out)
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(result))
    assert set(written["targets"]) == {"gateway_p50_overhead_ms", "gateway_streams_256_ok"}
    assert isinstance(written["targets"]["gateway_p50_overhead_ms"]["value"], float)
    assert written["targets"]["gateway_streams_256_ok"]["value"] is None  # no 256-agent run: not measured
    assert set(written["runs"]) == {f"3/{m}/{c}" for m in ("plain", "stream") for c in ("direct", "sdk", "gateway")}
    for run in written["runs"].values():  # every call of every contender answered, with the emulator's text
        assert (run["calls_ok"], run["calls_asked"], run["failed"], run["wrong_text"]) == (6, 6, 0, 0)
        cpu = run["cpu_ms_per_call"]  # from /proc: this process (the clients), the gateway's, the rest
        assert set(cpu) == {"client", "gateway", "kernel"} and cpu["client"] > 0 and min(cpu.values()) >= 0
    assert set(written["overhead_p50_ms"]) == {"3/plain", "3/stream"}
    assert written["targets"]["gateway_p50_overhead_ms"]["value"] == pytest.approx(written["overhead_p50_ms"]["3/plain"],
                                                                                   abs=1e-3)
    assert out.with_suffix(".png").stat().st_size > 10_000
