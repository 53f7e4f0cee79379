"""The LLM service on the FAKE model, through the worker pipeline: the three output modes, and preemption: a
generation whose time slice ends while others wait is requeued with its snapshot stored, and its next delivery
continues it to the output an uninterrupted run has."""

from __future__ import annotations

from aios.state import keys
from aios.testing import FakeModel, Harness, fake_llm_factory
from aios.wire.errors import BackendError
from tests.unit.conftest import MakeHarness

CALC = {"name": "calculator", "description": "arithmetic",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}


def llm(harness: MakeHarness, model: FakeModel, **kwargs: object) -> Harness:
    return harness("llm", fake_llm_factory(model), **kwargs)


def test_text_json_and_tool_call_answers(harness: MakeHarness) -> None:
    h = llm(harness, FakeModel())
    text = h.run(h.sdk.llm_syscall("hello"))
    assert text is not None and text.status.value == "ok" and text.result["content"].endswith(" hello")
    assert text.result["usage"]["completion_tokens"] == 2
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    assert h.run(h.sdk.llm_syscall("json please", "json", json_schema=schema)).result["json"] == {"answer": 1}  # type: ignore[union-attr]
    calls = h.run(h.sdk.llm_syscall("use the calculator", "tool_call", tools=[CALC])).result["tool_calls"]  # type: ignore[union-attr]
    assert calls == [{"name": "calculator", "arguments": {"expression": calls[0]["arguments"]["expression"]}}]
    assert h.count(keys.STATS_DONE, "llm:ok") == 3


def test_an_unusable_reply_is_a_backend_error_answer(harness: MakeHarness) -> None:
    h = llm(harness, FakeModel(script=lambda s: "not json"))
    answer = h.run(h.sdk.llm_syscall("json please", "json"))
    assert answer.error.code == "backend_error" and "not valid JSON" in answer.error.message  # type: ignore[union-attr]


def test_preempted_it_is_requeued_with_its_snapshot_and_resumed_to_the_same_output(harness: MakeHarness) -> None:
    model = FakeModel(length=9, quantum=4, preempt=True)
    h = llm(harness, model, app=True)
    syscall = h.sdk.llm_syscall("tell me a long story")
    whole = FakeModel(length=9).chat(syscall)  # the same generation, never interrupted
    assert h.run(syscall) is None
    snap = h.snapshot(syscall.id)
    assert snap is not None and snap.backend == "fake" and snap.tokens == [0, 1, 2, 3] and snap.slices == 1
    assert [q.message_id for q in h.queued()] == [syscall.id] and h.queued()[0].payload == h.payload(syscall)
    assert h.count(keys.STATS_DONE, "llm:preempted") == 1
    assert h.deliver() is not None and h.reply(syscall.id) is None  # the second slice, preempted again
    assert h.snapshot(syscall.id).slices == 2  # type: ignore[union-attr]
    assert h.deliver() is not None  # the last slice
    answer = h.reply(syscall.id)
    assert answer is not None and answer.result == whole
    assert [c.resumed_from for c in model.calls] == [0, 4, 8]
    assert not h.redis.exists(keys.context(syscall.id))  # the snapshot goes with the answer
    assert h.queued() == [] and len(h.replies(syscall.id)) == 1


def test_it_yields_only_when_others_wait_on_its_queue(harness: MakeHarness) -> None:
    model = FakeModel(length=9, quantum=4)  # preempt=None: asks the worker's queue probe, as real backends do
    h = llm(harness, model, app=True)
    alone = h.sdk.llm_syscall("first")
    assert h.run(alone).status.value == "ok"  # type: ignore[union-attr]
    waiting = h.submit(h.sdk.llm_syscall("someone else"))
    busy = h.sdk.llm_syscall("second")
    assert h.run(busy) is None  # preempted: another syscall waits
    assert [q.message_id for q in h.queued()] == [waiting.id, busy.id]  # behind the one that waited
    while h.deliver():
        pass
    assert h.reply(busy.id).status.value == "ok" and h.reply(waiting.id).status.value == "ok"  # type: ignore[union-attr]


def test_a_transient_backend_error_is_retried_then_answered(harness: MakeHarness, make_settings) -> None:  # type: ignore[no-untyped-def]
    model = FakeModel(errors=[BackendError("429", transient=True)])
    h = llm(harness, model, settings=make_settings(retry_backoff_s=0.0), app=True)
    syscall = h.sdk.llm_syscall("hi")
    assert h.run(syscall) is None
    h.deliver()
    assert h.reply(syscall.id).status.value == "ok" and len(model.calls) == 2  # type: ignore[union-attr]
