"""LoadStep: one round trip reads what the next steps need: answered already?, the agent's credential, and a
suspended generation's snapshot (LLM syscalls only)."""

from __future__ import annotations

from aios.state import keys
from aios.state.context import ContextStore, Snapshot
from aios.testing import Harness, StubService
from aios.wire.syscalls import Syscall
from aios.worker.call import Call
from aios.worker.steps.decode import DecodeStep
from aios.worker.steps.load import LoadStep
from tests.unit.conftest import MakeHarness, MakeSettings


def loaded(h: Harness, syscall: Syscall) -> Call:
    call = Call(message_id=syscall.id, args=(h.payload(syscall),), kwargs={}, worker="w")
    DecodeStep(h.runtime).before(call)
    LoadStep(h.runtime).before(call)
    return call


def test_a_fresh_syscall_is_not_answered_and_brings_its_agents_credential(harness: MakeHarness) -> None:
    h = harness("tool", StubService())
    call = loaded(h, h.sdk.tool_syscall("noop"))
    assert call.answered is False
    assert int(call.agent_record[b"gen"]) >= 1 and b"secret" not in call.agent_record
    assert call.snapshot is None


def test_a_stored_answer_marks_it_answered(harness: MakeHarness) -> None:
    h = harness("tool", StubService())
    syscall = h.sdk.tool_syscall("noop")
    h.redis.set(keys.result(syscall.id), "{}")
    assert loaded(h, syscall).answered is True


def test_without_auth_no_credential_is_read(harness: MakeHarness, make_settings: MakeSettings) -> None:
    h = harness("tool", StubService(), settings=make_settings(auth="off"))
    assert loaded(h, h.sdk.tool_syscall("noop")).agent_record == {}


def test_only_llm_syscalls_bring_a_snapshot(harness: MakeHarness) -> None:
    llm, tool = harness("llm", StubService()), harness("tool", StubService())
    chat, noop = llm.sdk.llm_syscall("hi"), tool.sdk.tool_syscall("noop")
    store = ContextStore(llm.redis, 60)
    for s in (chat, noop):
        store.save(s.id, Snapshot("fake", "m", tokens=[1, 2], text="so far", slices=1))
    snap = loaded(llm, chat).snapshot
    assert snap is not None and (snap.tokens, snap.text, snap.slices) == ([1, 2], "so far", 1)
    assert loaded(tool, noop).snapshot is None
