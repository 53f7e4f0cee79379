"""The gateway's pure parts: OpenAI requests -> syscalls, results -> OpenAI replies, kernel errors -> HTTP, and
bearer token -> agent (on the session's embedded Redis)."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest

from aios.gateway.auth import AgentKeys
from aios.gateway.openai_api import ApiError, chat_syscall, completion, from_kernel
from aios.policy.identity import Credentials
from aios.sdk import AsyncKernel
from aios.settings import Settings
from aios.wire.errors import QuotaExceeded, SyscallTimeout
from tests.unit.conftest import MakeSettings

NOWHERE = Settings(broker_url="redis://127.0.0.1:1/0")  # a client that connects to nothing
CALC = {"type": "function", "function": {"name": "calc", "parameters": {
    "type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}
ASK = [{"role": "user", "content": "hi"}]


@pytest.fixture
def kernel() -> Iterator[AsyncKernel]:
    yield AsyncKernel("gw-unit", settings=NOWHERE, credential="ab" * 32)


def syscall(kernel: AsyncKernel, **body: Any) -> Any:
    return chat_syscall(kernel, {"messages": ASK, **body}, model=None, priority=3)


def test_a_plain_request_is_a_text_syscall_with_its_options(kernel: AsyncKernel) -> None:
    s = syscall(kernel, max_completion_tokens=7, temperature=0.5, top_p=0.9, seed=11, stop="END", user="u1",
                n=1, store=False, presence_penalty=0)
    assert (s.output, s.max_tokens, s.temperature, s.top_p, s.seed, s.stop) == ("text", 7, 0.5, 0.9, 11, ("END",))
    assert s.priority == 3 and s.agent_id == "gw-unit" and not s.stream
    assert syscall(kernel, stream=True).stream


@pytest.mark.parametrize(("body", "param"), [
    ({"logit_bias": {"1": 2}}, "logit_bias"), ({"n": 2}, "n"), ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"audio": {"voice": "x"}}, "audio"), ({"response_format": {"type": "grammar"}}, "response_format"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"top_p": 0}, None), ({"stop": ["a", "b", "c", "d", "e"]}, None),
])
def test_what_cannot_be_honoured_is_a_400_naming_it(kernel: AsyncKernel, body: dict[str, Any],
                                                    param: str | None) -> None:
    with pytest.raises(ApiError) as err:
        syscall(kernel, **body)
    assert err.value.status == 400
    if param is not None:
        assert err.value.param == param and param.split("[")[0] in err.value.message


def test_response_formats_and_tools(kernel: AsyncKernel) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert syscall(kernel, response_format={"type": "json_object"}).output == "json"
    s = syscall(kernel, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert (s.output, s.json_schema) == ("json", schema)
    s = syscall(kernel, tools=[CALC])
    assert (s.output, s.tool_choice, s.parallel_tool_calls) == ("tool_call", "auto", True)
    assert s.tools[0].name == "calc" and s.tools[0].parameters == CALC["function"]["parameters"]  # type: ignore[index]
    s = syscall(kernel, tools=[CALC], tool_choice={"type": "function", "function": {"name": "calc"}},
                parallel_tool_calls=False, stream=True)
    assert (s.tool_choice, s.parallel_tool_calls, s.stream) == ("calc", False, False)  # tool calls come whole
    assert syscall(kernel, tools=[CALC], tool_choice="none").output == "text"


def test_tool_results_and_earlier_calls_reach_the_model_as_text(kernel: AsyncKernel) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "calc", "arguments": '{"expression": "1+1"}'}}
    s = chat_syscall(kernel, {"messages": [
        {"role": "developer", "content": [{"type": "text", "text": "be brief"}]}, *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "2"}]}, model=None, priority=5)
    assert [m.role for m in s.messages] == ["system", "user", "assistant", "tool"]
    assert json.loads(s.messages[2].content) == {"name": "calc", "arguments": {"expression": "1+1"}}
    assert s.messages[0].content == "be brief" and s.messages[3].content == "2"


def test_results_become_openai_replies() -> None:
    text = completion("abc", "default", {"content": "hello", "tool_calls": [], "finish_reason": "length",
                                         "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
    assert text["choices"][0]["message"] == {"role": "assistant", "content": "hello", "refusal": None}
    assert text["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert text["choices"][0]["finish_reason"] == "length" and text["id"] == "chatcmpl-abc"
    calls = completion("abc", "default", {"content": None, "finish_reason": "tool_calls", "usage": {},
                                          "tool_calls": [{"name": "calc", "arguments": {"expression": "2"}},
                                                         {"name": "calc", "arguments": {"expression": "3"}}]})
    message = calls["choices"][0]["message"]
    assert message["content"] is None and [json.loads(c["function"]["arguments"]) for c in message["tool_calls"]] \
        == [{"expression": "2"}, {"expression": "3"}]
    assert len({c["id"] for c in message["tool_calls"]}) == 2


def test_kernel_errors_map_to_http() -> None:
    quota = from_kernel(QuotaExceeded("quota 'agent:x': limit of 1 requests per 60 s reached "
                                      "(AIOS_QUOTA_MODE=fail); retry in 41.3 s"))
    assert (quota.status, quota.headers["Retry-After"], quota.body()["error"]["code"]) == (429, "42",
                                                                                          "quota_exceeded")
    assert from_kernel(SyscallTimeout("late")).status == 504


def test_a_token_resolves_to_its_agent_only_while_it_is_current(make_settings: MakeSettings) -> None:
    settings = make_settings(gateway_key_refresh_s=0.05)
    creds = Credentials(settings)
    alice = creds.create("alice", write_file=False).key

    async def run() -> None:
        index = AgentKeys(settings)
        await index.reload()
        bob = creds.create("bob", write_file=False).key  # issued after the index was loaded
        assert (await index.resolve(alice)).id == "alice"  # type: ignore[union-attr]
        await asyncio.sleep(0.06)
        assert (await index.resolve(bob)).id == "bob"  # type: ignore[union-attr]  # a miss reloads
        reloads = index.reloads
        bad = await asyncio.gather(*(index.resolve(secrets.token_hex(32)) for _ in range(20)))
        assert bad == [None] * 20 and index.reloads - reloads == 1  # a flood at once: one reload
        start = time.monotonic()
        for _ in range(3):  # one after another: one reload per refresh interval, each waiting for it
            assert await index.resolve(secrets.token_hex(32)) is None
        assert time.monotonic() - start >= 2 * 0.05 and index.reloads - reloads == 4
        assert await index.resolve("alice") is None and await index.resolve(alice.upper()) is None
        creds.create("alice", write_file=False)  # a new key voids the old one
        await asyncio.sleep(0.06)
        await index.reload()
        assert await index.resolve(alice) is None

    asyncio.run(run())


# -- a client that goes away (aios.gateway.disconnect) ------------------------------------------------------------

class Client:
    """The ASGI receive of one request: its body, then ``http.disconnect`` once :meth:`hang_up` is called."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.sent.append(dict(message))

    def hang_up(self) -> None:
        self.gone.set()


