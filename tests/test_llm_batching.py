"""Continuous batching and preemption on the real SmolLM2-135M: greedy output is the same batched or alone, and
the same with several suspensions per syscall as without, on both backends and through the kernel."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from aios.ops.embedded import LocalKernel
from aios.services.llm.service import LlamaCppBackend, OpenAIBackend, default_model_path
from aios.settings import Settings
from aios.state import keys
from aios.state.context import Preempted, Snapshot
from aios.wire.syscalls import ChatMessage, LLMSyscall
from tests.conftest import authorized, base_settings
from tests.test_llm_backends import CALC, CITY_SCHEMA, llama_server, syscall  # noqa: F401 - fixture reused

pytestmark = pytest.mark.integration
PROMPTS = ["Name three colours.", "What is the capital of France?", "Write one sentence about the sea.",
           "Count from one to five in words."]


def settings(**kw: Any) -> Settings:
    values: dict[str, Any] = {"llm_backend": "llamacpp", "llm_n_ctx": 1024, "llm_n_threads": 2,
                              "llm_batch_size": 4, "visibility_timeout_s": 7200}
    values.update(kw)
    return Settings(**values)


@pytest.fixture(scope="module")
def engine_backend() -> Iterator[LlamaCppBackend]:
    backend = LlamaCppBackend(settings())
    yield backend
    backend.engine.close()


def run_sliced(backend: Any, call: Any) -> tuple[dict[str, Any], int]:
    """Drive a syscall to its end as the kernel would, suspending it at every quantum; returns (result, slices)."""
    snap: Snapshot | None = None
    for _ in range(200):
        try:
            return backend.chat(call, snap), (snap.slices if snap else 0)
        except Preempted as p:
            snap = p.snapshot
    raise AssertionError("never finished")


def test_batched_greedy_output_equals_alone(engine_backend: LlamaCppBackend) -> None:
    calls = [syscall(p, max_tokens=40) for p in PROMPTS]
    calls.append(syscall("Where is Paris? Answer as JSON.", output="json", json_schema=CITY_SCHEMA, max_tokens=48))
    calls.append(syscall("What is 17 * 23? Use the calculator.", output="tool_call", tools=(CALC,), max_tokens=48))
    alone = [engine_backend.chat(c) for c in calls]
    engine_backend.engine.max_active = 0
    with ThreadPoolExecutor(len(calls)) as pool:
        together = list(pool.map(engine_backend.chat, calls))
    assert engine_backend.engine.max_active == 4, "the engine should have decoded four sequences at once"
    for a, b in zip(alone, together, strict=True):
        assert (a["content"], a["json"], a["tool_calls"]) == (b["content"], b["json"], b["tool_calls"])
    assert together[4]["json"]["city"] and together[5]["tool_calls"][0]["name"] == "calculator"


def test_slots_stay_consecutive_and_moved_sequences_generate_the_same(engine_backend: LlamaCppBackend) -> None:
    """Short syscalls end first; the sequences left are moved down to consecutive slots (llama.cpp batches only
    consecutive ones together) and still generate what they generate alone."""
    calls = [syscall(p, max_tokens=n) for p, n in zip(PROMPTS, (4, 40, 8, 40), strict=True)]
    calls += [syscall(p, max_tokens=30) for p in PROMPTS[:2]]  # wait for a free slot, join mid-way
    alone = [engine_backend.chat(c) for c in calls]
    engine = engine_backend.engine
    moved = engine.moved
    with ThreadPoolExecutor(len(calls)) as pool:
        together = list(pool.map(engine_backend.chat, calls))
    assert engine.moved > moved, "a sequence above a freed slot should have moved down"
    assert [a["content"] for a in alone] == [t["content"] for t in together]
    assert [a["usage"]["completion_tokens"] for a in alone] == [t["usage"]["completion_tokens"] for t in together]
    assert sorted(engine._free, reverse=True) == engine._free and len(engine._free) == engine.n_seq


SYSTEM = ChatMessage(role="system", content="You are a careful assistant. Answer briefly and plainly, in English.")
TURNS = ("Name a colour.", "Why that one?", "Name another.")
AGENTS = PROMPTS[1:]


def conversations(backend: LlamaCppBackend, temperature: float, *, batched: bool,
                  history: list[list[ChatMessage]] | None = None) -> tuple[list[list[str]], list[list[ChatMessage]]]:
    """Three agents, three turns each; every call carries the agent's whole conversation so far (as a chat agent
    does). Returns every reply, per agent, and the conversations (from ``history``'s replies when given, so that
    two runs send the very same prompts)."""
    convs = [[SYSTEM] for _ in AGENTS]
    replies: list[list[str]] = [[] for _ in AGENTS]
    for t, question in enumerate(TURNS):
        for i, c in enumerate(convs):
            c.append(ChatMessage(role="user", content=f"{AGENTS[i]} {question}"))
        calls = [LLMSyscall(agent_id=f"agent-{i}", messages=tuple(c), max_tokens=10, temperature=temperature)
                 for i, c in enumerate(convs)]
        if batched:
            with ThreadPoolExecutor(len(calls)) as pool:
                answers = [r["content"] for r in pool.map(backend.chat, calls)]
        else:
            answers = [backend.chat(c)["content"] for c in calls]
        for i, c in enumerate(convs):
            replies[i].append(answers[i])
            said = history[i][2 * t + 2].content if history else answers[i]
            c.append(ChatMessage(role="assistant", content=said))
    return replies, convs


@pytest.mark.timeout(900)
@pytest.mark.parametrize("temperature", [0.0, 0.8], ids=["greedy", "sampled"])
def test_each_turn_prefills_only_its_new_tokens_and_output_is_unchanged(temperature: float,
                                                                         engine_backend: LlamaCppBackend) -> None:
    """The conversation cache: an agent's next call starts from the KV cells (prompt and reply) of its last one,
    alone or batched, with more conversations than the cache's budget holds (evicted ones start afresh), greedy
    and sampled; every reply is the one an engine without the cache gives, token for token."""
    engine = engine_backend.engine
    engine.prefix_cache = False
    engine.cache.clear()
    prefilled = engine.prefilled
    try:
        fresh, history = conversations(engine_backend, temperature, batched=False)
    finally:
        engine.prefix_cache = True
    uncached = engine.prefilled - prefilled
    engine.cache.clear()
    prefilled, hits, reused = engine.prefilled, engine.prefix_hits, engine.prefix_tokens_reused
    replies, _ = conversations(engine_backend, temperature, batched=True, history=history)
    assert replies == fresh
    assert engine.prefix_hits - hits >= len(AGENTS) * (len(TURNS) - 1)  # every later turn, at least
    assert engine.prefilled - prefilled + engine.prefix_tokens_reused - reused >= uncached
    assert engine.prefilled - prefilled < uncached / 2, "later turns should prefill only their new tokens"
    assert engine.agents_held == {f"agent-{i}" for i in range(len(AGENTS))}
    # Alone, with room for about one conversation: the others are evicted and start afresh.
    budget = engine.cache.budget_bytes
    engine.cache.budget_bytes = max(len(e.data) for e in engine.cache.entries()) * 3 // 2
    engine.cache.clear()
    try:
        evicted, hits = engine.cache.evicted, engine.prefix_hits
        replies, _ = conversations(engine_backend, temperature, batched=False, history=history)
        assert replies == fresh and engine.cache.evicted > evicted and engine.prefix_hits > hits
        assert len(engine.cache) < len(AGENTS)
    finally:
        engine.cache.budget_bytes = budget


@pytest.mark.parametrize("kv", [True, False], ids=["kv-state", "tokens-only"])
def test_local_preemption_resumes_token_for_token(kv: bool, engine_backend: LlamaCppBackend) -> None:
    plain = syscall(PROMPTS[2], max_tokens=40)
    constrained = syscall("Where is Paris? Answer as JSON.", output="json", json_schema=CITY_SCHEMA, max_tokens=48)
    expected = [engine_backend.chat(plain), engine_backend.chat(constrained)]
    engine_backend.engine.keep_state = kv
    engine_backend.others_waiting = lambda: True  # a fake "others wait": every quantum ends in a suspension
    restored = engine_backend.engine.restored
    try:
        for call, want, quantum in zip((plain, constrained), expected, (6, 2), strict=True):
            engine_backend.quantum = quantum
            got, slices = run_sliced(engine_backend, call)
            assert slices >= 3
            assert (got["content"], got["json"]) == (want["content"], want["json"])
            assert got["usage"]["completion_tokens"] == want["usage"]["completion_tokens"]
    finally:
        engine_backend.quantum, engine_backend.engine.keep_state, engine_backend.others_waiting = 0, True, None
    assert (engine_backend.engine.restored > restored) == kv


def test_sampled_generation_is_sliced_and_resumes_with_the_same_draws(engine_backend: LlamaCppBackend) -> None:
    call = syscall(PROMPTS[2], max_tokens=40, temperature=0.9)
    want = engine_backend.chat(call)
    assert want["content"] != engine_backend.chat(syscall(PROMPTS[2], max_tokens=40))["content"], \
        "temperature 0.9 should sample something other than the greedy reply"
    with ThreadPoolExecutor(3) as pool:  # the same draws batched beside other syscalls
        assert list(pool.map(engine_backend.chat, [call] * 3)) == [want] * 3
    engine_backend.others_waiting = lambda: True
    try:
        engine_backend.quantum = 5
        got, slices = run_sliced(engine_backend, call)
    finally:
        engine_backend.quantum, engine_backend.others_waiting = 0, None
    assert slices >= 3
    assert got["content"] == want["content"]
    assert got["usage"]["completion_tokens"] == want["usage"]["completion_tokens"]


def test_a_snapshot_resumes_on_another_worker(engine_backend: LlamaCppBackend) -> None:
    """Slices alternate between two engines (two LLM workers of the same core): the KV state taken in one restores
    in the other and the output is the uninterrupted one. A worker of another batch size cannot read the state
    (llama.cpp's format records the number of KV streams): it recomputes from the tokens, same output."""
    call = syscall(PROMPTS[0], max_tokens=40)
    want = engine_backend.chat(call)
    same, smaller = LlamaCppBackend(settings()), LlamaCppBackend(settings(llm_batch_size=2))
    before = engine_backend.engine.restored
    for b in (engine_backend, same, smaller):
        b.quantum, b.others_waiting = 6, (lambda: True)
    try:
        for pair in ((engine_backend, same), (engine_backend, smaller)):
            snap: Snapshot | None = None
            for turn in range(100):
                try:
                    got = pair[turn % 2].chat(call, snap)
                    break
                except Preempted as p:
                    snap = p.snapshot
            assert snap is not None and snap.slices >= 4 and snap.state
            assert got["content"] == want["content"]
    finally:
        for b in (engine_backend, same, smaller):
            b.quantum, b.others_waiting = 0, None
        same.engine.close()
        smaller.engine.close()
    assert same.engine.restored >= 2 and engine_backend.engine.restored - before >= 2
    assert smaller.engine.restored == 0


def test_openai_preemption_resumes_as_a_text_continuation(llama_server: str) -> None:  # noqa: F811
    common = {"llm_backend": "openai", "llm_base_url": llama_server, "llm_model": "smollm2",
              "visibility_timeout_s": 7200, "llm_extra_body": {"repeat_penalty": 1.0}}
    template = str(default_model_path())
    whole = OpenAIBackend(Settings(**common))  # uninterrupted: one chat completion
    sliced = OpenAIBackend(Settings(**common, llm_quantum_tokens=4, llm_chat_template=template))
    sliced.others_waiting = lambda: True
    for prompt in PROMPTS[:2]:
        call = syscall(prompt, max_tokens=32)
        want = whole.chat(call)
        got, slices = run_sliced(sliced, call)
        assert slices >= 3
        assert got["content"] == want["content"]


@pytest.fixture(scope="module")
def sliced_kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKernel]:
    """An LLM worker decoding one sequence at a time, with a 4-token quantum: concurrent syscalls take turns."""
    with LocalKernel(base_settings(tmp_path_factory.mktemp("sliced"), llm_n_ctx=1024, llm_batch_size=1,
                                   llm_quantum_tokens=4), resources=["llm"]) as lk:
        yield lk


def test_kernel_round_robin_answers_each_syscall_once_and_unchanged(sliced_kernel: LocalKernel,
                                                                    engine_backend: LlamaCppBackend) -> None:
    state = redis.Redis.from_url(sliced_kernel.settings.state_redis_url())
    expected = [engine_backend.chat(syscall(p, max_tokens=24))["content"] for p in PROMPTS[:3]]
    with authorized(sliced_kernel.settings, "rr-agent") as k:
        pending = [k.llm_syscall(p, "text", max_tokens=24) for p in PROMPTS[:3]]
        answers = k.gather(pending)
        assert [a["content"] for a in answers] == expected
        assert int(state.hget(keys.STATS_DONE, "llm:preempted") or 0) >= 3
        assert int(state.hget(keys.STATS_DONE, "llm:ok") or 0) == 3
        for p in pending:  # answered once: one reply, and the snapshot is gone
            assert state.llen(keys.reply("rr-agent", p.id)) == 0 and not state.exists(keys.context(p.id))
