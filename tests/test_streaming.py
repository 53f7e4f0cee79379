"""Token streaming through the kernel with the real local model: the SDK's ``stream=True`` (sync and asyncio),
and time slices that stay invisible to a streaming caller (no text lost or repeated on the wire)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis

from aios.ops.embedded import LocalKernel
from aios.policy.identity import Credentials
from aios.sdk import AsyncKernel, AsyncTokenStream, Kernel, TokenStream
from aios.state import keys
from aios.wire.errors import ConfigError
from tests.conftest import BROKERS, make_broker_settings

pytestmark = pytest.mark.integration

PROMPTS = ["Write a short story about a robot.", "List five fruits.", "Explain rain to a child."]


@pytest.fixture(scope="module", params=BROKERS)
def sliced(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKernel]:
    """One sequence decoded at a time with a 4-token quantum: concurrent syscalls take turns (preemption)."""
    settings = make_broker_settings(request.param, tmp_path_factory.mktemp(f"stream-{request.param}"), request,
                                    llm_n_ctx=1024, llm_batch_size=1, llm_quantum_tokens=4)
    with LocalKernel(settings, resources=["llm"]) as lk:
        Credentials(lk.settings).create("streamer")
        yield lk


def contiguous(chunks: list[tuple[int, str]]) -> bool:
    """Each chunk starts exactly where the one before it ended: nothing repeated, nothing skipped."""
    pos = 0
    for off, text in chunks:
        if off != pos or not text:
            return False
        pos += len(text)
    return True


def test_sync_stream_yields_the_reply_as_it_is_decoded(sliced: LocalKernel) -> None:
    with Kernel("streamer", settings=sliced.settings) as k:
        want = k.llm_chat(PROMPTS[1], max_tokens=24)
        stream = k.llm_chat(PROMPTS[1], max_tokens=24, stream=True)
        assert isinstance(stream, TokenStream)
        pieces = list(stream)
        assert "".join(pieces) == want == stream.result["content"]
        assert len(pieces) >= 3 and contiguous(stream.assembler.chunks)
        assert stream.result["usage"]["completion_tokens"] > 0
        with pytest.raises(ConfigError):  # a service error ends the stream as the call would raise it
            list(k.stream(k.llm_syscall("hi", max_tokens=8, model="no-such-model")))


def test_time_slices_are_invisible_to_streaming_callers(sliced: LocalKernel) -> None:
    state = redis.Redis.from_url(sliced.settings.state_redis_url())

    async def run() -> tuple[list[str], list[AsyncTokenStream]]:
        async with AsyncKernel("streamer", settings=sliced.settings) as ak:
            want = [await ak.llm_chat(p, max_tokens=40) for p in PROMPTS]  # one at a time: nobody waits, no slices
            streams = [await ak.llm_chat(p, max_tokens=40, stream=True) for p in PROMPTS]

            async def drain(s: AsyncTokenStream) -> None:
                async for _ in s:
                    pass

            await asyncio.gather(*(drain(s) for s in streams))
            return want, streams

    preempted = int(state.hget(keys.STATS_DONE, "llm:preempted") or 0)
    want, streams = asyncio.run(run())
    assert int(state.hget(keys.STATS_DONE, "llm:preempted") or 0) - preempted >= 3, "the streams should take turns"
    for w, s in zip(want, streams, strict=True):
        assert s.text == w == s.result["content"]
        assert contiguous(s.assembler.chunks), s.assembler.chunks  # the wire itself repeats and skips nothing
        assert len(s.assembler.chunks) >= 5
