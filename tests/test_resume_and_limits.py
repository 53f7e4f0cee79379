"""A redelivered generation resumes from its last checkpoint (the real model, a worker SIGKILLed mid-generation),
with the output of an uninterrupted run; a tool past its syscall's time limit is killed (the sandboxed python
tool) or abandoned (a thread), and answered once, never run again."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from aios.ops.embedded import LocalKernel
from aios.state import keys
from aios.state.context import load_from
from tests.conftest import BROKERS, authorized, await_reply, make_broker_settings

pytestmark = pytest.mark.integration
STORY = "Write a long story about a dragon who learns to bake bread. Give every character a name."


def _done(state: redis.Redis, field: str) -> int:
    return int(state.hget(keys.STATS_DONE, field) or 0)


@pytest.mark.parametrize("broker", BROKERS)
def test_a_redelivered_generation_resumes_from_its_checkpoint(broker: str, tmp_path: Path,
                                                               request: pytest.FixtureRequest) -> None:
    settings = make_broker_settings(broker, tmp_path, request, llm_batch_size=1, llm_n_ctx=1024, llm_n_threads=1,
                                    llm_checkpoint_tokens=16, lease_s=2, lease_renew_s=0.5)
    with LocalKernel(settings, resources=["llm"]) as lk, authorized(lk.settings, "storyteller") as k:
        state = redis.Redis.from_url(lk.settings.state_redis_url())
        alone = k.call(k.llm_syscall(STORY, max_tokens=160, timeout_s=300))  # uninterrupted, greedy
        assert alone["usage"]["completion_tokens"] > 48, "the story must be long enough to checkpoint and resume"
        pending = k.submit(k.llm_syscall(STORY, max_tokens=160, timeout_s=300))
        deadline, checkpoint = time.monotonic() + 120, None
        while checkpoint is None or len(checkpoint.tokens) < 32:
            assert time.monotonic() < deadline, "no checkpoint of 32 tokens was stored"
            assert not state.exists(keys.result(pending.id)), "it finished before it could be killed"
            checkpoint = load_from(state.hgetall(keys.context(pending.id)))
            time.sleep(0.02)
        lk.kill_worker("llm")
        assert not state.exists(keys.result(pending.id))
        lk.start_worker("llm")  # the only LLM worker: once up, it finds the lapsed lease (Redis) or the redelivery
        resumed = k.wait(pending)
        assert resumed["content"] == alone["content"]  # token for token the uninterrupted output
        assert resumed["usage"] == alone["usage"]
        assert _done(state, "llm:resumed") == 1 and _done(state, "llm:preempted") == 0
        assert _done(state, "llm:ok") == 2
        assert not state.exists(keys.context(pending.id))  # the answer took the checkpoint with it


@pytest.mark.parametrize("broker", BROKERS)
def test_a_tool_past_its_limit_is_stopped_and_answered_once(broker: str, tmp_path: Path,
                                                            request: pytest.FixtureRequest) -> None:
    settings = make_broker_settings(broker, tmp_path, request, worker_concurrency=2, sandbox_degraded=True)
    with LocalKernel(settings, resources=["tool"]) as lk, authorized(lk.settings, "overrunner") as k:
        state = redis.Redis.from_url(lk.settings.state_redis_url())
        sandboxed = k.submit(k.tool_syscall("python", {"code": "import time\ntime.sleep(25)\nprint('late')",
                                                       "timeout_s": 25}, timeout_s=3))
        thread = k.submit(k.tool_syscall("sleep", {"seconds": 8}, timeout_s=2))
        for pending, said in ((sandboxed, "python tool was killed"), (thread, "was stopped after")):
            response = k.wait_response(pending)
            assert response.error is not None and response.error.code == "deadline_exceeded"
            assert said in response.error.message
            # Answered just past its deadline (within the SDK's 2 s grace), not when the tool would have ended.
            assert response.timing.finished_at < pending.syscall.deadline + 2.0
        time.sleep(8)  # the abandoned sleep's thread has returned by now: its result goes nowhere
        for p in (sandboxed, thread):
            assert (k._inbox.get(p.id, 0.2) if k._inbox is not None  # type: ignore[union-attr]
                    else await_reply(lk.settings, k.agent_id, p.id, 0.2)) is None  # answered once
        assert _done(state, "tool:ok") == 0 and _done(state, "tool:error") == 2  # never ran again
        assert k.call_tool("calculator", expression="6 * 7")["value"] == 42  # the worker serves on
