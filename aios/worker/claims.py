"""At most one start per syscall: a delivery claims its syscall id before it runs.

The claim is ``aios:claim:<id>`` holding a random token of the delivery, set only if the id is neither claimed nor
answered, in one script (``lua/claim.lua``): two copies of one signed syscall taken at the same moment by two
threads or two workers cannot both start it. It is a lease (``AIOS_LEASE_S``, at most half the visibility
timeout) that a thread of the worker renews while the delivery runs, so a worker that dies holding one frees it
soon after, and the broker's redelivery of its message can run (a claim held until the deadline would turn every
worker death into a lost syscall on RabbitMQ, which redelivers at once).

When the delivery ends with an answer, the reply script deletes the claim with the answer's storing: the stored
answer stops every later copy from then on. When it ends without one (requeued by the kernel itself: a preemption, a retry, a quota wait; parked for
approval; refused), the claim is given up, so that the copy the kernel puts back on the queue can run.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import TYPE_CHECKING

import redis

from aios.state import keys, scripts

if TYPE_CHECKING:
    from aios.worker.runtime import Runtime

log = logging.getLogger("aios.worker")

CLAIMED, ANSWERED, HELD = "claimed", "answered", "held"


class Claims:
    """One per worker process: takes, renews and gives up the claims of the deliveries it runs."""

    def __init__(self, rt: "Runtime") -> None:
        self.redis = rt.redis
        self.lease_s = min(rt.settings.worker.lease_s, rt.settings.broker.visibility_timeout_s / 2)
        self.renew_s = min(rt.settings.worker.lease_renew_s, self.lease_s / 3)
        self._take = scripts.register(rt.redis, "claim")
        self._release = scripts.register(rt.redis, "claim_release")
        self._renew = scripts.register(rt.redis, "claim_renew")
        self._held: dict[str, str] = {}  # syscall id -> token
        self._lock = threading.Lock()
        self._renewer: threading.Thread | None = None

    @property
    def _lease_ms(self) -> int:
        return max(1, int(self.lease_s * 1000))

    def take(self, syscall_id: str) -> tuple[str, str | float]:
        """``(CLAIMED, token)``, ``(ANSWERED, 0)``, or ``(HELD, seconds the holder's lease still runs)``. A claim
        taken is renewed until :meth:`release` or :meth:`drop`."""
        token = secrets.token_hex(16)
        return self.settle(syscall_id, token, self._take(keys=[keys.claim(syscall_id), keys.result(syscall_id)],
                                                         args=[token, self._lease_ms]))

    def take_reading(self, syscall_id: str, agent_id: str, *, credential: bool,
                     snapshot: bool) -> tuple[tuple[str, str | float], dict[bytes, bytes], dict[bytes, bytes],
                                              list[bytes | None]]:
        """:meth:`take`, and in the same command what the worker's next steps read (the load step's one round
        trip): the agent's credential record (if ``credential``), the syscall's snapshot (if ``snapshot``), and the
        cancel fields it heeds (:func:`aios.worker.cancels.heeded`)."""
        token = secrets.token_hex(16)
        got = self._take(keys=[keys.claim(syscall_id), keys.result(syscall_id), keys.agent(agent_id),
                               keys.context(syscall_id), keys.cancel(syscall_id)],
                         args=[token, self._lease_ms, int(credential), int(snapshot), agent_id, keys.CANCEL_ANY])
        claimed, record, snap, cancels = got
        return (self.settle(syscall_id, token, claimed), _pairs(record), _pairs(snap), cancels)

    def settle(self, syscall_id: str, token: str, reply: "list[int]") -> tuple[str, str | float]:
        """What :meth:`take` returns, from the claim script's ``reply``."""
        state, ttl_ms = reply
        if int(state) == 0:
            return ANSWERED, 0
        if int(state) == 2:
            return HELD, max(0.0, int(ttl_ms) / 1000)
        with self._lock:
            self._held[syscall_id] = token
            if self._renewer is None or not self._renewer.is_alive():
                self._renewer = threading.Thread(target=self._renew_loop, name="aios-claim-renewer", daemon=True)
                self._renewer.start()
        return CLAIMED, token

    def release(self, syscall_id: str, token: str) -> None:
        """Give the claim up now (the kernel itself puts the syscall back, or it will not be answered)."""
        self.drop(syscall_id)
        self._release(keys=[keys.claim(syscall_id)], args=[token])

    def drop(self, syscall_id: str) -> None:
        """Stop renewing the claim (the reply script deleted it with the answer; else it lapses one lease after its
        last renewal)."""
        with self._lock:
            self._held.pop(syscall_id, None)

    def _renew_loop(self) -> None:
        while True:
            time.sleep(self.renew_s)
            with self._lock:
                held = list(self._held.items())
            if not held:
                continue
            try:
                pipe = self.redis.pipeline(transaction=False)
                for syscall_id, token in held:
                    self._renew(keys=[keys.claim(syscall_id)], args=[token, self._lease_ms], client=pipe)
                lost = [pair for pair, ok in zip(held, pipe.execute(), strict=True) if not int(ok)]
            except redis.RedisError as exc:  # the next round tries again; a lease outlives a blip
                log.warning("could not renew the claims of %d syscalls: %s", len(held), exc)
                continue
            for syscall_id, token in lost:
                with self._lock:
                    still = self._held.get(syscall_id) == token
                if still:
                    log.warning("syscall %s: its claim lapsed while it ran (the worker stalled for %.0f s?)",
                                syscall_id, self.lease_s)


def _pairs(flat: "list[bytes]") -> dict[bytes, bytes]:
    """A hash as ``HGETALL`` inside a script returns it (field, value, field, value, ...)."""
    return dict(zip(flat[::2], flat[1::2], strict=True))
