"""What every resource service is to the worker pipeline: one typed protocol.

A service answers the syscalls of one resource (the LLM core, the tool manager, the storage manager). Besides
``handle``, it tells the pipeline which syscalls are irreversible (they wait for an operator's approval) and
which concurrency limits it declares (held as leases across every worker), and it may be told how to see
whether other syscalls wait (a preemptible service suspends a generation only then), and asked to stop a running
syscall (a cancel).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from aios.state.context import Snapshot
from aios.wire.errors import AIOSError
from aios.wire.syscalls import Syscall


@runtime_checkable
class Service(Protocol):
    def handle(self, syscall: Syscall, snapshot: Snapshot | None = None) -> Any:
        """Run one syscall (continuing a suspended one from ``snapshot``) and return its JSON-able result, or raise
        an :class:`~aios.wire.errors.AIOSError` (or :class:`~aios.state.context.Preempted`)."""

    def irreversible(self, syscall: Syscall) -> str | None:
        """Why ``syscall`` needs an operator's approval before it runs, or ``None``."""

    def at_most_once(self, syscall: Syscall) -> bool:
        """Whether ``syscall`` must never start twice: a copy delivered after one started it (a dead worker, a
        lapsed lease) is answered :class:`~aios.wire.errors.Interrupted` instead of running again."""

    def concurrency_limit(self, syscall: Syscall) -> int | None:
        """A limit the service declares on how many such syscalls run at once, fleet-wide, or ``None``."""

    def watch_queue(self, others_waiting: Callable[[], bool]) -> None:
        """Called once by the worker: ``others_waiting()`` says whether syscalls wait on this worker's queue."""

    def keep_checkpoints(self, save: Callable[[str, Snapshot], None]) -> None:
        """Called once by the worker: ``save(syscall_id, snapshot)`` stores a running syscall's checkpoint (an LLM
        generation's), which the worker hands back to ``handle`` if the syscall is delivered again."""

    def abort(self, syscall_id: str, exc: AIOSError) -> bool:
        """Stop the running syscall ``syscall_id`` soon, its ``handle`` raising ``exc`` (a cancel, a service-time
        limit); called from another thread. ``False``: this service cannot stop it (it is answered when it returns)."""


class BaseService:
    """Defaults: nothing irreversible, no declared limits, no use for the queue probe."""

    def handle(self, syscall: Syscall, snapshot: Snapshot | None = None) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def irreversible(self, syscall: Syscall) -> str | None:
        return None

    def at_most_once(self, syscall: Syscall) -> bool:
        return False

    def concurrency_limit(self, syscall: Syscall) -> int | None:
        return None

    def watch_queue(self, others_waiting: Callable[[], bool]) -> None:
        return None

    def keep_checkpoints(self, save: Callable[[str, Snapshot], None]) -> None:
        return None

    def abort(self, syscall_id: str, exc: AIOSError) -> bool:
        return False
