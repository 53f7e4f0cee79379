"""Scheduling policies as pure objects (no Redis): priorities, levels, aging, decay."""

from __future__ import annotations

import pytest

from aios.policy.scheduler import (
    FairShare,
    Fifo,
    RoundRobin,
    StrictPriority,
    aged_priority,
    jain_index,
    llm_quantum,
    make_policy,
)
from aios.settings import Settings
from aios.wire.errors import ConfigError


def test_fifo_and_round_robin_ignore_the_requested_priority() -> None:
    assert {Fifo().priority(p) for p in range(10)} == {5}
    rr = RoundRobin(quantum_tokens=16)
    assert {rr.priority(p) for p in range(10)} == {5} and rr.quantum_tokens == 16
    assert Fifo().quantum_tokens is None


def test_strict_priority_keeps_the_agents_priority_and_ages() -> None:
    sp = StrictPriority(aging_s=10)
    assert [sp.priority(p) for p in (0, 5, 9)] == [0, 5, 9]
    assert aged_priority(2, 0, 10) == 2
    assert aged_priority(2, 9.9, 10) == 2
    assert aged_priority(2, 10, 10) == 3
    assert aged_priority(2, 35, 10) == 5
    assert aged_priority(2, 10_000, 10) == 9  # never past the top
    assert aged_priority(9, 100, 10) == 9


def test_fair_share_puts_less_served_agents_first() -> None:
    fair = FairShare(quantum_s=0.5)
    assert fair.priority(0, attained_s=0.0) == 9  # the least served (or a newcomer) enters at the top
    assert [fair.level(s) for s in (0, 0.49, 0.5, 1.2, 4.4, 4.5, 1e9, -1)] == [0, 0, 1, 2, 8, 9, 9, 0]
    prios = [fair.priority(5, s) for s in (0, 0.5, 1, 2, 4, 8)]
    assert prios == sorted(prios, reverse=True) and prios[0] == 9 and prios[-1] == 0
    assert fair.needs_attained and not Fifo().needs_attained


def test_policies_come_from_the_settings_per_resource() -> None:
    s = Settings(policies={"llm": "rr", "tool": "fair"}, llm_quantum_tokens=8, aging_s=3, fair_quantum_s=2)
    llm, tool, storage = (make_policy(s, r) for r in ("llm", "tool", "storage"))
    assert (llm.name, llm.quantum_tokens) == ("rr", 8)
    assert (tool.name, tool.quantum_s) == ("fair", 2)  # type: ignore[attr-defined]
    assert (storage.name, storage.aging_s) == ("priority", 3)
    assert llm_quantum(s) == 8
    assert llm_quantum(Settings(policies={"llm": "rr"})) == 32  # rr slices the LLM even when no quantum is set
    assert llm_quantum(Settings()) == 0 and llm_quantum(Settings(llm_quantum_tokens=5)) == 5
    with pytest.raises(ConfigError, match="unknown resources"):
        Settings(policies={"gpu": "fifo"})
    with pytest.raises(ValueError):
        Settings(policies={"llm": "lottery"})


def test_quota_scopes_are_checked() -> None:
    s = Settings(quotas={"llm": {"rpm": 60, "tpm": 1000}, "agent:*": {"token_budget": 5}, "group:ops": {"rpm": 1},
                         "tool:python": {"concurrency": 2}, "agent:bob": {"rpm": 3}})
    assert s.quota.scopes["llm"].tpm == 1000 and s.quota.scopes["tool:python"].concurrency == 2
    with pytest.raises(ConfigError, match="unknown scopes"):
        Settings(quotas={"model:x": {"rpm": 1}})
    with pytest.raises(ValueError):
        Settings(quotas={"llm": {"rpm": 0}})
    with pytest.raises(ValueError):
        Settings(quotas={"llm": {"rpn": 5}})


def test_jain_index() -> None:
    assert jain_index([1, 1, 1, 1]) == 1.0
    assert jain_index([1, 0, 0, 0]) == 0.25
    assert 0.25 < jain_index([4, 2, 1, 1]) < 1.0
