"""ReplyStep: answers last of all (its ``after`` runs after every other step's): stored once, handed to the
caller, counted, and for a syscall that ran, its service and wait added to its agent's record."""

from __future__ import annotations

import time

from aios.state import keys
from aios.testing import Harness, StubService
from aios.worker.call import Call
from aios.worker.steps.reply import ReplyStep
from tests.unit.conftest import MakeHarness


def answered_call(h: Harness, *, ran: bool) -> Call:
    syscall = h.sdk.tool_syscall("noop")
    call = Call(message_id=syscall.id, args=(h.payload(syscall),), kwargs={}, worker="w")
    call.syscall = syscall
    call.verified, call.agent_key = True, h.secret
    for flag in ("ran", "counted"):  # what makes the reply account it: Call.ran, called Call.counted on main
        if hasattr(call, flag):
            setattr(call, flag, ran)
    call.response = call.ok({"done": True})
    return call


def test_an_answer_is_stored_handed_over_counted_and_accounted(harness: MakeHarness) -> None:
    h = harness("tool", StubService())
    call = answered_call(h, ran=True)
    h.redis.set(keys.claim(call.message_id), "token-of-this-delivery", px=10_000)
    ReplyStep(h.runtime).after(call)
    sid = call.message_id
    assert h.stored(sid) == call.response and h.replies(sid) == [call.response]
    assert h.redis.ttl(keys.result(sid)) > 0 and h.redis.ttl(keys.reply(h.agent_id, sid)) > 0
    assert not h.redis.exists(keys.claim(sid))  # the answer takes the claim with it: no key left per syscall
    assert h.count(keys.STATS_DONE, "tool:ok") == 1
    stats = h.redis.hgetall(keys.agent_stats("tool"))
    assert stats[f"{h.agent_id}:n".encode()] == b"1"
    assert f"{h.agent_id}:service_s".encode() in stats and f"{h.agent_id}:wait_s".encode() in stats
    assert h.redis.zscore(keys.attained("tool"), h.agent_id) is not None
    assert h.redis.llen(keys.waits("tool")) == 1


def test_a_second_answer_to_the_same_id_is_not_handed_over(harness: MakeHarness) -> None:
    h = harness("tool", StubService())
    call = answered_call(h, ran=True)
    first = call.response
    ReplyStep(h.runtime).after(call)
    time.sleep(0.001)
    call.response = call.ok({"done": "again"})  # a second copy of a requeued syscall finishing too
    ReplyStep(h.runtime).after(call)
    assert h.replies(call.message_id) == [first] and h.stored(call.message_id) == first
    assert h.count(keys.STATS_DONE, "tool:ok") == 1
    assert h.redis.hget(keys.agent_stats("tool"), f"{h.agent_id}:n") == b"1"


def test_an_answer_without_running_is_not_accounted(harness: MakeHarness) -> None:
    h = harness("tool", StubService())
    call = answered_call(h, ran=False)
    ReplyStep(h.runtime).after(call)
    assert h.replies(call.message_id) == [call.response]
    assert h.redis.exists(keys.agent_stats("tool")) == 0 and h.redis.llen(keys.waits("tool")) == 0


def test_nothing_to_answer_writes_nothing(harness: MakeHarness) -> None:
    h = harness("tool", StubService())
    call = answered_call(h, ran=True)
    call.response = None  # parked, requeued or dropped
    ReplyStep(h.runtime).after(call)
    assert h.replies(call.message_id) == [] and h.redis.dbsize() == 2  # the agent's credential and its set
