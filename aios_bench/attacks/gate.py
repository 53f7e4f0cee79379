"""Attacks on the raw-message gate (:mod:`aios.worker.gate`): mallory publishes messages herself, on her own broker
connection, with the broker features Celery offers any client (``eta``, ``countdown``, ``expires``, callbacks in
the envelope), headers outside the size limit, and junk meant to fill the kernel's dead-letter store.

Each message carries a syscall mallory signed herself (a valid one: only the broker features are hostile), so an
attack that gets past the gate shows up as the syscall's normal answer, or as no answer at all (held or dropped
by Celery out of the kernel's sight)."""

from __future__ import annotations

import json
import time
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from aios.broker.app import make_app
from aios.policy.identity import SIG_FIELD, load_secret, sign
from aios.state import keys
from aios.wire.priority import DEFAULT_PRIORITY, is_redis_url, to_broker
from aios.wire.syscalls import Syscall
from aios_bench.attacks import Arena, Outcome, attack
from aios_bench.attacks.arena import ATTACKER
from aios_bench.attacks.common import EMBED, envelope, publish_as_attacker

WAIT_S = 4.0
"""The timeout_s of the attacks' syscalls: an answer that has not come by then (plus the SDK's grace) never will."""
DEADLETTER_ENTRY_BOUND = 16_384
"""The most bytes one dead letter may keep, whatever was refused (the claim of docs/security.md)."""


# -- mallory's tools: what any client with broker access can do -----------------------------------------------------

def signed(arena: Arena, syscall: Syscall) -> dict[str, Any]:
    """``syscall`` signed with mallory's own credential, as her SDK would sign it."""
    payload = syscall.model_dump(mode="json")
    secret = load_secret(arena.attacker_settings, ATTACKER)
    if secret is not None:
        payload[SIG_FIELD] = sign(payload, secret)
    return payload


def publish_raw(arena: Arena, body: bytes, *, message_id: str, headers: dict[str, Any] | None = None,
                content_type: str = "application/json", queue: str = "aios.tool", task: str = "aios.tool") -> None:
    """Publish ``body`` straight onto a kernel queue, with any headers mallory likes, at the default priority."""
    publish_as_attacker(arena, body, content_type=content_type, task=task, queue=queue, message_id=message_id,
                        headers=headers, priority=to_broker(DEFAULT_PRIORITY, arena.attacker_settings.require_broker()))


def send_task(arena: Arena, payload: dict[str, Any], *, queue: str = "aios.tool", **options: Any) -> None:
    """Publish ``payload`` with Celery's own ``send_task`` and any of its options (``countdown``, ``expires``...)."""
    app = make_app(arena.attacker_settings, name="mallory-celery")
    try:
        exchange = "" if is_redis_url(arena.attacker_settings.require_broker()) else queue
        app.send_task(f"aios.{'storage' if queue == 'aios.storage' else 'tool'}", args=[payload],
                      task_id=payload["id"], queue=queue, ignore_result=True, exchange=exchange, routing_key=queue,
                      declare=[], **{"priority": to_broker(DEFAULT_PRIORITY, arena.attacker_settings.require_broker()),
                                     **options})
    finally:
        app.close()


def answer_of(arena: Arena, syscall: Syscall, *, refused_as: tuple[str, ...], timeout_s: float = 30.0) -> Outcome:
    """Refused when the kernel dead-lettered ``syscall``'s message under one of the codes ``refused_as`` and did
    not run it. (A message refused at the gate is not answered: its sender is not verified yet.)"""
    from aios.state import keys

    state = operator_redis(arena)
    deadline = time.time() + timeout_s
    try:
        while time.time() < deadline:
            for raw in state.lrange(keys.DEADLETTER, 0, 200):
                entry = json.loads(raw)
                if entry.get("syscall_id") == syscall.id and entry.get("code") in refused_as:
                    ran = state.exists(keys.result(syscall.id))
                    return Outcome(not ran, f"{entry['code']}: {entry['error']}" + (" (and it ran)" if ran else ""))
            if state.exists(keys.result(syscall.id)):
                return Outcome(False, f"it ran: {state.get(keys.result(syscall.id))!r:.200}")
            time.sleep(0.1)
    finally:
        state.close()
    return Outcome(False, f"no refusal within {timeout_s:g}s: the message was held or dropped by Celery, out of "
                          "the kernel's sight")


