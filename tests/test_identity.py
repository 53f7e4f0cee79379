"""Agent identity on every worker type: unsigned, forged, replayed, revoked and unknown syscalls are refused,
counted, and nothing runs; a valid credential works; the CLI issues, lists and revokes credentials."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from aios import AuthError, Kernel
from aios.ops.embedded import LocalKernel
from aios.policy.identity import Credentials, sign
from aios.settings import QUEUES
from aios.state import keys
from aios.wire.seal import open_reply
from aios.wire.syscalls import Response
from tests.conftest import authorized, base_settings, publish_raw, run_aios

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKernel]:
    with LocalKernel(base_settings(tmp_path_factory.mktemp("identity"), llm_n_ctx=1024)) as k:
        yield k


# One harmless syscall per worker type, whose effect (if it ran) is visible afterwards.
def _syscall(resource: str, agent: str, marker: str) -> dict[str, Any]:
    base = {"v": 1, "id": uuid.uuid4().hex, "agent_id": agent, "priority": 5, "timeout_s": 30.0,
            "created_at": time.time(), "sig": None}
    if resource == "tool":
        return {**base, "kind": "tool", "tool": "echo", "arguments": {"text": marker}}
    if resource == "storage":
        return {**base, "kind": "memory", "op": "put", "key": marker, "value": 1}
    return {**base, "kind": "llm", "messages": [{"role": "user", "content": marker}], "output": "text",
            "json_schema": None, "tools": [], "max_tokens": 2, "temperature": 0.0, "model": None}


def _send(lk: LocalKernel, resource: str, payload: dict[str, Any], *, refused: str | None = None) -> Response | None:
    """Publish ``payload`` raw; its answer, or (``refused``: the code a refusal is counted under) ``None`` once the
    refusal is counted and no answer came."""
    r = redis.Redis.from_url(lk.settings.state_redis_url())
    before = _rejected(lk, refused) if refused else 0
    body = json.dumps([[payload], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]).encode()
    publish_raw(lk.settings, body, content_type="application/json", task=f"aios.{resource}", queue=QUEUES[resource],
                message_id=payload["id"])
    reply_key = keys.reply(str(payload["agent_id"]), payload["id"])
    if refused:
        deadline = time.time() + 60
        while _rejected(lk, refused) == before:
            assert time.time() < deadline, "the refusal was never counted"
            time.sleep(0.05)
        got = r.blpop([reply_key], timeout=0.5)
        return None if got is None else Response.model_validate_json(open_reply(got[1].decode(), None, payload["id"]))
    got = r.blpop([reply_key], timeout=60)
    assert got is not None
    return Response.model_validate_json(open_reply(got[1].decode(), None, payload["id"]))


def _done(lk: LocalKernel) -> dict[str, int]:
    r = redis.Redis.from_url(lk.settings.state_redis_url())
    return {k.decode(): int(v) for k, v in r.hgetall(keys.STATS_DONE).items()}


def _rejected(lk: LocalKernel, code: str) -> int:
    return int(redis.Redis.from_url(lk.settings.state_redis_url()).hget(keys.STATS_REJECTED, code) or 0)


KIND = {"tool": "tool", "storage": "memory", "llm": "llm"}


@pytest.mark.parametrize("resource", ["tool", "storage", "llm"])
@pytest.mark.parametrize("attack", ["unsigned", "forged", "tampered", "unknown_agent", "revoked", "future"])
def test_refused_on_every_worker_and_nothing_runs(lk: LocalKernel, resource: str, attack: str) -> None:
    store = Credentials(lk.settings)
    agent = f"victim-{resource}-{attack}"
    secret = store.create(agent, write_file=False).secret
    marker = f"m{uuid.uuid4().hex[:8]}"
    payload = _syscall(resource, agent, marker)
    code = attack
    if attack == "forged":
        payload["sig"] = sign(payload, "00" * 32)  # signed with a key that is not the agent's
    elif attack == "tampered":
        payload["sig"] = sign(payload, secret)
        payload["priority"] = 9  # altered after signing
        code = "forged"
    elif attack == "unknown_agent":
        payload["agent_id"] = f"ghost-{uuid.uuid4().hex[:6]}"
        payload["sig"] = sign(payload, secret)
    elif attack == "revoked":
        payload["sig"] = sign(payload, secret)
        store.revoke(agent)
    elif attack == "future":
        payload["created_at"] = time.time() + 3600
        payload["sig"] = sign(payload, secret)
        code = "forged"
    before = _done(lk).get(f"{KIND[resource]}:ok", 0)
    response = _send(lk, resource, payload, refused=code)
    if attack == "revoked":  # its own agent sent it (the signature holds): told why, sealed with its key
        assert response is not None and response.error is not None and response.error.code == code, response
        assert len(response.error.message) > 30
    else:  # not its agent: never answered, so a forger cannot make the agent's call fail
        assert response is None, response
    assert _done(lk).get(f"{KIND[resource]}:ok", 0) == before, "nothing may run"
    if resource == "storage":
        with authorized(lk.settings, agent) as k:
            assert marker not in k.memory_list()


@pytest.mark.parametrize("resource", ["tool", "storage", "llm"])
def test_replayed_syscall_runs_once_and_is_answered_once_on_every_worker(lk: LocalKernel, resource: str) -> None:
    """A captured signed syscall published again after it was answered: not run again, no second reply (the first
    answer stays the answer), counted as a duplicate rather than a refusal."""
    agent = f"victim-{resource}-replayed"
    secret = Credentials(lk.settings).create(agent, write_file=False).secret
    payload = _syscall(resource, agent, f"m{uuid.uuid4().hex[:8]}")
    payload["sig"] = sign(payload, secret)
    first = _send(lk, resource, payload)
    assert first.error is None, first.error  # the genuine one runs
    kind = KIND[resource]
    before = _done(lk)
    body = json.dumps([[payload], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]).encode()
    publish_raw(lk.settings, body, content_type="application/json", task=f"aios.{resource}", queue=QUEUES[resource],
                message_id=payload["id"])
    deadline = time.time() + 30
    while _done(lk).get(f"{kind}:duplicate", 0) <= before.get(f"{kind}:duplicate", 0):
        assert time.time() < deadline, "the replay was never seen"
        time.sleep(0.05)
    assert _done(lk).get(f"{kind}:ok", 0) == before.get(f"{kind}:ok", 0), "nothing may run twice"
    r = redis.Redis.from_url(lk.settings.state_redis_url())
    assert r.llen(keys.reply(agent, payload["id"])) == 0, "no second reply"
    assert _rejected(lk, "replayed") == 0


def test_genuine_agent_works_and_revocation_takes_effect_at_once(lk: LocalKernel) -> None:
    with authorized(lk.settings, "honest") as k:
        assert k.call_tool("echo", text="hi") == {"text": "hi"}
        Credentials(lk.settings).revoke("honest")
        with pytest.raises(AuthError, match="revoked"):
            k.call_tool("echo", text="hi")


def test_expired_credential_is_refused(lk: LocalKernel) -> None:
    Credentials(lk.settings).create("shortlived", expires_in_s=0.5)
    with Kernel("shortlived", settings=lk.settings) as k:
        assert k.memory_list() == []
        time.sleep(0.6)
        with pytest.raises(AuthError, match="expired"):
            k.memory_list()


def test_one_agent_cannot_sign_for_another(lk: LocalKernel) -> None:
    mallory = Credentials(lk.settings).create("mallory", write_file=False).secret
    Credentials(lk.settings).create("alice", write_file=False)
    with Kernel("alice", settings=lk.settings, credential=mallory) as k:
        # Its key is not alice's: the broker refuses the user alice with mallory's password before any worker
        # sees the syscall (and a worker would refuse the signature: test_refused_on_every_worker_and_nothing_runs).
        with pytest.raises(AuthError, match="broker refused agent 'alice'"):
            k.memory_list()


def test_cli_creates_lists_and_revokes(tmp_path: Path, lk: LocalKernel) -> None:
    def aios(*args: str) -> subprocess.CompletedProcess[str]:
        return run_aios(lk, *args)

    made = aios("agent", "create", "cli-agent", "--group", "research")
    assert made.returncode == 0, made.stderr
    path = lk.settings.data_dir / "credentials" / "cli-agent"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with Kernel("cli-agent", settings=lk.settings) as k:
        assert k.call_tool("calculator", expression="2+2")["value"] == 4
    listed = json.loads(aios("agent", "list", "--json").stdout)
    mine = next(a for a in listed if a["agent_id"] == "cli-agent")
    assert mine["groups"] == ["research"] and not mine["revoked"] and "secret" not in mine
    assert aios("agent", "revoke", "cli-agent").returncode == 0
    with Kernel("cli-agent", settings=lk.settings) as k, pytest.raises(AuthError, match="revoked"):
        k.call_tool("calculator", expression="2+2")
    assert aios("agent", "revoke", "nobody-here").returncode == 1


def test_a_replay_or_forgery_never_overwrites_the_real_answer(lk: LocalKernel) -> None:
    """A refused message naming a real syscall id is not answered, and the syscall's stored answer stays."""
    store = Credentials(lk.settings)
    agent = f"owner-{uuid.uuid4().hex[:6]}"
    secret = store.create(agent, write_file=False).secret
    payload = _syscall("tool", agent, "x")
    payload["sig"] = sign(payload, secret)
    first = _send(lk, "tool", payload)
    assert first.error is None
    stored = redis.Redis.from_url(lk.settings.state_redis_url()).get(keys.result(payload["id"]))
    dupes = _done(lk).get("tool:duplicate", 0)
    body = json.dumps([[payload], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]).encode()
    publish_raw(lk.settings, body, content_type="application/json", task="aios.tool", queue=QUEUES["tool"],
                message_id=payload["id"])  # the replay: dropped as a duplicate, no second reply
    deadline = time.time() + 30
    while _done(lk).get("tool:duplicate", 0) == dupes:
        assert time.time() < deadline, "the replay was never seen"
        time.sleep(0.05)
    forged = dict(payload, sig=sign(payload, "00" * 32))
    assert _send(lk, "tool", forged, refused="forged") is None
    assert redis.Redis.from_url(lk.settings.state_redis_url()).get(keys.result(payload["id"])) == stored
