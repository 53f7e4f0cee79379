"""Supervision for ``aios up``: a worker (or the embedded Redis) that exits without being asked to starts again.

:class:`Backoff` is the pure policy: how long to wait before the next start of one process, given how long its
last run lasted (0.5 s doubling to 30 s; reset once a run lasted 60 s; after 5 quick exits in a row, a crash loop:
reported loudly and retried every 30 s). :class:`Supervisor` applies it to a :class:`~aios.ops.embedded.LocalKernel`
by polling (:meth:`Supervisor.poll`, one non-blocking step; :meth:`Supervisor.run`, the loop of ``aios up``), and
writes each process's restarts and last exit to the kernel's state (:data:`aios.state.keys.SUPERVISOR_RESTARTS`),
where ``aios status`` and ``aios metrics`` read them. An exit the operator asked for (``LocalKernel.stop``,
``stop_worker``) is never restarted.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis

from aios.state import keys
from aios.state.connections import state_client
from aios.wire.errors import KernelUnavailable

if TYPE_CHECKING:
    from aios.ops.embedded import LocalKernel

log = logging.getLogger("aios.supervisor")


@dataclass
class Backoff:
    """When to start one process again. Pure: no clock, no process; the caller says how long the last run lasted."""

    initial_s: float = 0.5
    max_s: float = 30.0
    reset_after_s: float = 60.0
    """A run at least this long was healthy: the next delay starts again at ``initial_s``."""
    crash_loop: int = 5
    """This many quick exits in a row (each run shorter than ``reset_after_s``) is a crash loop."""
    failures: int = 0
    """Quick exits in a row so far."""

    def on_exit(self, uptime_s: float) -> float:
        """The delay before the next start, after a run of ``uptime_s`` seconds ended."""
        if uptime_s >= self.reset_after_s:
            self.failures = 0
        self.failures += 1
        if self.crash_looping:
            return self.max_s
        return min(self.max_s, self.initial_s * 2.0 ** (self.failures - 1))

    @property
    def crash_looping(self) -> bool:
        return self.failures >= self.crash_loop


def describe_exit(returncode: int) -> str:
    """``code 1``, or the signal's name (``SIGKILL``) for a process a signal ended."""
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"code {returncode}"


@dataclass
class _Watch:
    backoff: Backoff
    started: float
    restarts: int = 0
    due: float | None = None
    """When a start is pending: the monotonic time it is due."""
    last_exit: str | None = None
    last_exit_at: float | None = None
    """Unix time of the last exit."""


Report = Callable[[str, bool], None]
"""``report(message, loud)``: loud for a crash loop or a start that failed."""


def _log_report(message: str, loud: bool) -> None:
    (log.error if loud else log.warning)(message)


@dataclass
class Supervisor:
    """Restart what exits in ``local``: its workers (and Flower), and the embedded Redis when ``local`` is
    persistent (its append-only file keeps the data); a throw-away Redis that exits stops the kernel instead
    (:meth:`poll` raises :class:`KernelUnavailable`)."""

    local: LocalKernel
    report: Report = _log_report
    policy: Backoff = field(default_factory=Backoff)
    """The template: each process gets its own copy."""
    interval_s: float = 0.25
    _watches: dict[str, _Watch] = field(default_factory=dict, init=False)
    _state: redis.Redis | None = field(default=None, init=False)

    def start(self) -> None:
        """Begin watching: this kernel's counts start at zero (the hash is reset, every process listed)."""
        self._state = state_client(self.local.settings, retrying=False)  # it restarts Redis: never wait on it
        now = time.monotonic()
        for name in self.local.supervised():
            self._watches[name] = self._new_watch(now)
        try:
            pipe = self._state.pipeline()
            pipe.delete(keys.SUPERVISOR_RESTARTS)
            for name in self._watches:
                pipe.hset(keys.SUPERVISOR_RESTARTS, f"{name}:restarts", 0)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("cannot reset the restart counts in the kernel's state: %s", exc)

    def close(self) -> None:
        if self._state is not None:
            self._state.close()
            self._state = None

    def _new_watch(self, now: float) -> _Watch:
        p = self.policy
        return _Watch(Backoff(p.initial_s, p.max_s, p.reset_after_s, p.crash_loop), started=now)

    def restarts(self) -> dict[str, int]:
        """Restarts so far, per process."""
        return {name: w.restarts for name, w in self._watches.items()}

    def poll(self) -> None:
        """One step: notice processes that exited, schedule their restart, start those that are due."""
        if self.local.stopping:
            return
        now = time.monotonic()
        for name, proc in self.local.supervised().items():
            watch = self._watches.get(name)
            if watch is None:  # started after start(): an added worker, Flower
                watch = self._watches[name] = self._new_watch(now)
            if watch.due is not None:
                if now >= watch.due:
                    self._respawn(name, watch)
                continue
            code = proc.poll()
            if code is not None:
                self._exited(name, watch, code, now)

    def run(self, until: threading.Event | None = None) -> None:
        """Poll until ``until`` is set (or forever: ``aios up`` leaves by Ctrl-C or SIGTERM)."""
        if self._state is None:
            self.start()
        try:
            while until is None or not until.is_set():
                self.poll()
                if until is None:
                    time.sleep(self.interval_s)
                else:
                    until.wait(self.interval_s)
        finally:
            self.close()

    def _exited(self, name: str, watch: _Watch, returncode: int, now: float) -> None:
        how = describe_exit(returncode)
        log_file = self.local.log_file(name)
        if name == "redis" and not self.local.persistent:
            raise KernelUnavailable(f"the embedded Redis exited ({how}) and it kept the kernel's state in memory "
                                    f"only, so it cannot come back; see {log_file}; stopping the kernel")
        delay = watch.backoff.on_exit(now - watch.started)
        watch.restarts += 1
        watch.due = now + delay
        watch.last_exit, watch.last_exit_at = how, time.time()
        message = (f"{name} exited ({how}); restart {watch.restarts} in {delay:g} s; its log: {log_file}")
        if watch.backoff.crash_looping:
            message = (f"CRASH LOOP: {name} exited {watch.backoff.failures} times in a row within "
                       f"{watch.backoff.reset_after_s:g} s of starting; " + message +
                       f" (retrying every {watch.backoff.max_s:g} s until it stays up)")
        self.report(message, watch.backoff.crash_looping)
        if name != "redis":  # Redis is down: its count is written once it is back
            self._record(name, watch)

    def _respawn(self, name: str, watch: _Watch) -> None:
        watch.due = None
        watch.started = time.monotonic()
        try:
            self.local.respawn(name)
        except (OSError, KernelUnavailable) as exc:  # seen as an exit at the next poll (Redis) or now
            self.report(f"restarting {name} failed: {exc}", True)
            if name != "redis":
                self._exited(name, watch, 1, time.monotonic())
            return
        if name == "redis":
            for other, w in self._watches.items():
                if w.restarts:
                    self._record(other, w)

    def _record(self, name: str, watch: _Watch) -> None:
        if self._state is None:
            return
        try:
            self._state.hset(keys.SUPERVISOR_RESTARTS, mapping={
                f"{name}:restarts": watch.restarts, f"{name}:last_exit": watch.last_exit or "",
                f"{name}:last_exit_at": watch.last_exit_at or 0.0})
        except redis.RedisError as exc:
            log.warning("cannot record %s's restart in the kernel's state: %s", name, exc)


__all__ = ["Backoff", "Supervisor", "describe_exit"]
