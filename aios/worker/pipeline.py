"""The worker pipeline: small steps around a syscall, in the spirit of dramatiq's middleware.

Each step has ``before(call)``, run in order, and ``after(call)``, run in reverse order for every step whose
``before`` ran, even when a later one failed (as ``finally`` would). A step ends the pipeline early by raising an
:class:`~aios.worker.call.Outcome`. The last step (``RunStep``) sets ``call.response``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from aios.worker.call import Call

log = logging.getLogger("aios.worker")


class Step:
    """A no-op step: subclasses override what they need."""

    name = "step"

    def before(self, call: Call) -> None:
        return None

    def after(self, call: Call) -> None:
        return None


class Pipeline:
    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = list(steps)

    def run(self, call: Call) -> None:
        """Run the steps; an :class:`Outcome` raised by one propagates after the ``after`` hooks ran."""
        done: list[Step] = []
        try:
            for step in self.steps:
                step.before(call)
                done.append(step)
        finally:
            for step in reversed(done):
                try:
                    step.after(call)
                except Exception:  # an after-hook must not lose the answer
                    log.exception("step %s failed after syscall %s", step.name, call.message_id)

    def names(self) -> list[str]:
        return [s.name for s in self.steps]
