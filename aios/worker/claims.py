"""At most one start per syscall: a delivery claims its syscall id before it runs.

The claim is ``aios:claim:<id>`` holding a random token of the delivery, set only if the id is neither claimed nor
answered, in one script (``lua/claim.lua``): two copies of one signed syscall taken at the same moment by two
threads or two workers cannot both start it. It is a lease (``AIOS_LEASE_S``, at most half the visibility
timeout) that a thread of the worker renews while the delivery runs, so a worker that dies holding one frees it
soon after, and the broker's redelivery of its message can run (a claim held until the deadline would turn every
worker death into a lost syscall on RabbitMQ, which redelivers at once).

Each token names its holder, the worker process (:func:`holder`: its host's boot, its PID namespace, its PID and
that process's start time). A worker on the same host can then tell at once that a holder is dead (no such process
any more, or another one under its PID), without waiting for its lease: its sweep (:mod:`aios.worker.leases`)
puts such a delivery back within one sweep of the death, and a copy that finds a dead holder's claim takes it over
(:meth:`Claims.settle`) instead of being put off until the lease ends. A holder on another host (another container,
another machine) is left to its lease. A worker alive but stalled is never taken for dead this way.

When the delivery ends with an answer, the reply script deletes the claim with the answer's storing: the stored
answer stops every later copy from then on. When it ends without one (requeued by the kernel itself: a preemption, a retry, a quota wait; parked for
approval; refused), the claim is given up, so that the copy the kernel puts back on the queue can run.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import redis

from aios.state import keys, scripts

if TYPE_CHECKING:
    from aios.worker.runtime import Runtime

log = logging.getLogger("aios.worker")

CLAIMED, ANSWERED, HELD = "claimed", "answered", "held"


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, ``/proc/<pid>/stat`` field 22), ``None`` if there is
    no such process, or only its corpse (a zombie not yet reaped), or no ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after the command name, which may hold spaces and parentheses
    if len(fields) <= 19 or fields[0] in ("Z", "X"):
        return None
    return fields[19]


@cache
def _host() -> str | None:
    """This host's boot and PID namespace (``None`` without ``/proc``): two processes with the same one see each
    other's PIDs."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip().replace("-", "")[:12]
        return f"{boot}.{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return None


def holder() -> str:
    """This worker process, as its claim tokens name it: ``<boot>.<pid namespace>.<pid>.<start time>``, or
    ``-`` where it cannot be told (no ``/proc``: such holders are only ever left to their leases)."""
    host, pid = _host(), os.getpid()
    started = _start_time(pid)
    return "-" if host is None or started is None else f"{host}.{pid}.{started}"


def holder_dead(token: "bytes | str | None") -> bool:
    """Whether the claim ``token`` belongs to a worker process of this host that is gone: no process has its PID,
    or one started at another time has. False for a live one, one of another host, or a token naming none."""
    if token is None:
        return False
    text = token.decode(errors="replace") if isinstance(token, bytes) else token
    who = text.split("/", 1)[0]
    parts = who.rsplit(".", 2)
    host = _host()
    if len(parts) != 3 or host is None or parts[0] != host or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if os.path.exists(f"/proc/{pid}/stat"):
        return _start_time(pid) != parts[2]  # a zombie, or another process under a PID that was freed
    try:  # not in /proc: gone, or hidden (a /proc mounted with hidepid): ask the kernel
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists, under another user
        return False
    return False


Reading = tuple[tuple[str, "str | float"], dict[bytes, bytes], dict[bytes, bytes], list["bytes | None"]]
"""What :meth:`Claims.take_reading` returns: the claim's outcome (:meth:`Claims.settle`), the agent's credential
record, the syscall's snapshot, and its cancel fields."""