async def test_a_disconnect_cancels_the_watched_work_as_client_gone() -> None:
    from aios.gateway.disconnect import ClientGone, DisconnectWatch

    client, reached = Client(), asyncio.Event()

    async def work() -> str:
        reached.set()
        await asyncio.sleep(30)
        return "never"

    async def request() -> str:
        with DisconnectWatch(client.receive):
            return await work()

    task = asyncio.create_task(request())
    await reached.wait()
    client.hang_up()
    with pytest.raises(ClientGone):
        await task
    assert task.cancelling() == 0  # the cancellation was taken back: the request's task may still answer


async def test_a_watch_that_ended_cancels_nothing_and_other_cancellations_stay_cancellations() -> None:
    from aios.gateway.disconnect import DisconnectWatch

    client = Client()
    with DisconnectWatch(client.receive) as watch:
        assert await asyncio.sleep(0, "answered") == "answered"
    client.hang_up()  # after the answer (uvicorn reports the end of a response as a disconnect too)
    await asyncio.sleep(0.05)  # the watch would have cancelled this task by now
    assert not watch.gone

    async def request() -> None:
        with DisconnectWatch(Client().receive):
            await asyncio.sleep(30)

    task = asyncio.create_task(request())
    await asyncio.sleep(0.01)
    task.cancel()  # not the client: e.g. the server shutting down
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_event_stream_closes_its_iterator_when_the_client_goes_away() -> None:
    from aios.gateway.disconnect import EventStream

    client, closed, first = Client(), asyncio.Event(), asyncio.Event()

    async def events() -> Any:
        try:
            yield "data: 1\n\n"
            first.set()
            await asyncio.sleep(30)
            yield "data: 2\n\n"
        finally:
            closed.set()

    response = asyncio.create_task(EventStream(events())({"type": "http"}, client.receive, client.send))
    await first.wait()
    client.hang_up()
    await asyncio.wait_for(response, 5)  # ends without an error: nobody to answer
    assert closed.is_set()
    assert [m.get("body") for m in client.sent] == [None, b"data: 1\n\n"]
    assert client.sent[0]["status"] == 200 and (b"content-type", b"text/event-stream; charset=utf-8") in \
        client.sent[0]["headers"]


async def test_an_event_stream_sends_every_event_then_ends_the_body() -> None:
    from aios.gateway.disconnect import EventStream

    client = Client()

    async def events() -> Any:
        for i in range(3):
            yield f"data: {i}\n\n"

    await EventStream(events())({"type": "http"}, client.receive, client.send)
    assert [(m.get("body"), m.get("more_body")) for m in client.sent[1:]] == [
        (b"data: 0\n\n", True), (b"data: 1\n\n", True), (b"data: 2\n\n", True), (b"", False)]
