"""The OpenAI-compatible gateway on a real kernel (the local model, the embedding model), driven by the unmodified
``openai`` client: each request must arrive as a syscall of the agent whose key is the bearer token."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
import redis

from aios.gateway.server import create_app
from aios.ops.embedded import LocalKernel
from aios.policy.identity import Credentials
from aios.settings import Settings
from aios.state import keys
from tests.conftest import BROKERS, make_broker_settings

pytestmark = pytest.mark.integration

CALC = {"type": "function", "function": {"name": "calculator", "description": "Evaluate arithmetic",
                                         "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                                                        "required": ["expression"]}}}
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
ASK = [{"role": "user", "content": "What is the capital of France?"}]


@dataclass
class Gateway:
    kernel: LocalKernel
    url: str
    keys: dict[str, str]

    @property
    def settings(self) -> Settings:
        return self.kernel.settings

    def client(self, agent: str = "alice", **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=self.keys[agent], max_retries=0, **kwargs)

    def calls(self, agent: str, resource: str = "llm") -> int:
        """How many syscalls of ``agent`` the kernel answered on ``resource`` (its own accounting)."""
        state = redis.Redis.from_url(self.settings.state_redis_url())
        return int(float(state.hget(keys.agent_stats(resource), f"{agent}:n") or 0))


def serve(settings: Settings) -> tuple[Any, str]:
    import uvicorn

    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline, "the gateway did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module", params=BROKERS)
def gw(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    settings = make_broker_settings(request.param, tmp_path_factory.mktemp(f"gateway-{request.param}"), request,
                                    quotas={"agent:limited": {"rpm": 1}}, quota_mode="fail", llm_n_ctx=1024)
    with LocalKernel(settings, resources=["llm", "storage", "tool"]) as lk:  # tool: it records cancels
        creds = Credentials(lk.settings)
        issued = {a: creds.create(a, write_file=False).key for a in ("alice", "bob", "limited")}
        issued["low"] = creds.create("low", max_priority=2, write_file=False).key
        server, url = serve(lk.settings)
        try:
            yield Gateway(lk, url, issued)
        finally:
            server.should_exit = True


def test_a_chat_completion_is_a_syscall_of_the_keys_agent(gw: Gateway) -> None:
    alice, bob = gw.calls("alice"), gw.calls("bob")
    reply = gw.client("alice").chat.completions.create(model="default", messages=ASK, max_tokens=16)
    assert reply.id.startswith("chatcmpl-") and reply.object == "chat.completion"
    assert isinstance(reply.choices[0].message.content, str) and reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    u = reply.usage
    assert u is not None and u.prompt_tokens > 5 and 0 < u.completion_tokens <= 16
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert (gw.calls("alice"), gw.calls("bob")) == (alice + 1, bob)


def test_bad_or_missing_keys_are_401_in_openai_format(gw: Gateway) -> None:
    alice = gw.keys["alice"]
    tampered = alice[:-1] + ("1" if alice.endswith("0") else "0")  # one character off, never the key itself
    for key in (secrets.token_hex(32), "not-a-key", tampered):
        with pytest.raises(openai.AuthenticationError) as err:
            openai.OpenAI(base_url=gw.url, api_key=key, max_retries=0).chat.completions.create(
                model="default", messages=ASK, max_tokens=4)
        assert err.value.status_code == 401
        assert err.value.body["type"] == "authentication_error"  # type: ignore[index]
    r = httpx.get(f"{gw.url}/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"


def test_a_revoked_agents_key_is_refused(gw: Gateway) -> None:
    key = Credentials(gw.settings).create("gone", write_file=False).key
    client = openai.OpenAI(base_url=gw.url, api_key=key, max_retries=0)
    assert client.models.list().data
    Credentials(gw.settings).revoke("gone")
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="default", messages=ASK, max_tokens=4)


def test_unsupported_fields_are_400_naming_them(gw: Gateway) -> None:
    client = gw.client()
    before = gw.calls("alice")
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="default", messages=ASK, max_tokens=4, logit_bias={"50256": -100})
    assert "logit_bias" in err.value.message and err.value.body["param"] == "logit_bias"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="default", messages=ASK, max_tokens=4, n=2)
    assert "n" == err.value.body["param"]  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=ASK, max_tokens=4)
    assert gw.calls("alice") == before  # nothing reached the kernel


def test_models_are_the_kernels_llm_cores(gw: Gateway) -> None:
    ids = [m.id for m in gw.client().models.list().data]
    assert "default" in ids
    assert gw.client().models.retrieve("default").id == "default"


def test_embeddings_come_from_the_kernels_model_as_the_agents_syscall(gw: Gateway) -> None:
    before = gw.calls("bob", "storage")
    got = gw.client("bob").embeddings.create(model="all-MiniLM-L6-v2", input=["a cat", "a kitten", "tax law"])
    vectors = [d.embedding for d in got.data]  # the client asked for base64 and decoded it
    assert [len(v) for v in vectors] == [384] * 3
    assert all(abs(sum(x * x for x in v) - 1.0) < 1e-3 for v in vectors)
    near, far = (sum(a * b for a, b in zip(vectors[0], v, strict=True)) for v in vectors[1:])
    assert near > far
    assert got.usage.prompt_tokens > 0
    r = httpx.post(f"{gw.url}/embeddings", headers={"Authorization": f"Bearer {gw.keys['bob']}"},
                   json={"input": "a cat", "encoding_format": "base64"})
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(vectors[0], abs=1e-6)
    assert gw.calls("bob", "storage") == before + 2


def test_json_output_and_tool_calls(gw: Gateway) -> None:
    client = gw.client()
    reply = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Where is the Eiffel tower? Answer in JSON."}],
        max_tokens=48, response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}})
    assert isinstance(json.loads(reply.choices[0].message.content or "")["city"], str)
    reply = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "What is 17 * 23? Use the calculator."}],
        max_tokens=64, tools=[CALC], tool_choice="required")  # type: ignore[list-item]
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "calculator" and "expression" in json.loads(call.function.arguments)
    # The tool's result goes back as a tool message; the model answers in text.
    follow = client.chat.completions.create(model="default", max_tokens=24, messages=[
        {"role": "user", "content": "What is 17 * 23? Use the calculator."},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "391"}])
    assert follow.choices[0].message.content and follow.choices[0].message.tool_calls is None


def test_a_stream_is_the_reply_in_pieces_with_usage_last(gw: Gateway) -> None:
    client = gw.client()
    whole = client.chat.completions.create(model="default", messages=ASK, max_tokens=32)
    before = gw.calls("alice")
    chunks = list(client.chat.completions.create(model="default", messages=ASK, max_tokens=32, stream=True,
                                                 stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == whole.choices[0].message.content
    assert len(pieces) >= 3, "the text should come in pieces, as it is decoded"
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert len({c.id for c in chunks}) == 1
    assert gw.calls("alice") == before + 1


def test_the_async_client_streams_many_at_once(gw: Gateway) -> None:
    prompts = [f"Count from {i} to {i + 5}." for i in range(8)]

    async def run() -> tuple[list[str], list[str]]:
        client = openai.AsyncOpenAI(base_url=gw.url, api_key=gw.keys["bob"], max_retries=0)

        async def streamed(p: str) -> str:
            out = []
            async for c in await client.chat.completions.create(model="default", max_tokens=24, stream=True,
                                                                messages=[{"role": "user", "content": p}]):
                out.append(c.choices[0].delta.content or "" if c.choices else "")
            return "".join(out)

        async def whole(p: str) -> str:
            r = await client.chat.completions.create(model="default", max_tokens=24,
                                                     messages=[{"role": "user", "content": p}])
            return r.choices[0].message.content or ""

        got = await asyncio.gather(*(streamed(p) for p in prompts))
        want = await asyncio.gather(*(whole(p) for p in prompts))
        await client.close()
        return list(got), list(want)

    got, want = asyncio.run(run())
    assert got == want and all(got)


def test_the_priority_header_lowers_never_raises(gw: Gateway) -> None:
    """agent 'low' may use priorities 0..2 only (its broker user cannot even publish higher): a header asking
    for 9 is capped at 2 and the call goes through; a malformed one is a 400."""
    client = gw.client("low")
    for header in ("9", "0"):
        reply = client.chat.completions.create(model="default", messages=ASK, max_tokens=4,
                                               extra_headers={"X-AIOS-Priority": header})
        assert reply.choices[0].message.content is not None
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="default", messages=ASK, max_tokens=4,
                                       extra_headers={"X-AIOS-Priority": "high"})


def test_a_quota_in_fail_mode_is_429_with_retry_after(gw: Gateway) -> None:
    client = gw.client("limited")
    client.chat.completions.create(model="default", messages=ASK, max_tokens=4)
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="default", messages=ASK, max_tokens=4)
    assert err.value.status_code == 429 and err.value.body["code"] == "quota_exceeded"  # type: ignore[index]
    assert int(err.value.response.headers["Retry-After"]) >= 1


def test_a_client_that_disconnects_cancels_its_syscall(gw: Gateway) -> None:
    """The generation stops (the kernel counts it cancelled) instead of running to its max_tokens for nobody."""
    state = redis.Redis.from_url(gw.settings.state_redis_url())

    def cancelled() -> int:
        return int(state.hget(keys.STATS_DONE, "llm:cancelled") or 0)

    def wait_for(count: int) -> bool:
        deadline = time.time() + 20
        while time.time() < deadline:
            if cancelled() >= count:
                return True
            time.sleep(0.1)
        return False

    long = {"model": "default", "max_tokens": 600, "temperature": 0.8, "seed": 3,
            "messages": [{"role": "user", "content": "Write a very long story about a dragon."}]}
    headers = {"Authorization": f"Bearer {gw.keys['alice']}"}
    before = cancelled()
    with httpx.stream("POST", f"{gw.url}/chat/completions", json={**long, "stream": True}, headers=headers,
                      timeout=60) as r:
        for line in r.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                break  # the first piece of text: then hang up
    assert wait_for(before + 1), "the streamed generation should have been cancelled"
    with pytest.raises(httpx.ReadTimeout):  # a plain request whose client gives up after 1 s
        httpx.post(f"{gw.url}/chat/completions", json=long, headers=headers, timeout=1.0)
    assert wait_for(before + 2), "the plain request's generation should have been cancelled"
