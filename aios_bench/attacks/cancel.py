"""Attacks on cancellation: mallory stopping alice's syscalls."""

from __future__ import annotations

from aios.policy.identity import SIG_FIELD, sign
from aios.state import keys
from aios.wire.syscalls import CancelSyscall, Status
from aios_bench.attacks import Arena, Outcome, attack
from aios_bench.attacks.arena import VICTIM
from aios_bench.attacks.common import attacker_state, attempt, envelope, publish_as_attacker

CLAIM = "An agent may cancel only its own syscalls."


def _alice_answered(arena: Arena, pending: object, seconds: float) -> Outcome:
    response = arena.victim.wait_response(pending)
    ok = response.status is Status.OK and response.result == {"slept_s": seconds}
    return Outcome(ok, f"alice's call answered {response.status.value}: {response.result or response.error}")


@attack("cancel-victim-syscall", area="cancel", claim=CLAIM)
def cancel_victim_syscall(arena: Arena) -> Outcome:
    """Mallory knows the id of alice's running syscall (say it leaked) and sends its own signed cancel of it, then
    one that claims to be alice's, signed with mallory's key: alice's call must still be answered."""
    pending = arena.victim.submit(arena.victim.tool_syscall("sleep", {"seconds": 1.5}))
    told = arena.attacker.cancel(pending.id)  # recorded under mallory's name: alice's syscall does not heed it
    forged = CancelSyscall(agent_id=VICTIM, target=pending.id).model_dump(mode="json")
    forged[SIG_FIELD] = sign(forged, arena.extra["attacker_key"])
    publish_as_attacker(arena, envelope(forged), message_id=forged["id"])
    outcome = _alice_answered(arena, pending, 1.5)
    return Outcome(outcome.refused, f"mallory's cancel returned {told}; {outcome.saw}")


@attack("write-cancel-record", area="cancel", claim=CLAIM)
def write_cancel_record(arena: Arena) -> Outcome:
    """Mallory writes the operator's cancel record of alice's syscall into the kernel's Redis itself."""
    pending = arena.victim.submit(arena.victim.tool_syscall("sleep", {"seconds": 1.0}))
    got = attempt(f"HSET {keys.cancel(pending.id)} *", lambda: attacker_state(arena).hset(
        keys.cancel(pending.id), keys.CANCEL_ANY, "1"))
    outcome = _alice_answered(arena, pending, 1.0)
    return Outcome(got.refused and outcome.refused, f"{got.saw}; {outcome.saw}")
