"""Attacks through the attacker's own broker connection: reading, popping, deleting or writing what is not its
own (the kernel's state, other agents' queued syscalls), escalating its broker user, or jumping the queue."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import kombu
import redis

from aios.broker.queues import step_list
from aios.policy.broker_users import refused_by_broker
from aios.policy.identity import broker_user
from aios.settings import QUEUES
from aios.state import keys
from aios.wire.priority import MAX_PRIORITY
from aios_bench.attacks import Arena, Outcome, attack
from aios_bench.attacks.arena import ATTACKER_MAX_PRIORITY, VICTIM
from aios_bench.attacks.common import (
    attacker_broker,
    attacker_state,
    attempt,
    count,
    operator_state,
)

KOMBU: Any = kombu  # kombu ships no type hints

REDIS = ("embedded", "redis")
CLAIM_STATE = "An agent's broker user reaches no kernel state: credentials, grants, approvals, audit, quotas."
CLAIM_QUEUES = "An agent's broker user may push syscalls onto the kernel's queues, never read, pop or delete them."


@attack("read-kernel-state", area="broker", claim=CLAIM_STATE)
def read_kernel_state(arena: Arena) -> Outcome:
    r = attacker_state(arena)
    for what, fn in (("KEYS *", lambda: r.keys("*")), ("SCAN", lambda: r.scan(0)),
                     (f"HGETALL {keys.agent(VICTIM)}", lambda: r.hgetall(keys.agent(VICTIM))),
                     (f"GET {keys.result('x')}", lambda: r.get(keys.result("x")))):
        got = attempt(what, fn)
        if not got.refused:
            return got
    return Outcome(True, "KEYS, SCAN, HGETALL of alice's credential, GET of a result: all NOPERM")


@attack("grant-self", area="broker", claim=CLAIM_STATE)
def grant_self(arena: Arena) -> Outcome:
    got = attempt("HSET grant", lambda: attacker_state(arena).hset(keys.grant(VICTIM), "mallory:files", "write"))
    if operator_state(arena).hget(keys.grant(VICTIM), "mallory:files") is not None:
        operator_state(arena).hdel(keys.grant(VICTIM), "mallory:files")
        return Outcome(False, "mallory wrote itself a grant on alice's files")
    return got


@attack("delete-audit", area="broker", claim=CLAIM_STATE)
def delete_audit(arena: Arena) -> Outcome:
    r = attacker_state(arena)
    for what, fn in (("XRANGE audit", lambda: r.xrange(keys.AUDIT, count=5)),
                     ("XTRIM audit", lambda: r.xtrim(keys.AUDIT, maxlen=0)), ("DEL audit", lambda: r.delete(keys.AUDIT))):
        got = attempt(what, fn)
        if not got.refused:
            return got
    return Outcome(True, "XRANGE, XTRIM and DEL of the audit stream: NOPERM")


@attack("approve-self", area="broker", claim=CLAIM_STATE)
def approve_self(arena: Arena) -> Outcome:
    sid = uuid.uuid4().hex
    return attempt("HSET approval status=approved",
                   lambda: attacker_state(arena).hset(keys.approval(sid), "status", "approved"))


@attack("reset-quota", area="broker", claim=CLAIM_STATE)
def reset_quota(arena: Arena) -> Outcome:
    r = attacker_state(arena)
    for what, fn in (("DEL quota", lambda: r.delete(keys.quota("agent:mallory", "req"))),
                     ("HDEL tokens used", lambda: r.hdel(keys.TOKENS_USED, "mallory")),
                     ("FLUSHDB", lambda: r.flushdb())):
        got = attempt(what, fn)
        if not got.refused:
            return got
    return Outcome(True, "DEL of its quota window, HDEL of its token account, FLUSHDB: NOPERM")


@attack("escalate-broker-user", area="broker", claim="An agent's broker user cannot change users or the server.")
def escalate(arena: Arena) -> Outcome:
    r: Any = attacker_state(arena)
    for what, fn in (("ACL SETUSER +@all", lambda: r.execute_command("ACL", "SETUSER", broker_user("mallory"), "+@all",
                                                                       "~*")),
                     ("CONFIG SET", lambda: r.config_set("appendonly", "no")),
                     ("EVAL", lambda: r.eval("return 1", 0)),
                     ("PUBLISH", lambda: r.publish("aios:events", "x")),
                     ("SUBSCRIBE", lambda: _subscribe(r, "__keyspace@0__:*"))):
        got = attempt(what, fn)
        if not got.refused:
            return got
    return Outcome(True, "ACL SETUSER, CONFIG SET, EVAL and SUBSCRIBE: NOPERM")


def _subscribe(r: Any, channel: str) -> object:
    p = r.pubsub()
    p.subscribe(channel)
    return p.get_message(timeout=2)  # the server's answer to SUBSCRIBE: an error for a user without channels


@attack("default-user", area="broker", claim="The embedded kernel's default Redis user is off: no password, no entry.",
        brokers=("embedded",))
def default_user(arena: Arena) -> Outcome:
    from aios.policy.broker_users import without_user

    r = redis.Redis.from_url(without_user(arena.operator.state_redis_url()), socket_timeout=5)
    return attempt("PING as the default user", r.ping)


@attack("read-queued-prompts", area="broker", claim=CLAIM_QUEUES, brokers=REDIS)
def read_queued_prompts(arena: Arena) -> Outcome:
    b = attacker_broker(arena)
    assert b is not None
    for what, fn in (("LRANGE aios.llm", lambda: b.lrange(QUEUES["llm"], 0, -1)),
                     ("LINDEX aios.tool:4", lambda: b.lindex(step_list(QUEUES["tool"], 4), 0)),
                     ("SORT aios.storage", lambda: b.sort(QUEUES["storage"]))):
        got = attempt(what, fn)
        if not got.refused:
            return got
    return Outcome(True, "LRANGE, LINDEX and SORT of queue lists: NOPERM (LLEN, a count, is allowed)")


@attack("pop-or-delete-queue", area="broker", claim=CLAIM_QUEUES, brokers=REDIS)
def pop_or_delete(arena: Arena) -> Outcome:
    b = attacker_broker(arena)
    assert b is not None
    lane = step_list(QUEUES["tool"], MAX_PRIORITY - ATTACKER_MAX_PRIORITY)
    for what, fn in (("RPOP", lambda: b.rpop(lane)), ("BRPOP", lambda: b.brpop([lane], 0.1)),
                     ("DEL", lambda: b.delete(lane)), ("LTRIM", lambda: b.ltrim(lane, 0, 0)),
                     ("SADD binding", lambda: b.sadd("_kombu.binding.aios.tool", "aios.tool::mallory"))):
        got = attempt(f"{what} {lane}", fn)
        if not got.refused:
            return got
    return Outcome(True, "RPOP, BRPOP, DEL, LTRIM of a queue list and SADD to its binding: NOPERM")


@attack("push-above-granted-priority", area="broker", brokers=REDIS,
        claim="An agent's broker user may push onto no priority list above its grant.")
def push_above_grant(arena: Arena) -> Outcome:
    b = attacker_broker(arena)
    assert b is not None
    top = step_list(QUEUES["tool"], 0)  # kernel priority 9
    return attempt(f"LPUSH {top} (priority 9, grant {ATTACKER_MAX_PRIORITY})", lambda: b.lpush(top, "{}"))


CLAIM_OWN = ("An agent cannot push onto an LLM worker's own queue (affinity): only a worker hands a syscall over "
             "there.")


@attack("push-to-llm-worker-queue", area="broker", brokers=REDIS, claim=CLAIM_OWN)
def push_to_worker_queue(arena: Arena) -> Outcome:
    b = attacker_broker(arena)
    assert b is not None
    lane = step_list(f"{QUEUES['llm']}.w-0123abcd", MAX_PRIORITY - ATTACKER_MAX_PRIORITY)
    return attempt(f"LPUSH {lane}", lambda: b.lpush(lane, "{}"))


@attack("rabbitmq-publish-to-llm-worker-queue", area="broker", brokers=("rabbitmq",), claim=CLAIM_OWN)
def rabbit_worker_queue(arena: Arena) -> Outcome:
    name = f"{QUEUES['llm']}.w-0123abcd"
    with KOMBU.Connection(arena.attacker_settings.require_broker(), connect_timeout=5) as conn:
        try:
            ch = conn.channel()
            ch.exchange_declare(name, "direct", durable=True)
            KOMBU.Producer(ch).publish(json.dumps({}), exchange=name, routing_key=name, declare=[])
            conn.drain_events(timeout=1)
            return Outcome(False, f"mallory declared and published to exchange {name}")
        except Exception as exc:  # kombu/amqp raise AccessRefused
            return Outcome(refused_by_broker(exc) or "access" in str(exc).lower(), f"declare/publish {name}: {exc}")


@attack("jump-the-queue", area="broker", claim="A syscall is served no higher than its signed fields and its "
        "agent's grant entitle it to, whatever priority or headers its publisher wrote.")
def jump_the_queue(arena: Arena) -> Outcome:
    """A correctly signed syscall at the grant's priority, published above it: on RabbitMQ with a broker priority
    of 9 (the broker orders by it); on Redis on its own list but with headers claiming an hour's wait at 9, while
    the tool worker is busy, so that the ager moves it to the top list. Either way it is served above its grant,
    unless the worker checks."""
    from aios.broker.publish import Route, publish_syscall
    from aios.sdk.core import Pending
    from aios.wire.seal import SIG_FIELD, sign

    k = arena.attacker
    busy = [arena.victim.submit(arena.victim.tool_syscall("sleep", {"seconds": 2.0})) for _ in range(4)]
    syscall = k.tool_syscall("noop", priority=ATTACKER_MAX_PRIORITY)
    payload = syscall.model_dump(mode="json")
    payload[SIG_FIELD] = sign(payload, arena.extra["attacker_key"])
    before = count(arena, "tool:demoted")
    if arena.broker == "rabbitmq":
        publish_syscall(k._app, payload, syscall_id=syscall.id, kind="tool", agent_id="mallory",
                        route=Route("tool", QUEUES["tool"], MAX_PRIORITY), from_agent=True)
    else:
        k._app.send_task("aios.tool", args=[payload], task_id=syscall.id, queue=QUEUES["tool"], exchange="",
                         routing_key=QUEUES["tool"], declare=[], priority=MAX_PRIORITY - ATTACKER_MAX_PRIORITY,
                         headers={keys.HEADER_ENQUEUED: time.time() - 3600, keys.HEADER_PRIORITY: MAX_PRIORITY},
                         ignore_result=True)
    response = k.wait_response(Pending(syscall))
    for p in busy:
        arena.victim.wait_response(p)
    demoted = count(arena, "tool:demoted") > before
    return Outcome(demoted, f"demoted to its grant before it ran: {demoted}; answered {response.status.value}")


@attack("rabbitmq-consume-kernel-queue", area="broker", brokers=("rabbitmq",), claim=CLAIM_QUEUES)
def rabbit_consume(arena: Arena) -> Outcome:

    with KOMBU.Connection(arena.attacker_settings.require_broker(), connect_timeout=5) as conn:
        try:
            ch = conn.channel()
            got = ch.basic_get(QUEUES["tool"], no_ack=False)
            return Outcome(False, f"basic.get on aios.tool worked: {got}")
        except Exception as exc:  # kombu/amqp raise AccessRefused
            return Outcome(refused_by_broker(exc) or "access" in str(exc).lower(), f"basic.get aios.tool: {exc}")


@attack("rabbitmq-bind-own-queue", area="broker", brokers=("rabbitmq",), claim=CLAIM_QUEUES)
def rabbit_bind(arena: Arena) -> Outcome:

    with KOMBU.Connection(arena.attacker_settings.require_broker(), connect_timeout=5) as conn:
        try:
            ch = conn.channel()
            ch.queue_declare("mallory-tap", auto_delete=True)
            ch.queue_bind("mallory-tap", exchange=QUEUES["tool"], routing_key=QUEUES["tool"])
            return Outcome(False, "mallory bound its own queue to the kernel's tool exchange")
        except Exception as exc:
            return Outcome(refused_by_broker(exc) or "access" in str(exc).lower(), f"declare/bind: {exc}")


@attack("rabbitmq-forge-user-id", area="broker", brokers=("rabbitmq",),
        claim="On RabbitMQ the broker vouches for the sender: a message's user_id must be the connection's user.")
def rabbit_user_id(arena: Arena) -> Outcome:

    with KOMBU.Connection(arena.attacker_settings.require_broker(), connect_timeout=5) as conn:
        try:
            KOMBU.Producer(conn.channel()).publish(json.dumps({}), exchange=QUEUES["tool"], routing_key=QUEUES["tool"],
                                             user_id=broker_user(VICTIM), declare=[])
            conn.drain_events(timeout=1)
            return Outcome(False, "published as alice's broker user")
        except Exception as exc:
            return Outcome(refused_by_broker(exc) or "user_id" in str(exc), f"publish with user_id alice: {exc}")
