"""Cancellation and service-time limits: a cancel is recorded in the kernel's Redis, a queued syscall heeds it
before it starts, and a running one is stopped by the worker that runs it; so is one that runs past its deadline
or ``AIOS_MAX_SYSCALL_TIMEOUT_S`` (answered ``DeadlineExceeded``).

Who may cancel what. A cancel is recorded at ``aios:cancel:<id>`` (a hash) under the name of who asked: an agent's
cancel is a signed control syscall (:class:`~aios.wire.syscalls.CancelSyscall`) that a worker verifies like any
other before it records it under the *verified* agent id; an operator's (``aios cancel``, Celery's
``app.control.revoke``) is recorded as ``*``. A syscall heeds only a cancel recorded under its own agent's name or
``*``, so an agent that names another agent's syscall records something nobody reads (an agent cannot write the
kernel's Redis at all; its broker user only pushes syscalls). Recording is one script (``lua/cancel.lua``) that
refuses once the syscall is answered.

Where it takes effect. The load step reads the cancel in its one round trip, and a syscall that heeds one is
answered :class:`~aios.wire.errors.Cancelled` instead of starting (:mod:`aios.worker.steps.cancel`). While a
syscall runs, this module's watch pass (every :data:`WATCH_S`, only while the worker runs something) reads the
cancels of the syscalls this worker runs, and Celery's own revoked ids (a ``revoke`` broadcast reaches every
worker), and asks the service to abort the syscall: the LLM engine ends the generation at its next step and
frees its slot; the tool service stops waiting for the tool (its thread is abandoned, counted); the run step then
answers ``Cancelled``. The same pass stops a syscall at its service-time limit (its deadline, or
``AIOS_MAX_SYSCALL_TIMEOUT_S`` after it started) the same way, answered ``DeadlineExceeded``; a service that cannot
stop one (storage) answers it when it returns. A Celery ``revoke`` of a message still queued is acked
by Celery itself without running the task: :func:`on_revoked` records it and answers ``Cancelled`` through the
pipeline, so the caller is told.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from aios.settings import Settings
from aios.state import keys, scripts
from aios.state.periodic import Periodic
from aios.wire.errors import AIOSError, Cancelled, DeadlineExceeded

if TYPE_CHECKING:
    from aios.worker.runtime import Runtime

log = logging.getLogger("aios.worker")

WATCH_S = 0.25
"""How often a worker looks for cancels of the syscalls it runs (one pipelined read, only while it runs some)."""


def heeded(fields: "Sequence[bytes | str | None]") -> bool:
    """Whether the cancel fields read for a syscall (``HMGET aios:cancel:<id> <its agent> *``) cancel it."""
    return any(f is not None for f in fields)


def cancelled_error(syscall_id: str, running: bool) -> Cancelled:
    where = "while it ran" if running else "before it started"
    return Cancelled(f"syscall {syscall_id} was cancelled {where}")


def limit_error(syscall_id: str, ran_s: float, why: str) -> DeadlineExceeded:
    return DeadlineExceeded(f"syscall {syscall_id} was stopped after running {ran_s:.1f} s: {why}")


@dataclass
class _Running:
    agent_id: str
    abort: Callable[[AIOSError], bool]
    started: float
    limit_at: float
    """Unix time it must be over by: just past its deadline (``Syscall.stop_at``), or its start +
    ``AIOS_MAX_SYSCALL_TIMEOUT_S``."""
    aborted: bool = False
    told: bool = False


def record(client: redis.Redis, settings: Settings, target: str, requester: str) -> bool:
    """Record a cancel of ``target`` by ``requester`` (a verified agent id, or ``*``: an operator); ``False`` if
    it is answered already. It lives past every deadline of a syscall made before it."""
    ttl_s = int(settings.syscalls.max_syscall_timeout_s) + 60
    return bool(int(scripts.register(client, "cancel")(
        keys=[keys.result(target), keys.cancel(target)], args=[requester, f"{time.time():.3f}", ttl_s])))


class Cancels:
    """One per worker process: records cancels, and stops the running syscalls that heed one."""

    def __init__(self, rt: "Runtime") -> None:
        self.redis = rt.redis
        self.settings = rt.settings
        self.max_run_s = rt.settings.syscalls.max_syscall_timeout_s
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self.periodic = Periodic("aios-cancel-watch", WATCH_S, self.watch)

    def record(self, target: str, requester: str) -> bool:
        """:func:`record` on the kernel's Redis."""
        return record(self.redis, self.settings, target, requester)

    @staticmethod
    def read_in(pipe: "redis.client.Pipeline", syscall_id: str, agent_id: str) -> None:
        """Queue the read of the cancels ``syscall_id`` heeds on ``pipe`` (its reply goes to :func:`heeded`)."""
        pipe.hmget(keys.cancel(syscall_id), [agent_id, keys.CANCEL_ANY])

    @contextmanager
    def running(self, syscall_id: str, agent_id: str, abort: Callable[[AIOSError], bool],
                deadline: float | None = None) -> Iterator[None]:
        """While the block runs, a cancel of ``syscall_id`` (by ``agent_id`` or an operator), or its service-time
        limit (``deadline``, and ``AIOS_MAX_SYSCALL_TIMEOUT_S`` from now), calls ``abort``."""
        now = time.time()
        limit_at = now + self.max_run_s if deadline is None else min(deadline, now + self.max_run_s)
        with self._lock:
            self._running[syscall_id] = _Running(agent_id, abort, now, limit_at)
        try:
            yield
        finally:
            with self._lock:
                self._running.pop(syscall_id, None)

    def watch(self, now: float | None = None) -> None:
        """One pass: stop the running syscalls past their service-time limit, and those that heed a cancel (or
        that Celery's ``revoke`` named)."""
        now = time.time() if now is None else now
        with self._lock:
            running = [(sid, r) for sid, r in self._running.items() if not r.aborted]
        for sid, r in running:
            if now >= r.limit_at:
                why = ("past its deadline (its timeout_s); raise timeout_s"
                       if r.limit_at < r.started + self.max_run_s - 1e-6
                       else f"the service-time limit of {self.max_run_s:g} s (AIOS_MAX_SYSCALL_TIMEOUT_S); split the "
                            "work, or the operator may raise the limit")
                r.aborted = r.abort(limit_error(sid, now - r.started, why))
                if r.aborted or not r.told:
                    log.warning("syscall %s ran past %s; %s", sid, why,
                                "stopped" if r.aborted else "its service cannot stop it: answered when it returns")
                r.told = True
        running = [(sid, r) for sid, r in running if not r.aborted and now < r.limit_at]
        if not running:
            return
        revoked = _celery_revoked()
        pipe = self.redis.pipeline(transaction=False)
        for sid, r in running:
            self.read_in(pipe, sid, r.agent_id)
        for (sid, r), fields in zip(running, pipe.execute(), strict=True):
            if sid in revoked and not heeded(fields):
                self.record(sid, keys.CANCEL_ANY)
            elif not heeded(fields):
                continue
            # Asked again next pass while the service cannot stop it yet (an LLM request not yet submitted).
            r.aborted = r.abort(cancelled_error(sid, running=True))
            if r.aborted or not r.told:
                log.info("syscall %s: cancelled while it ran; %s", sid,
                         "stopped" if r.aborted else "its service cannot stop it now: answered when it returns")
            r.told = True


