"""Transient backend failures are retried by the kernel (requeue with back-off), then answered exactly once: an
LLM worker on the openai backend in front of a scripted OpenAI-compatible server that fails on purpose."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from aios.ops.embedded import LocalKernel
from aios.state import keys
from aios.wire.errors import BackendError
from tests.conftest import authorized, base_settings
from tests.test_llm_backends import ScriptedServer, completion

pytestmark = pytest.mark.integration
BUSY = (503, {"error": {"message": "overloaded"}})
LIMITED = (429, {"error": {"message": "slow down"}})


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    s = ScriptedServer([])
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture(scope="module")
def llm_kernel(server: ScriptedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKernel]:
    url = f"http://127.0.0.1:{server.httpd.server_address[1]}/v1"
    settings = base_settings(Path(tmp_path_factory.mktemp("retry")), llm_backend="openai", llm_base_url=url,
                             llm_model="m", llm_client_retries=0, retry_max=2, retry_backoff_s=0.2,
                             llm_batch_size=1)
    with LocalKernel(settings, resources=["llm"]) as lk:
        yield lk


def test_transient_failures_are_retried_with_backoff_and_answered_once(server: ScriptedServer,
                                                                       llm_kernel: LocalKernel) -> None:
    state = redis.Redis.from_url(llm_kernel.settings.state_redis_url())
    server.replies[:] = [BUSY, LIMITED, (200, completion({"content": "fine"}))]
    with authorized(llm_kernel.settings, "retry-agent") as k:
        call = k.llm_syscall("hi", "text", max_tokens=4)
        assert k.call(call)["content"] == "fine"
        assert int(state.hget(keys.STATS_DONE, "llm:retried") or 0) == 2
        assert state.llen(keys.reply("retry-agent", call.id)) == 0 and not state.exists(keys.attempts(call.id))
        # Retries spent: the third failure is the answer, and it says how often it was tried.
        server.replies[:] = [BUSY, BUSY, BUSY, (200, completion({"content": "too late"}))]
        with pytest.raises(BackendError, match=r"answered 503.*after 3 attempts"):
            k.llm_chat("hi again", max_tokens=4)
        assert len(server.replies) == 1, "nothing may be tried after the answer"


def test_a_bad_request_is_not_retried(server: ScriptedServer, llm_kernel: LocalKernel) -> None:
    server.replies[:] = [(400, {"error": {"message": "bad"}}), (200, completion({"content": "no"}))]
    with authorized(llm_kernel.settings, "retry-agent2") as k:
        with pytest.raises(BackendError, match="answered 400"):
            k.llm_chat("hi", max_tokens=4)
    assert len(server.replies) == 1