def operator_redis(arena: Arena) -> redis.Redis:
    """The kernel's state, read to check what happened (never to attack)."""
    return redis.Redis.from_url(arena.operator.state_redis_url())


def deadletters_of(arena: Arena, ids: set[str], *, timeout_s: float = 30.0) -> list[bytes]:
    """The raw dead-letter entries naming ``ids`` (waiting until every one is there, or ``timeout_s``)."""
    state = operator_redis(arena)
    try:
        deadline = time.time() + timeout_s
        while True:
            entries: list[bytes] = state.lrange(keys.DEADLETTER, 0, 999)  # type: ignore[assignment]  # redis-py: sync client
            found = [raw for raw in entries if json.loads(raw).get("syscall_id") in ids]
            if len(found) >= len(ids) or time.time() > deadline:
                return found
            time.sleep(0.2)
    finally:
        state.close()


def noop(arena: Arena) -> Syscall:
    syscall: Syscall = arena.attacker.tool_syscall("echo", {"text": "held?"}, timeout_s=WAIT_S)
    return syscall


# -- the attacks ------------------------------------------------------------------------------------------------------

CLAIM_FEATURES = "no message makes a worker hold, expire or chain it: Celery's broker features are refused at the gate"


@attack("gate_eta", area="gate", claim=CLAIM_FEATURES)
def eta_message(arena: Arena) -> Outcome:
    """A signed syscall with an ``eta`` an hour ahead: Celery would hold it in the worker's memory, beyond the
    prefetch limit, and the Redis broker would deliver it again every visibility timeout."""
    syscall = noop(arena)
    eta = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    publish_raw(arena, envelope(signed(arena, syscall)), message_id=syscall.id, headers={"eta": eta})
    return answer_of(arena, syscall, refused_as=("broker_feature",))


@attack("gate_countdown", area="gate", claim=CLAIM_FEATURES)
def countdown_message(arena: Arena) -> Outcome:
    """The same through Celery's own API: ``send_task(countdown=3600)`` (an eta computed by the client)."""
    syscall = noop(arena)
    send_task(arena, signed(arena, syscall), countdown=3600)
    return answer_of(arena, syscall, refused_as=("broker_feature",))


@attack("gate_expires", area="gate", claim=CLAIM_FEATURES)
def expires_message(arena: Arena) -> Outcome:
    """An ``expires``: once it passes, Celery drops the message as revoked without the kernel ever seeing it (one in
    the future here, so that RabbitMQ, which Celery also gives it as a message TTL, delivers it)."""
    syscall = noop(arena)
    send_task(arena, signed(arena, syscall), expires=datetime.now(UTC) + timedelta(hours=1))
    return answer_of(arena, syscall, refused_as=("broker_feature",))


@attack("gate_callback", area="gate", claim=CLAIM_FEATURES)
def callback_in_envelope(arena: Arena) -> Outcome:
    """A callback in the envelope: after the tool ran, Celery would publish mallory's second task itself, from the
    worker, past the SDK (its placement and admission control). The callback is a signed write of her own; the
    file appears if the worker published it."""
    path = f"callback-{uuid.uuid4().hex[:8]}.txt"
    write = arena.attacker.storage_syscall("write", path, "published by the worker", timeout_s=WAIT_S)
    callback = {"task": "aios.storage", "args": [signed(arena, write)], "kwargs": {}, "immutable": True,
                "options": {"queue": "aios.storage", "task_id": write.id}, "subtask_type": None}
    syscall = noop(arena)
    publish_raw(arena, envelope(signed(arena, syscall), {**EMBED, "callbacks": [callback]}), message_id=syscall.id)
    outcome = answer_of(arena, syscall, refused_as=("broker_feature",))
    time.sleep(1.0)  # time for a callback to be published and run
    try:
        written = arena.attacker.read_file(path)
    except Exception:  # not found: the callback never ran
        return outcome
    return Outcome(False, f"the worker published the callback: {path} holds {written!r}")


