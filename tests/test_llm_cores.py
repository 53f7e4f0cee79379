"""Several LLM cores: each model of AIOS_LLM_MODELS on its own queue, served by its own LLM worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from aios.ops.embedded import LocalKernel
from aios.ops.status import queue_depths
from aios.settings import Settings, all_queues, for_llm_core, llm_queue, worker_queue
from aios.wire.errors import ConfigError
from aios_bench.emulator import EmulatorProcess
from tests.conftest import authorized, base_settings

EMU = {"backend": "openai", "model": "emulated", "api_key": "x"}


def test_syscalls_are_routed_to_their_cores_queue() -> None:
    s = Settings(llm_models={"fast": {**EMU, "base_url": "http://127.0.0.1:9/v1"}, "big": {"n_gpu_layers": -1}})
    assert llm_queue(s, "fast") == "aios.llm.fast" and llm_queue(s, "big") == "aios.llm.big"
    assert llm_queue(s, None) == "aios.llm" and llm_queue(s, "SmolLM2.gguf") == "aios.llm"
    assert all_queues(s)[-2:] == ["aios.llm.big", "aios.llm.fast"]
    worker = for_llm_core(s.updated(**{"llm_core": "fast"}))
    assert (worker.llm.backend, worker.llm.model, worker.llm.base_url) == ("openai", "emulated", "http://127.0.0.1:9/v1")
    assert worker_queue(worker, "llm") == "aios.llm.fast" and worker_queue(s, "llm") == "aios.llm"
    big = for_llm_core(s.updated(**{"llm_core": "big", "llm_model": "/m/default.gguf"}))
    assert (big.llm.backend, big.llm.model, big.llm.n_gpu_layers) == ("llamacpp", None, -1)


def test_bad_core_settings_say_what_is_wrong() -> None:
    with pytest.raises(ConfigError, match="core names .* must be"):
        Settings(llm_models={"Big Model": {}})
    with pytest.raises(ConfigError, match="AIOS_LLM_CORE='gpu' is not in AIOS_LLM_MODELS"):
        Settings(llm_core="gpu")
    with pytest.raises(ValueError):
        Settings(llm_models={"x": {"backend": "vllm"}})


@pytest.mark.integration
def test_each_core_serves_its_own_queue(tmp_path: Path) -> None:
    with EmulatorProcess(service_s=0.01) as emu:
        settings = base_settings(tmp_path, llm_models={"emu": {**EMU, "base_url": f"{emu.url}/v1"}})
        with LocalKernel(settings, resources=["llm"]) as lk, authorized(lk.settings, "router") as k:
            remote = k.call(k.llm_syscall("Say hi.", model="emu", max_tokens=3))
            local = k.call(k.llm_syscall("Say hi.", max_tokens=3))
            assert remote["model"] == "emulated" and remote["usage"]["completion_tokens"] == 3
            assert local["model"].endswith(".gguf")  # the default core: SmolLM2 in llama.cpp
            assert set(lk.alive()) == {"llm", "llm-emu"} and all(lk.alive().values())
            from aios.broker.app import make_app

            app = make_app(lk.settings)
            try:
                depths = queue_depths(app, lk.settings)
            finally:
                app.close()
            assert depths["aios.llm.emu"] == 0 and depths["aios.llm"] == 0
