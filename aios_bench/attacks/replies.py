"""Attacks on answers: reading another agent's replies, pushing a forged one, or making its call fail."""

from __future__ import annotations

import pickle
import time

from aios.state import keys
from aios.wire.seal import seal_reply
from aios.wire.syscalls import Response, Status, Timing
from aios_bench.attacks import Arena, Outcome, attack
from aios_bench.attacks.arena import VICTIM
from aios_bench.attacks.common import attacker_state, attempt, envelope, operator_state, publish_as_attacker


def _fake(syscall_id: str, result: dict[str, object]) -> str:
    now = time.time()
    return Response(id=syscall_id, status=Status.OK, result=result, worker="mallory",
                    timing=Timing(created_at=now, started_at=now, finished_at=now)).model_dump_json()


CLAIM = "Each agent's replies are its own: nobody else can read, pop or push them."


@attack("read-victim-reply", area="replies", claim=CLAIM)
def read_victim_reply(arena: Arena) -> Outcome:
    """Even knowing the syscall id (the strongest case: say it leaked), mallory cannot read alice's answer."""
    pending = arena.victim.submit(arena.victim.tool_syscall("sleep", {"seconds": 0.5}))
    r = attacker_state(arena)
    reply_key = keys.reply(VICTIM, pending.id)
    got = attempt(f"BLPOP {reply_key}", lambda: r.blpop([reply_key], 3))
    arena.victim.wait_response(pending)
    if got.refused:
        got = attempt(f"GET {keys.result(pending.id)}", lambda: r.get(keys.result(pending.id)))
    return got


@attack("push-forged-reply", area="replies", claim=CLAIM)
def push_forged_reply(arena: Arena) -> Outcome:
    pending = arena.victim.submit(arena.victim.tool_syscall("calculator", {"expression": "2*3"}))
    fake = _fake(pending.id, {"expression": "2*3", "value": 7})
    got = attempt("RPUSH a fake answer onto alice's reply", lambda: attacker_state(arena).rpush(
        keys.reply(VICTIM, pending.id), fake))
    answer = arena.victim.wait(pending)
    if answer["value"] != 6:
        return Outcome(False, f"alice's 2*3 returned {answer['value']}")
    return got


@attack("forged-reply-reaches-the-sdk", area="replies",
        claim="The SDK accepts only answers the kernel sealed with its agent's key for that syscall.")
def forged_reply_refused(arena: Arena) -> Outcome:
    """Suppose a forged answer did reach alice's reply list (written here with the kernel's own connection, as
    if every ACL had failed): unsealed, and sealed with mallory's key. alice's SDK must drop both and return the
    genuine answer."""
    pending = arena.victim.submit(arena.victim.tool_syscall("sleep", {"seconds": 0.5}))
    fake = _fake(pending.id, {"slept_s": 666})
    operator_state(arena).rpush(keys.reply(VICTIM, pending.id), fake,
                                seal_reply(fake, arena.extra["attacker_key"], pending.id))
    answer = arena.victim.wait(pending)
    return Outcome(answer == {"slept_s": 0.5}, f"alice's SDK returned {answer}")


@attack("refusal-spoils-victim-call", area="replies",
        claim="A message the kernel cannot verify is never answered, so it cannot make another agent's call fail.")
def refusal_spoils(arena: Arena) -> Outcome:
    """While alice's syscall waits, mallory publishes junk naming its id (pickle, an unsigned copy): the kernel
    refuses those; alice must still get her own answer."""
    victim = arena.victim
    pending = victim.submit(victim.tool_syscall("sleep", {"seconds": 1.0}))
    publish_as_attacker(arena, pickle.dumps(([{}], {}, {})), content_type="application/x-python-serialize",
                        message_id=pending.id)
    forged = victim.tool_syscall("noop").model_dump(mode="json") | {"id": pending.id, "sig": None}
    publish_as_attacker(arena, envelope(forged), message_id=pending.id)
    response = victim.wait_response(pending)
    # The seal would make alice's SDK drop an answer to mallory's copy anyway; the claim here is that the kernel
    # sends none: alice's client saw no answer it had to drop.
    spoiled = victim._forged.pop(pending.id, None)
    return Outcome(response.status is Status.OK and spoiled is None,
                   f"alice's call answered {response.status.value}: {response.result or response.error}"
                   + (f"; an answer to mallory's copy reached alice and was dropped: {spoiled}" if spoiled else ""))
