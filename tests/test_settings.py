"""Settings: grouped per component, flat AIOS_* names in the environment and the constructor, read once."""

from __future__ import annotations

import pytest

from aios.settings import FLAT, Settings
from aios.wire.errors import ConfigError


def test_from_env_reads_the_mapping_it_is_given_and_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOS_LLM_N_CTX", "999")
    s = Settings.from_env({"AIOS_LLM_N_CTX": "1234", "AIOS_QUOTAS": '{"llm": {"rpm": 5}}', "AIOS_AUTH": "off",
                           "AIOS_LLM_PREFIX_CACHE": "false", "AIOS_DATA_DIR": "/tmp/somewhere"})
    assert s.llm.n_ctx == 1234 and s.quota.scopes["llm"].rpm == 5 and s.security.auth == "off"
    assert s.llm.prefix_cache is False and str(s.data_dir) == "/tmp/somewhere"
    assert Settings.from_env({}).llm.n_ctx == 4096  # the process's own AIOS_LLM_N_CTX is not read


def test_the_llm_key_falls_back_to_openai_api_key() -> None:
    assert Settings.from_env({"OPENAI_API_KEY": "sk-test"}).llm.api_key == "sk-test"
    assert Settings.from_env({"OPENAI_API_KEY": "sk-test", "AIOS_LLM_API_KEY": "mine"}).llm.api_key == "mine"


def test_a_bad_value_names_its_variable() -> None:
    with pytest.raises(ConfigError, match="AIOS_LLM_BATCH_SIZE"):
        Settings.from_env({"AIOS_LLM_BATCH_SIZE": "0"})
    with pytest.raises(ConfigError, match="AIOS_QUOTAS must be JSON"):
        Settings.from_env({"AIOS_QUOTAS": "{not json"})
    with pytest.raises(ConfigError, match="AIOS_MCP_SERVERS"):
        Settings.from_env({"AIOS_MCP_SERVERS": '{"files": {"cmd": "srv"}}'})


def test_flat_names_and_groups_are_one_table() -> None:
    s = Settings(llm_n_ctx=1024, quota_mode="fail", worker_concurrency=3)
    assert (s.llm.n_ctx, s.quota.mode, s.worker.concurrency) == (1024, "fail", 3)
    assert s.updated(llm_batch_size=8).llm.batch_size == 8 and s.updated(llm_batch_size=8).llm.n_ctx == 1024
    assert set(s.flat()) == set(FLAT) | {"data_dir"}
    assert Settings.from_env(s.to_env()) == s
    with pytest.raises(ValueError):
        Settings(no_such_setting=1)


def test_every_group_field_has_a_flat_name() -> None:
    for group, field in Settings.model_fields.items():
        if group == "data_dir":
            continue
        model = field.annotation
        assert isinstance(model, type)
        names = {n for g, n in FLAT.values() if g == group}
        assert names == set(model.model_fields), f"{group}: {set(model.model_fields) ^ names}"