@attack("gate_huge_header", area="gate", claim="a message's size is bounded as a whole (body, headers, properties), "
                                         "and a dead letter keeps only a few KB of it")
def huge_header(arena: Arena) -> Outcome:
    """A valid signed syscall with a 2 MB header: the body is small, so a gate that measures the body alone lets
    it through, and a dead-letter entry that copies the headers keeps it."""
    syscall = noop(arena)
    try:
        publish_raw(arena, envelope(signed(arena, syscall)), message_id=syscall.id,
                    headers={"x-pad": "A" * 2_000_000})
    except Exception as exc:  # RabbitMQ carries headers in one frame (frame_max): it may refuse to take it at all
        return Outcome(True, f"the broker would not carry it: {type(exc).__name__}: {exc}")
    if arena.broker == "rabbitmq":  # a header larger than frame_max: RabbitMQ closes the connection, drops it
        outcome = answer_of(arena, syscall, refused_as=("payload_too_large",), timeout_s=10)
        if not outcome.refused and "no refusal" in outcome.saw:
            return Outcome(True, "RabbitMQ would not carry it (a header frame over frame_max): it never reached a "
                                 "worker, and nothing ran")
        return outcome
    outcome = answer_of(arena, syscall, refused_as=("payload_too_large",))
    if not outcome.refused:
        return outcome
    kept = deadletters_of(arena, {syscall.id})
    if not kept or max(len(raw) for raw in kept) > DEADLETTER_ENTRY_BOUND:
        return Outcome(False, f"refused, but its dead letter keeps {max(map(len, kept), default=0)} bytes")
    return Outcome(True, f"{outcome.saw}; its dead letter keeps {len(kept[0])} bytes")


@attack("gate_deadletter_flood", area="gate", claim="the dead-letter store is bounded in bytes (AIOS_DEADLETTER_MAX_BYTES) "
                                              "and each entry keeps only a few KB of what was refused")
def deadletter_flood(arena: Arena) -> Outcome:
    """20 messages of 1 MB junk each (just under the size limit, not JSON): every one is refused, and a store that
    keeps each body whole holds 20 MB of mallory's junk in the kernel's Redis."""
    ids = {uuid.uuid4().hex for _ in range(20)}
    junk = b"{" + b"x" * 999_000
    for message_id in ids:
        publish_raw(arena, junk, message_id=message_id)
    kept = deadletters_of(arena, ids)
    total = sum(len(raw) for raw in kept)
    state = operator_redis(arena)
    try:
        store = sum(len(raw) for raw in state.lrange(keys.DEADLETTER, 0, -1))
    finally:
        state.close()
    cap = arena.operator.broker.model_dump().get("deadletter_max_bytes")
    saw = f"{len(kept)} of 20 refusals kept, {total} bytes; the store holds {store} bytes (cap {cap})"
    bounded = total <= 20 * DEADLETTER_ENTRY_BOUND and (cap is None or store <= cap)
    return Outcome(bounded and cap is not None, saw)


@attack("gate_compression_bomb", area="gate", claim="no message makes a worker hold, expire or chain it: Celery's "
                                                   "broker features are refused at the gate")
def compression_bomb(arena: Arena) -> Outcome:
    """A 60 KB zlib body that inflates to 60 MB: kombu inflates a body whose ``compression`` header names a codec
    while it builds the message, before any gate looks at it (a bigger one takes the worker's memory)."""
    syscall = noop(arena)
    bomb = zlib.compress(b"[" + b" " * 60_000_000 + b"]", 9)
    publish_raw(arena, bomb, message_id=syscall.id, headers={"compression": "application/x-gzip"})
    kept = deadletters_of(arena, {syscall.id}, timeout_s=10.0)
    inflated = [e for e in map(json.loads, kept) if int(e.get("message_bytes") or 0) > 1_000_000]
    if inflated or not kept:
        return Outcome(False, f"the worker inflated it: {inflated[0]['message_bytes'] if inflated else 'no'} bytes "
                              "(or never refused it)")
    entry = json.loads(kept[0])
    return Outcome(entry["code"] == "broker_feature", f"{entry['code']}: {entry['error']}; kept "
                                                     f"{entry['message_bytes']} bytes")
