"""The kernel end to end on each real broker: round trips, concurrency, timeouts, and every kind of bad input."""

from __future__ import annotations

import asyncio
import json
import pickle
import time
import uuid
from pathlib import Path

import pytest
import redis

from aios import (
    AccessDenied,
    AsyncKernel,
    InvalidSyscall,
    InvalidToolArguments,
    Kernel,
    NotFound,
    PayloadTooLarge,
    SyscallTimeout,
)
from aios.ops.embedded import LocalKernel
from aios.policy.identity import Credentials, sign
from aios.state import keys
from aios.wire.seal import open_reply
from aios.wire.syscalls import Response, Status, ToolSyscall
from tests.conftest import authorized, await_reply, base_settings, publish_raw

pytestmark = pytest.mark.integration


@pytest.fixture
def sdk(kernel: LocalKernel):
    with authorized(kernel.settings, f"agent-{uuid.uuid4().hex[:8]}") as k:
        yield k


def _state(kernel: LocalKernel) -> redis.Redis:
    return redis.Redis.from_url(kernel.settings.state_redis_url())


def _reply(kernel: LocalKernel, agent_id: str, syscall_id: str, timeout_s: float = 15) -> Response:
    got = await_reply(kernel.settings, agent_id, syscall_id, timeout_s)
    assert got is not None, f"no reply for {syscall_id}"
    return Response.model_validate_json(open_reply(got, None, syscall_id))


def _refused_unanswered(kernel: LocalKernel, agent_id: str, sid: str, code: str, before: int) -> dict:
    """The message was refused (counted under ``code``, dead-lettered) and nobody was answered: its sender is not
    verified, and a refusal it provoked must not reach the agent whose syscall id it names. The dead letter."""
    state = _state(kernel)
    deadline = time.time() + 15
    while int(state.hget(keys.STATS_REJECTED, code) or 0) == before:
        assert time.time() < deadline, f"the {code} refusal was never counted"
        time.sleep(0.05)
    assert await_reply(kernel.settings, agent_id, sid, 0.3) is None
    letters = [json.loads(x) for x in state.lrange(keys.DEADLETTER, 0, 50)]
    return next(e for e in letters if e["syscall_id"] == sid and e["code"] == code)


def test_tool_round_trip_reports_timing(sdk: Kernel) -> None:
    pending = sdk.submit(sdk.tool_syscall("calculator", {"expression": "17 * 23"}))
    response = sdk.wait_response(pending)
    assert response.status is Status.OK
    assert response.result == {"expression": "17 * 23", "value": 391}
    t = response.timing
    assert t.created_at <= t.started_at <= t.finished_at
    assert 0 <= t.queue_wait_s < 10 and 0 <= t.service_s < 10
    assert response.worker.startswith("tool-")


def test_invalid_tool_arguments_name_the_field(sdk: Kernel) -> None:
    with pytest.raises(InvalidToolArguments, match=r"arguments\.expression: 5 is not of type 'string'"):
        sdk.call_tool("calculator", expression=5)


def test_memory_and_files_per_agent(sdk: Kernel, kernel: LocalKernel) -> None:
    sdk.memory_put("plan", {"steps": [1, 2]})
    assert sdk.memory_get("plan") == {"steps": [1, 2]}
    assert "plan" in sdk.memory_list()
    sdk.write_file("notes/a.txt", "hello")
    assert sdk.read_file("notes/a.txt") == "hello"
    with authorized(kernel.settings, "someone-else") as other:
        with pytest.raises(NotFound):
            other.memory_get("plan")
        with pytest.raises(NotFound):
            other.read_file("notes/a.txt")
    with pytest.raises(AccessDenied):
        sdk.read_file("../someone-else/files/x")


async def test_async_many_in_flight(kernel: LocalKernel) -> None:
    Credentials(kernel.settings).create("async-agent")
    async with AsyncKernel("async-agent", settings=kernel.settings) as k:
        results = await asyncio.gather(*(k.call_tool("echo", text=str(i)) for i in range(64)))
        assert [r["text"] for r in results] == [str(i) for i in range(64)]
        await k.memory_put("n", 64)
        assert await k.memory_get("n") == 64


