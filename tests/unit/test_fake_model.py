"""The FAKE LLM backend itself: deterministic, honours max_tokens, the real backends' result shapes (validated by
the service's own code), and time slices that resume to the uninterrupted output."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from aios.services.llm.service import LLMService
from aios.state.context import Preempted, Snapshot
from aios.testing import FakeModel, example, fake_llm_service
from aios.testing.fake_model import words
from aios.wire.errors import BackendError, ConfigError
from aios.wire.syscalls import ChatMessage, LLMSyscall, ToolSpec

CALC = ToolSpec(name="calculator", description="arithmetic",
                parameters={"type": "object", "properties": {"expression": {"type": "string", "minLength": 1}},
                            "required": ["expression"], "additionalProperties": False})
WEATHER = ToolSpec(name="weather", parameters={"type": "object", "properties": {"city": {"type": "string"},
                                                                                 "days": {"type": "integer",
                                                                                          "minimum": 1}}})


def chat(text: str = "hello there", **kw: Any) -> LLMSyscall:
    return LLMSyscall(agent_id="a1", messages=(ChatMessage(role="user", content=text),), **kw)


def test_text_is_deterministic_and_shaped_like_a_real_backends() -> None:
    model = FakeModel()
    result = model.chat(chat())
    assert result == FakeModel().chat(chat())
    assert set(result) == {"content", "json", "tool_calls", "finish_reason", "model", "usage"}
    assert result["content"].startswith("fake:") and result["content"].endswith(" hello there")
    assert (result["json"], result["tool_calls"], result["finish_reason"], result["model"]) == (
        None, [], "stop", "fake-model")
    assert result["usage"] == {"prompt_tokens": 3, "completion_tokens": 3}
    assert model.chat(chat("something else"))["content"] != result["content"]  # a digest of the prompt


def test_max_tokens_cuts_the_output() -> None:
    result = FakeModel(length=50).chat(chat(max_tokens=7))
    assert result["finish_reason"] == "length" and result["usage"]["completion_tokens"] == 7
    assert len(words(result["content"])) == 7


def test_json_output_is_valid_against_its_schema() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string", "minLength": 3},
                                               "age": {"type": "integer", "minimum": 18},
                                               "tags": {"type": "array", "items": {"enum": ["a", "b"]}}},
              "required": ["name", "age"]}
    result = FakeModel().chat(chat(output="json", json_schema=schema))
    jsonschema.validate(result["json"], schema)
    assert result["json"]["age"] == 18 and result["json"]["tags"] == ["a"]
    assert FakeModel().chat(chat(output="json"))["json"] == {"fake": result["json"]["name"]}  # any object


def test_json_cut_off_at_max_tokens_fails_as_a_real_cut_off_does() -> None:
    with pytest.raises(BackendError, match="cut off at max_tokens=2"):
        FakeModel().chat(chat(output="json", json_schema={"type": "object", "properties": {
            "a": {"type": "string"}, "b": {"type": "string"}}}, max_tokens=2))


def test_tool_call_picks_the_tool_the_message_names_with_valid_arguments() -> None:
    result = FakeModel().chat(chat("what is the weather in Paris", output="tool_call", tools=(CALC, WEATHER)))
    assert result["content"] is None and result["finish_reason"] == "tool_calls"
    [call] = result["tool_calls"]
    assert call["name"] == "weather" and call["arguments"]["days"] == 1
    jsonschema.validate(call["arguments"], WEATHER.parameters)
    assert FakeModel().chat(chat("2+2?", output="tool_call", tools=(CALC, WEATHER)))["tool_calls"][0]["name"] == \
        "calculator"


def test_a_scripted_reply_is_validated_like_a_models() -> None:
    model = FakeModel(script=lambda s: '{"name": "rm_rf", "arguments": {}}')
    with pytest.raises(BackendError, match="unknown tool 'rm_rf'"):
        model.chat(chat(output="tool_call", tools=(CALC,)))
    assert FakeModel(script=lambda s: "exactly this").chat(chat())["content"] == "exactly this"


def test_another_model_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="serves 'fake-model', not 'gpt-9'"):
        FakeModel().chat(chat(model="gpt-9"))


def test_slices_resume_to_the_uninterrupted_output() -> None:
    whole = FakeModel(length=10).chat(chat())
    model = FakeModel(length=10, quantum=3, preempt=True)
    snapshot, slices = None, 0
    while True:
        try:
            result = model.chat(chat(), snapshot)
            break
        except Preempted as p:
            snapshot, slices = p.snapshot, slices + 1
            assert snapshot.backend == "fake" and snapshot.slices == slices
    assert result == whole and slices == 3
    assert [(c.resumed_from, c.generated, c.outcome) for c in model.calls] == [
        (0, 3, "preempted"), (3, 3, "preempted"), (6, 3, "preempted"), (9, 1, "stop")]


def test_no_yield_without_others_waiting() -> None:
    model = FakeModel(length=10, quantum=3)
    assert model.chat(chat())["usage"]["completion_tokens"] == 10
    model.others_waiting = lambda: True
    with pytest.raises(Preempted):
        model.chat(chat())


def test_a_snapshot_of_something_else_starts_over() -> None:
    model = FakeModel(length=5)
    for snap in (Snapshot("llamacpp", "fake-model", tokens=[1, 2]), Snapshot("fake", "fake-model", tokens=[0],
                                                                             text="not this ")):
        assert model.chat(chat(), snap) == model.chat(chat())
    assert all(c.resumed_from == 0 for c in model.calls)


def test_scripted_errors_come_one_per_call() -> None:
    model = FakeModel(errors=[BackendError("429", transient=True)])
    with pytest.raises(BackendError, match="429"):
        model.chat(chat())
    assert model.chat(chat())["finish_reason"] == "stop"


def test_an_llm_service_on_the_fake_never_loads_a_model() -> None:
    model = FakeModel(errors=[ValueError("bad state")])
    service = fake_llm_service(model=model)
    assert isinstance(service, LLMService) and service.backend is model
    with pytest.raises(BackendError, match="the fake LLM backend failed: ValueError: bad state"):
        service.handle(chat())
    service.watch_queue(lambda: True)
    assert service.handle(chat())["model"] == "fake-model" and model.others_waiting is not None


@pytest.mark.parametrize("schema, value", [
    ({"const": 3}, 3), ({"enum": ["x", "y"]}, "x"), ({"type": ["null", "boolean"]}, True),
    ({"anyOf": [{"type": "integer", "maximum": 0}, {"type": "string"}]}, 0),
    ({"type": "number", "exclusiveMinimum": 5}, 6.0), ({"type": "string", "maxLength": 2}, "se"),
    ({"type": "array", "items": {"type": "integer"}, "minItems": 2}, [1, 1]),
    ({"allOf": [{"properties": {"a": {"type": "integer"}}}, {"properties": {"b": {"type": "boolean"}}}]},
     {"a": 1, "b": True}),
])
def test_example_values_satisfy_common_schemas(schema: dict[str, Any], value: Any) -> None:
    assert example(schema, "seed") == value
    jsonschema.validate(value, schema)
