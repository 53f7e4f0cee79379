"""Attacks on the approval gate: an operator approves one thing, the kernel must run exactly that.

A parked syscall is known by its id, and the id is the caller's to choose. These attacks publish a second,
validly signed syscall under the id of a parked one (the attacker's own, or the victim's) and check that what
runs after the operator's approval is the payload the operator was shown. They need a kernel with approvals on
(``AIOS_APPROVALS=required``): on one without, nothing is ever parked and they report so (not refused: the gate
they test is not there). The shared arena of ``tests/test_attacks.py`` runs with approvals off, so they are
registered for no broker there (:data:`BROKERS`); ``tests/test_approvals.py`` runs them on a kernel with approvals on.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from aios.policy.approvals import Approvals
from aios.state import keys
from aios.state.connections import state_client
from aios.wire.errors import AIOSError, NotFound
from aios_bench.attacks import Arena, Outcome, attack
from aios_bench.attacks.arena import ATTACKER_MAX_PRIORITY

WAIT_S = 20.0
"""How long an attack waits for the kernel to park, refuse or run a syscall."""
TIMEOUT_S = 60.0
"""The attackers' syscalls' timeout: longer than the attack takes, so that nothing expires on the way."""
BROKERS: tuple[str, ...] = ()
"""Where ``tests/test_attacks.py`` runs them: nowhere, as its arena has approvals off (an arena for them needs
``approvals="required"``)."""


def _no_gate(arena: Arena) -> Outcome | None:
    if arena.operator.security.approvals != "required":
        return Outcome(False, "approvals are off on this kernel (AIOS_APPROVALS=off): nothing is parked, every "
                              "irreversible syscall runs at once")
    return None


def _until(what: str, check: Any) -> Any:
    deadline = time.monotonic() + WAIT_S
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {WAIT_S:.0f}s for {what}")
        time.sleep(0.05)


def _parked(arena: Arena, syscall_id: str) -> None:
    approvals = Approvals(arena.operator)
    try:
        _until(f"syscall {syscall_id} to be parked", lambda: syscall_id in [r.id for r in approvals.pending()])
    finally:
        approvals.redis.close()


def _settled(arena: Arena, syscall_id: str, payload_before: bytes | None) -> str:
    """Wait until a worker took the second message under ``syscall_id``: refused (a dead letter), or parked over
    the first (the stored payload changed). Says which."""
    state = state_client(arena.operator)

    def look() -> str | None:
        for raw in state.lrange(keys.DEADLETTER, 0, 50):
            entry = json.loads(raw)
            if entry.get("syscall_id") == syscall_id:
                return f"refused ({entry.get('code')}: {entry.get('error')})"
        stored = state.hget(keys.approval(syscall_id), "payload")
        if stored != payload_before:
            return "parked over the first: the stored payload is the second one now"
        return None

    try:
        return str(_until(f"a worker to take the second message of {syscall_id}", look))
    finally:
        state.close()


def _stored_payload(arena: Arena, syscall_id: str) -> bytes | None:
    state = state_client(arena.operator)
    try:
        return state.hget(keys.approval(syscall_id), "payload")  # type: ignore[return-value]
    finally:
        state.close()


def _answered(arena: Arena, syscall_id: str) -> dict[str, Any]:
    """The stored answer of ``syscall_id`` (what ran), once there is one."""
    state = state_client(arena.operator)
    try:
        raw = _until(f"an answer to {syscall_id}", lambda: state.get(keys.result(syscall_id)))
        return json.loads(raw)  # type: ignore[no-any-return]
    finally:
        state.close()


def _exists(kernel: Any, path: str) -> bool:
    try:
        kernel.read_file(path)
        return True
    except NotFound:
        return False


def _park_a_scratch_delete(arena: Arena) -> tuple[Any, str, str, str]:
    """Mallory writes a scratch file and a precious one, and asks to delete the scratch one: parked. Returns
    the pending syscall, both names, and what the operator is shown."""
    m = arena.attacker
    u = uuid.uuid4().hex[:8]
    scratch, precious = f"scratch-{u}.txt", f"precious-{u}.txt"
    m.write_file(scratch, "nothing")
    m.write_file(precious, "the only copy")
    first = m.submit(m.storage_syscall("delete", scratch, timeout_s=TIMEOUT_S))
    _parked(arena, first.id)
    return first, scratch, precious, _shown(arena, first.id)


def _shown(arena: Arena, syscall_id: str) -> str:
    """What `aios approvals` shows the operator about the request."""
    approvals = Approvals(arena.operator)
    try:
        return approvals.get(syscall_id).summary
    finally:
        approvals.redis.close()


def _approve(arena: Arena, syscall_id: str) -> None:
    """The honest operator, having read the request: `aios approve <id>`."""
    approvals = Approvals(arena.operator)
    try:
        approvals.approve(syscall_id)
    finally:
        approvals.redis.close()


@attack("approval-repark-other-payload", area="approvals", brokers=BROKERS,
        claim="an approval runs exactly the payload the operator was shown: a second park under the same syscall id "
              "with another payload is refused")
def repark_other_payload(arena: Arena) -> Outcome:
    if (off := _no_gate(arena)) is not None:
        return off
    m = arena.attacker
    first, scratch, precious, shown = _park_a_scratch_delete(arena)
    before = _stored_payload(arena, first.id)
    # The same id, another payload, validly signed by the attacker, while the operator reads the first.
    second = m.storage_syscall("delete", precious, timeout_s=TIMEOUT_S).model_copy(update={"id": first.id})
    m.submit(second)
    settled = _settled(arena, first.id, before)
    try:
        _approve(arena, first.id)
    except AIOSError as exc:
        return Outcome(True, f"second park {settled}; the approval was refused: {exc}")
    answer = _answered(arena, first.id)
    if not _exists(m, precious):
        return Outcome(False, f"second park {settled}; the operator approved {shown!r} and the kernel deleted "
                              f"{precious} instead ({answer.get('result')})")
    return Outcome(True, f"second park {settled}; the operator approved {shown!r}; {precious} is still there; "
                         f"what ran: {answer.get('result') or answer.get('error')}")


@attack("approval-hijack-parked-id", area="approvals", brokers=BROKERS,
        claim="a syscall published under the id of another agent's parked syscall does not replace it: the "
              "operator's approval runs the victim's payload, never the attacker's")
def hijack_parked_id(arena: Arena) -> Outcome:
    if (off := _no_gate(arena)) is not None:
        return off
    m, v = arena.attacker, arena.victim
    u = uuid.uuid4().hex[:8]
    theirs, mine = f"old-draft-{u}.txt", f"evidence-{u}.txt"
    v.write_file(theirs, "an old draft")
    m.write_file(mine, "what mallory did")
    parked = v.submit(v.storage_syscall("delete", theirs, timeout_s=TIMEOUT_S))
    _parked(arena, parked.id)
    shown = _shown(arena, parked.id)
    before = _stored_payload(arena, parked.id)
    # The attacker learnt the id (a log line, a shared trace): it signs its own syscall under that id.
    m.submit(m.storage_syscall("delete", mine, timeout_s=TIMEOUT_S).model_copy(update={"id": parked.id}))
    settled = _settled(arena, parked.id, before)
    try:
        _approve(arena, parked.id)
    except AIOSError as exc:
        return Outcome(False, f"the attacker's message {settled}; the victim's approval was refused: {exc}")
    answer = _answered(arena, parked.id)
    if not _exists(m, mine):
        return Outcome(False, f"the attacker's message {settled}; the operator approved {shown!r} (the victim's) "
                              f"and the kernel ran the attacker's delete of {mine}")
    if _exists(v, theirs):
        return Outcome(False, f"the attacker's message {settled}; the victim's approved delete did not run: "
                              f"{answer.get('error') or answer.get('result')}")
    return Outcome(True, f"the attacker's message {settled}; the operator approved {shown!r} and exactly that ran")


@attack("approval-swap-after-approve", area="approvals", brokers=BROKERS,
        claim="once approved, only the approved payload runs: another payload delivered under the approved id "
              "(ahead of the approved one) is refused")
def swap_after_approve(arena: Arena) -> Outcome:
    if (off := _no_gate(arena)) is not None:
        return off
    m = arena.attacker
    first, scratch, precious, shown = _park_a_scratch_delete(arena)
    _approve(arena, first.id)
    # Right behind the approval, the most urgent priority its grant allows: ahead of the republished approved
    # message if it can.
    swap = m.storage_syscall("delete", precious, timeout_s=TIMEOUT_S, priority=ATTACKER_MAX_PRIORITY).model_copy(
        update={"id": first.id})
    for _ in range(3):
        m.submit(swap)
    answer = _answered(arena, first.id)
    time.sleep(0.5)  # the other copies, if any ran
    if not _exists(m, precious):
        return Outcome(False, f"the operator approved {shown!r}; the swapped payload ran: {precious} is gone")
    return Outcome(True, f"the operator approved {shown!r}; {precious} is still there; what ran: "
                         f"{answer.get('result') or answer.get('error')}")