def test_sync_gather_runs_concurrently(sdk: Kernel) -> None:
    """Syscalls in flight together run together: with two worker threads, sleeps overlap in time."""
    out = sdk.gather([sdk.tool_syscall("sleep", {"seconds": 0.3}) for _ in range(4)])
    assert [o["slept_s"] for o in out] == [0.3] * 4
    pendings = [sdk.submit(sdk.tool_syscall("sleep", {"seconds": 0.3})) for _ in range(4)]
    spans = sorted((r.timing.started_at, r.timing.finished_at) for r in map(sdk.wait_response, pendings))
    assert any(b_start < a_end for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False)), spans


def test_timeout_raises_typed_error_that_says_what_to_do(sdk: Kernel) -> None:
    # The worker stops the tool at the syscall's deadline, or (on a loaded machine) dequeues the syscall after its
    # deadline and refuses to start it, or the SDK stops waiting first: all are SyscallTimeout and say what to do.
    with pytest.raises(SyscallTimeout, match=r"aios status|raise timeout_s"):
        sdk.call_tool("sleep", seconds=5, timeout_s=0.3)


def test_oversized_payload_refused_by_sdk(sdk: Kernel) -> None:
    with pytest.raises(PayloadTooLarge, match="AIOS_MAX_PAYLOAD_BYTES"):
        sdk.call_tool("echo", text="x" * 2_000_000)


def _envelope(syscall: object) -> bytes:
    return json.dumps([[syscall], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]).encode()


def _valid_tool_syscall(**over: object) -> dict:
    sc = ToolSyscall(agent_id="raw-client", tool="echo", arguments={"text": "hi"}).model_dump(mode="json")
    sc.update(over)
    return sc


BAD_INPUTS = {
    "malformed": lambda sid: (b'[[{"v": 1, "kind": "tool", ', "application/json", "aios.tool"),
    "content_type": lambda sid: (pickle.dumps(([{"id": sid}], {}, {})), "application/x-python-serialize", "aios.tool"),
    "invalid_syscall": lambda sid: (_envelope(_valid_tool_syscall(id=sid, priority="urgent")), "application/json", "aios.tool"),
    "unknown_kind": lambda sid: (_envelope(_valid_tool_syscall(id=sid, kind="teleport")), "application/json", "aios.tool"),
    "payload_too_large": lambda sid: (_envelope(_valid_tool_syscall(id=sid, arguments={"text": "x" * 1_100_000})),
                                      "application/json", "aios.tool"),
    "unknown_task": lambda sid: (_envelope(_valid_tool_syscall(id=sid)), "application/json", "aios.rm_rf"),
    "broker_feature": lambda sid: (_envelope(_valid_tool_syscall(id=sid)), "application/json", "aios.tool",
                                   {"eta": "2099-01-01T00:00:00+00:00"}),
}


@pytest.mark.parametrize("code", sorted(BAD_INPUTS))
def test_bad_input_is_refused_with_a_clear_dead_letter_and_worker_keeps_serving(
    code: str, kernel: LocalKernel, sdk: Kernel
) -> None:
    state = _state(kernel)
    rejected_before = int(state.hget(keys.STATS_REJECTED, code) or 0)
    sid = uuid.uuid4().hex
    body, content_type, task, *headers = BAD_INPUTS[code](sid)
    publish_raw(kernel.settings, body, content_type=content_type, task=task, message_id=sid,
                headers=headers[0] if headers else None)
    letter = _refused_unanswered(kernel, "raw-client", sid, code, rejected_before)
    assert len(letter["error"]) > 20  # says what is wrong, not just a code
    # the worker is alive and serving
    assert sdk.call_tool("calculator", expression="1 + 1")["value"] == 2
    assert all(kernel.alive().values())


def test_syscall_of_wrong_kind_on_queue_is_refused(kernel: LocalKernel) -> None:
    sid = uuid.uuid4().hex
    memory = {"v": 1, "id": sid, "agent_id": "raw-client", "priority": 5, "timeout_s": 30,
              "created_at": time.time(), "kind": "memory", "op": "list"}
    memory["sig"] = sign(memory, Credentials(kernel.settings).create("raw-client", write_file=False).secret)
    before = int(_state(kernel).hget(keys.STATS_REJECTED, "wrong_queue") or 0)
    publish_raw(kernel.settings, _envelope(memory), content_type="application/json", task="aios.tool", message_id=sid)
    # Not answered, though signed: the queue is the publisher's choice, and a copy replayed onto another queue
    # must not fail the genuine syscall waiting on its own.
    letter = _refused_unanswered(kernel, "raw-client", sid, "wrong_queue", before)
    assert "aios.storage" in letter["error"]


