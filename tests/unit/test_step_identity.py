"""IdentityStep: with AIOS_AUTH=required a worker acts only on syscalls signed with their agent's credential.
A refusal is counted and dead-lettered but neither stored nor answered (its sender is not who it claims), so a
forged copy can neither pre-empt nor spoil the genuine answer."""

from __future__ import annotations

import time

import pytest

from aios.state import keys
from aios.testing import Harness, StubService
from aios.wire.syscalls import ToolSyscall
from tests.unit.conftest import MakeHarness, MakeSettings


def refused_as(h: Harness, syscall_id: str, code: str, *, answered: bool = False) -> str:
    """Refused (counted, dead-lettered, nothing stored); answered, sealed, only when its own agent sent it."""
    if answered:
        reply = h.reply(syscall_id)
        assert reply is not None and reply.error is not None and reply.error.code == code, reply
    else:
        assert h.sealed_replies(syscall_id) == []
    assert h.stored(syscall_id) is None
    assert h.count(keys.STATS_REJECTED, code) == 1
    dead = h.deadletters()[0]
    assert dead["code"] == code and dead["syscall_id"] == syscall_id
    return str(dead["error"])


@pytest.fixture
def service() -> StubService:
    return StubService()


@pytest.fixture
def h(harness: MakeHarness, service: StubService) -> Harness:
    return harness("tool", service)


def test_a_signed_syscall_runs(h: Harness, service: StubService) -> None:
    syscall = h.sdk.tool_syscall("noop")
    assert h.run(syscall).result == {"ran": syscall.id}  # type: ignore[union-attr]
    assert service.calls == [(syscall.id, None)]


def test_unsigned_is_refused(h: Harness, service: StubService) -> None:
    syscall = h.sdk.tool_syscall("noop")
    h.execute(h.payload(syscall, secret=None))
    assert "is not signed" in refused_as(h, syscall.id, "unsigned")
    assert service.calls == []


def test_altered_after_signing_is_forged(h: Harness, service: StubService) -> None:
    syscall = h.sdk.tool_syscall("echo", {"text": "pay 1 euro"})
    payload = h.payload(syscall)
    payload["arguments"] = {"text": "pay 1000 euros"}
    h.execute(payload)
    assert "altered or signed with another credential" in refused_as(h, syscall.id, "forged")
    assert service.calls == []


def test_signed_with_another_agents_secret_is_forged(h: Harness) -> None:
    other = h.credential("mallory")
    syscall = h.sdk.tool_syscall("noop")
    h.execute(h.payload(syscall, secret=other))
    refused_as(h, syscall.id, "forged")


def test_a_syscall_from_the_future_is_forged(h: Harness) -> None:
    syscall = h.sdk.tool_syscall("noop").model_copy(update={"created_at": time.time() + 3600})
    h.execute(syscall)
    assert "in the future" in refused_as(h, syscall.id, "forged")


def test_an_agent_without_credential_is_unknown(h: Harness) -> None:
    syscall = ToolSyscall(agent_id="nobody", tool="noop")
    h.execute(h.payload(syscall, secret="ab" * 32))
    assert "aios agent create nobody" in refused_as(h, syscall.id, "unknown_agent")


def test_a_revoked_credential_is_refused(h: Harness) -> None:
    h.redis.hset(keys.agent(h.agent_id), "revoked", 1)
    syscall = h.sdk.tool_syscall("noop")
    h.execute(syscall)
    refused_as(h, syscall.id, "revoked", answered=True)  # the signature holds: its agent is told why


def test_an_expired_credential_is_refused(h: Harness) -> None:
    h.redis.hset(keys.agent(h.agent_id), "expires_at", time.time() - 1)
    syscall = h.sdk.tool_syscall("noop")
    h.execute(syscall)
    refused_as(h, syscall.id, "credential_expired", answered=True)


def test_a_forged_copy_does_not_preempt_the_genuine_answer(h: Harness, service: StubService) -> None:
    syscall = h.sdk.tool_syscall("noop")
    h.execute(h.payload(syscall, secret=None))  # an attacker's unsigned copy, with the genuine id
    h.execute(syscall)
    answer = h.stored(syscall.id)
    assert answer is not None and answer.status.value == "ok" and len(service.calls) == 1
    assert [r.status.value for r in h.replies(syscall.id)] == ["ok"]


def test_with_auth_off_unsigned_runs(harness: MakeHarness, make_settings: MakeSettings) -> None:
    service = StubService()
    h = harness("tool", service, settings=make_settings(auth="off"))
    syscall = ToolSyscall(agent_id="anyone", tool="noop")
    h.execute(h.payload(syscall, secret=None))
    assert h.reply(syscall.id, "anyone").status.value == "ok"  # type: ignore[union-attr]


def test_every_answer_is_sealed_with_the_agents_key(h: Harness) -> None:
    from aios.wire.errors import AuthError
    from aios.wire.seal import open_reply

    syscall = h.sdk.tool_syscall("noop")
    h.execute(syscall)
    [sealed] = h.sealed_replies(syscall.id)
    assert open_reply(sealed, h.secret, syscall.id)  # the agent's key opens it
    with pytest.raises(AuthError):
        open_reply(sealed, h.credential("mallory"), syscall.id)  # another agent's key does not
    with pytest.raises(AuthError):
        open_reply(sealed, h.secret, "another-id")  # nor is it an answer to another syscall


def test_no_key_is_stored_in_the_kernels_state(h: Harness) -> None:
    record = h.redis.hgetall(keys.agent(h.agent_id))
    assert h.secret.encode() not in b"".join([*record.keys(), *record.values()])
    assert all(h.secret.encode() not in (h.redis.dump(k) or b"") for k in h.redis.scan_iter())