def _celery_revoked() -> Any:
    """The ids a Celery ``revoke`` broadcast named to this worker (an empty set outside a worker)."""
    try:
        from celery.worker import state
    except ImportError:  # pragma: no cover - celery is a dependency
        return set()
    return state.revoked


def on_revoked(rt: "Runtime", request: Any) -> None:
    """Celery's ``task_revoked`` signal: Celery acked a revoked message without running it. Record the cancel
    (an operator's: only who can reach the workers' control channel revokes) and answer it through the pipeline,
    which finds the cancel and answers ``Cancelled`` once (nothing runs)."""
    message_id = getattr(request, "id", None)
    if not isinstance(message_id, str) or not keys_ok(message_id):
        return
    try:
        rt.drop_preload(message_id)  # read before the cancel was recorded: the pipeline reads again
        rt.cancels.record(message_id, keys.CANCEL_ANY)
        rt.execute(message_id, tuple(getattr(request, "args", ()) or ()), dict(getattr(request, "kwargs", {}) or {}),
                   worker=getattr(request, "hostname", None) or rt.resource)
    except Exception:  # a signal handler must not break the consumer; the message is acked already
        log.exception("could not answer the revoked syscall %s", message_id)


def keys_ok(syscall_id: str) -> bool:
    return 8 <= len(syscall_id) <= 64 and all(c.isalnum() or c in "_-" for c in syscall_id)
