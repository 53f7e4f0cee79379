"""Attacks on "a syscall starts at most once": mallory publishes one signed write several times at once (a race
between worker threads), replays a captured one while it runs, and signs one whose deadline outlives the
kernel's idempotency record. The observable is the write's side effect: each run of a storage write adds a
version of the file."""

from __future__ import annotations

import time
import uuid

from aios.sdk.core import Pending
from aios.wire.errors import SyscallTimeout
from aios.wire.syscalls import Syscall
from aios_bench.attacks import Arena, Outcome, attack
from aios_bench.attacks.common import more_answers
from aios_bench.attacks.gate import answer_of, send_task, signed

CONTENT = "a write that takes a while to index\n" * 600
"""About 21 KB: the storage worker embeds 16 chunks of it, long enough for copies to overlap."""
CLAIM_ONCE = "one signed syscall starts at most once, however many copies of it are published or replayed"


def _write(arena: Arena, timeout_s: float = 20.0) -> tuple[Syscall, str]:
    path = f"once/{uuid.uuid4().hex[:10]}.txt"
    return arena.attacker.storage_syscall("write", path, CONTENT, timeout_s=timeout_s), path


def _runs(arena: Arena, syscall: Syscall, path: str, copies: int) -> Outcome:
    """After the first answer (and time for every copy to be taken): how many versions the copies wrote."""
    try:
        first = arena.attacker.wait_response(Pending(syscall))
    except SyscallTimeout:
        return Outcome(False, "no answer at all")
    time.sleep(2.0)  # every copy is taken by now; one that was going to run has run
    versions = arena.attacker.file_versions(path)
    more = more_answers(arena, syscall.id)
    saw = f"{copies} copies: first answer {first.status.value}, {len(versions)} version(s), {more} more answer(s)"
    return Outcome(first.error is None and len(versions) == 1 and more == 0, saw)


@attack("idempotency_duplicate_race", area="idempotency", claim=CLAIM_ONCE)
def duplicate_publish_race(arena: Arena) -> Outcome:
    """The same signed write published four times at once: idle worker threads take copies together, and each
    finds no answer stored yet (check-then-act), so each runs it."""
    syscall, path = _write(arena)
    for _ in range(4):
        arena.attacker.submit(syscall)
    return _runs(arena, syscall, path, 4)


@attack("idempotency_replay_while_running", area="idempotency", claim=CLAIM_ONCE)
def replay_while_running(arena: Arena) -> Outcome:
    """A captured signed write replayed while its first run is still going, then again a little later."""
    syscall, path = _write(arena)
    arena.attacker.submit(syscall)
    for pause in (0.05, 0.15):
        time.sleep(pause)
        arena.attacker.submit(syscall)
    return _runs(arena, syscall, path, 3)


@attack("idempotency_timeout_above_cap", area="idempotency",
        claim="no syscall's deadline outlives the kernel's idempotency record: timeout_s is capped by "
              "AIOS_MAX_SYSCALL_TIMEOUT_S")
def timeout_above_cap(arena: Arena) -> Outcome:
    """A write signed with ``timeout_s`` = 1 day (what the wire format allows): its deadline outlives its result,
    so a replay after the result expired would run it again. Published past the SDK, with Celery's API."""
    path = f"once/{uuid.uuid4().hex[:10]}.txt"
    syscall = arena.attacker.storage_syscall("write", path, "x", timeout_s=86_400)
    send_task(arena, signed(arena, syscall), queue="aios.storage")
    outcome = answer_of(arena, syscall.model_copy(update={"timeout_s": 10.0}), refused_as=("invalid_syscall",))
    if outcome.refused and "AIOS_MAX_SYSCALL_TIMEOUT_S" not in outcome.saw:
        return Outcome(False, f"refused for another reason: {outcome.saw}")
    return outcome