@dataclass
class Preload:
    """A claim reading sent as its message arrived, its reply still on ``conn`` (:meth:`Claims.send_reading`)."""

    syscall_id: str
    agent_id: str
    credential: bool
    snapshot: bool
    token: str
    conn: Any

    def fits(self, syscall_id: str, agent_id: str, credential: bool, snapshot: bool) -> bool:
        """Whether it read what the load step needs for this (decoded) syscall."""
        return (self.syscall_id, self.agent_id, self.credential, self.snapshot) == \
            (syscall_id, agent_id, credential, snapshot)


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
        self.holder = holder()
        self.taken_over = 0
        """Claims of dead holders this process took over (:meth:`settle`)."""
        self._lock = threading.Lock()
        self._renewer: threading.Thread | None = None

    @property
    def _lease_ms(self) -> int:
        return max(1, int(self.lease_s * 1000))

    def take(self, syscall_id: str) -> tuple[str, str | float]:
        """``(CLAIMED, token)``, ``(ANSWERED, 0)``, or ``(HELD, seconds the holder's lease still runs)``. A claim
        taken is renewed until :meth:`release` or :meth:`drop`."""
        token = self.token()
        return self.settle(syscall_id, token, self._take(keys=[keys.claim(syscall_id), keys.result(syscall_id)],
                                                         args=[token, self._lease_ms]))

    def token(self) -> str:
        """A fresh token of this process: ``<holder>/<random>``."""
        return f"{self.holder}/{secrets.token_hex(12)}"

    def take_reading(self, syscall_id: str, agent_id: str, *, credential: bool, snapshot: bool) -> "Reading":
        """:meth:`take`, and in the same command what the worker's next steps read (the load step's one round
        trip): the agent's credential record (if ``credential``), the syscall's snapshot (if ``snapshot``), and the
        cancel fields it heeds (:func:`aios.worker.cancels.heeded`)."""
        token = self.token()
        return self._reading(syscall_id, token, self._take(*self._reading_call(syscall_id, agent_id, token,
                                                                                credential, snapshot)))

    def send_reading(self, syscall_id: str, agent_id: str, *, credential: bool, snapshot: bool) -> "Preload | None":
        """Send :meth:`take_reading`'s command for a message as it arrives (the worker's event loop), without
        waiting for its reply: its round trip then runs while the message is handed to a pool thread, which reads
        the reply with :meth:`read_reading`. ``None`` if it could not be sent (the pool thread asks itself)."""
        token = self.token()
        keys_, args = self._reading_call(syscall_id, agent_id, token, credential, snapshot)
        pool = self.redis.connection_pool
        try:
            conn: Any = pool.get_connection()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return None
        try:
            conn.send_command("EVALSHA", self._take.sha, len(keys_), *keys_, *args)
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            conn.disconnect()
            pool.release(conn)
            return None
        return Preload(syscall_id, agent_id, credential, snapshot, token, conn)

    def read_reading(self, pre: "Preload") -> "Reading":
        """The reading :meth:`send_reading` asked for. A reply that did not come (a dropped connection, a server
        that forgot the script) is asked again with the same token, which the claim script takes as this very
        delivery's."""
        got = self._reply(pre)
        if got is None:
            got = self._take(*self._reading_call(pre.syscall_id, pre.agent_id, pre.token, pre.credential,
                                                 pre.snapshot))
        return self._reading(pre.syscall_id, pre.token, got)

    def discard(self, pre: "Preload") -> None:
        """A preloaded reading no step will use (the message was refused before the load step, or revoked): its
        reply read off the connection, and the claim it took given up."""
        got = self._reply(pre)
        if got is not None and int(got[0][0]) == 1:
            self._release(keys=[keys.claim(pre.syscall_id)], args=[pre.token])

    def _reply(self, pre: "Preload") -> Any:
        pool = self.redis.connection_pool
        try:
            return pre.conn.read_response()
        except redis.exceptions.NoScriptError:
            return None
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            pre.conn.disconnect()
            return None
        finally:
            pool.release(pre.conn)

    def _reading_call(self, syscall_id: str, agent_id: str, token: str, credential: bool,
                      snapshot: bool) -> tuple[list[str], list[Any]]:
        return ([keys.claim(syscall_id), keys.result(syscall_id), keys.agent(agent_id), keys.context(syscall_id),
                 keys.cancel(syscall_id)],
                [token, self._lease_ms, int(credential), int(snapshot), agent_id, keys.CANCEL_ANY])

    def _reading(self, syscall_id: str, token: str, got: Any) -> "Reading":
        claimed, record, snap, cancels = got
        return (self.settle(syscall_id, token, claimed), _pairs(record), _pairs(snap), cancels)

    def settle(self, syscall_id: str, token: str, reply: "list[Any]", *, again: bool = True
               ) -> tuple[str, str | float]:
        """What :meth:`take` returns, from the claim script's ``reply``. A claim held by a dead worker process of
        this host is taken over: its token is deleted (only if it still holds the claim) and the claim taken again."""
        state, ttl_ms = reply[0], reply[1]
        if int(state) == 0:
            return ANSWERED, 0
        if int(state) == 2:
            stale = reply[2] if len(reply) > 2 else None
            if again and stale is not None and holder_dead(stale):
                log.warning("syscall %s: the worker process holding its claim is gone: this delivery takes it over",
                            syscall_id)
                self.release_stale(syscall_id, stale)
                self.taken_over += 1
                token = self.token()
                return self.settle(syscall_id, token, self._take(
                    keys=[keys.claim(syscall_id), keys.result(syscall_id)], args=[token, self._lease_ms]), again=False)
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

    def release_stale(self, syscall_id: str, token: "bytes | str") -> bool:
        """Delete the claim of a dead holder (only while ``token`` still holds it)."""
        return bool(int(self._release(keys=[keys.claim(syscall_id)], args=[token])))

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
