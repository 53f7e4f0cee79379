"""Attacks on identity: acting as another agent, finding keys in the kernel's state, outliving a revocation."""

from __future__ import annotations

import uuid

from aios.policy.identity import Credentials, broker_password
from aios.wire.errors import AIOSError
from aios.wire.seal import SIG_FIELD, sign
from aios.wire.syscalls import MemorySyscall
from aios_bench.attacks import Arena, Outcome, attack
from aios_bench.attacks.arena import VICTIM, agent_settings
from aios_bench.attacks.common import count, envelope, operator_state, publish_as_attacker, wait_for

CLAIM_SIGN = "A worker acts only on syscalls signed with their agent's key."


def _as_victim(arena: Arena, sig: str | None) -> Outcome:
    marker = f"planted-{uuid.uuid4().hex[:8]}"
    syscall = MemorySyscall(agent_id=VICTIM, op="put", key=marker, value="mallory was here")
    payload = syscall.model_dump(mode="json")
    if sig == "mallory":
        payload[SIG_FIELD] = sign(payload, arena.extra["attacker_key"])
    code = "forged" if sig else "unsigned"
    before = count(arena, code, "aios:stats:rejected")
    publish_as_attacker(arena, envelope(payload), task="aios.storage", queue="aios.storage", message_id=syscall.id)
    wait_for(lambda: count(arena, code, "aios:stats:rejected") > before)
    planted = marker in arena.victim.memory_list()
    return Outcome(not planted, f"alice's memory {'holds' if planted else 'does not hold'} {marker}")


@attack("sign-as-victim", area="identity", claim=CLAIM_SIGN)
def sign_as_victim(arena: Arena) -> Outcome:
    return _as_victim(arena, "mallory")


@attack("unsigned-as-victim", area="identity", claim=CLAIM_SIGN)
def unsigned_as_victim(arena: Arena) -> Outcome:
    return _as_victim(arena, None)


@attack("keys-in-kernel-state", area="identity",
        claim="Reading all of the kernel's Redis yields no credential: keys derive from a master key kept elsewhere.")
def keys_in_state(arena: Arena) -> Outcome:
    """The worst case: every key and value of the kernel's Redis dumped (as a leak, a backup or a broken ACL
    would give them away), then searched for alice's key and broker password."""
    r = operator_state(arena)
    secrets = [arena.extra["victim_key"].encode(), broker_password(arena.extra["victim_key"]).encode()]
    seen = 0
    for name in r.scan_iter(count=500):
        seen += 1
        dump = (r.dump(name) or b"") + name
        if any(s in dump for s in secrets):
            return Outcome(False, f"alice's key found in {name!r}")
    return Outcome(True, f"{seen} keys dumped: neither alice's key nor her broker password in any")


@attack("revoked-agent-acts", area="identity", claim="A revoked agent can do nothing more, at once.")
def revoked_agent(arena: Arena) -> Outcome:
    from aios.sdk.client import Kernel

    creds = Credentials(arena.operator)
    key = creds.create("mallory2", write_file=False).key
    with Kernel("mallory2", settings=agent_settings(arena.operator, "mallory2", key)) as k:
        k.memory_put("before", 1)
        creds.revoke("mallory2")
        try:
            k.memory_put("after", 2)
        except AIOSError as exc:
            return Outcome(True, f"after revocation: {type(exc).__name__}: {exc}")
    return Outcome(False, "mallory2 wrote its memory after its credential was revoked")