def test_a_syscall_past_its_deadline_is_answered_once_and_leaves_no_snapshot(kernel: LocalKernel) -> None:
    """Reached after its deadline (say, a suspended generation requeued behind a long queue): the caller gets
    deadline_exceeded, and the syscall's snapshot and retry count go with the answer, as for any answer."""
    sid = uuid.uuid4().hex
    late = _valid_tool_syscall(id=sid, created_at=time.time() - 10, timeout_s=1)
    late["sig"] = sign(late, Credentials(kernel.settings).create("raw-client", write_file=False).secret)
    state = _state(kernel)
    state.hset(keys.context(sid), mapping={"backend": "llamacpp"})
    state.set(keys.attempts(sid), 1)
    publish_raw(kernel.settings, _envelope(late), content_type="application/json", task="aios.tool", message_id=sid)
    response = _reply(kernel, "raw-client", sid)
    assert response.error is not None and response.error.code == "deadline_exceeded"
    assert "raise timeout_s" in response.error.message
    assert state.get(keys.result(sid)) is not None  # stored: a redelivery is not run again
    assert not state.exists(keys.context(sid)) and not state.exists(keys.attempts(sid))


def test_redelivered_answered_syscall_is_not_rerun(kernel: LocalKernel, sdk: Kernel) -> None:
    """Idempotency: a delivery of an id already answered (a broker redelivery, a replay) does not run again, gets
    no second reply, and is not counted as a refusal nor dead-lettered: it is a harmless duplicate."""
    syscall = sdk.memory_syscall("put", "counter", 1)
    sdk.call(syscall)
    state = _state(kernel)
    done_before = int(state.hget(keys.STATS_DONE, "memory:ok") or 0)
    rejected_before = sum(int(v) for v in state.hgetall(keys.STATS_REJECTED).values())
    dead_before = state.llen(keys.DEADLETTER)
    sdk._publish(syscall)  # the same message again, as a broker redelivery or a replay would
    deadline = time.time() + 10
    while int(state.hget(keys.STATS_DONE, "memory:duplicate") or 0) < 1:
        assert time.time() < deadline, "the duplicate delivery was never seen by the worker"
        time.sleep(0.05)
    assert state.llen(keys.reply(sdk.agent_id, syscall.id)) == 0  # no second reply
    assert int(state.hget(keys.STATS_DONE, "memory:ok") or 0) == done_before  # not run again
    assert sum(int(v) for v in state.hgetall(keys.STATS_REJECTED).values()) == rejected_before
    assert state.llen(keys.DEADLETTER) == dead_before


def test_invalid_syscall_fails_on_the_client_before_sending(sdk: Kernel) -> None:
    with pytest.raises(ValueError, match="priority"):
        sdk.call_tool("noop", priority=11)
    with pytest.raises(ValueError, match="agent_id"):
        Kernel("../etc", settings=sdk.settings)


def test_a_replay_after_the_answer_expired_finds_its_deadline_passed(tmp_path: Path) -> None:
    """The idempotency record outlives every deadline (timeout_s <= AIOS_MAX_SYSCALL_TIMEOUT_S < the visibility
    timeout <= AIOS_RESULT_TTL_S): a captured write replayed once its answer has expired is past its deadline and
    does not run again. Before the cap, a write signed with a long timeout_s ran a second time here."""
    # Service time is enforced: room for the tool worker's first write (about 2 s here, its storage starting up).
    settings = base_settings(tmp_path, result_ttl_s=5, visibility_timeout_s=5, max_syscall_timeout_s=4,
                             default_timeout_s=4)
    with LocalKernel(settings, resources=["tool"]) as lk, authorized(lk.settings, "replayer") as k:
        state = _state(lk)
        write = k.tool_syscall("write_file", {"path": "r.txt", "content": "x"})
        assert k.call(write)["version"] == 1
        deadline = time.time() + 15
        while state.exists(keys.result(write.id)):
            assert time.time() < deadline, "the answer never expired"
            time.sleep(0.1)
        response = k.wait_response(k.submit(write))  # the captured message again
        assert response.error is not None and response.error.code == "deadline_exceeded"
        assert k.call_tool("write_file", path="r.txt", content="y")["version"] == 2  # it did not run again
        with pytest.raises(InvalidSyscall, match="AIOS_MAX_SYSCALL_TIMEOUT_S"):  # nor may a longer deadline
            k.call(k.tool_syscall("noop").model_copy(update={"timeout_s": 60.0}))
