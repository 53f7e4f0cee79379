"""Run the syscall on the service. A generation whose time slice ended is suspended and requeued; a transient
backend failure is retried after a back-off; any other failure is the caller's answer, never a dead worker. A
cancel recorded while it runs, or its service-time limit, stops it where the service can (``Cancelled``,
``DeadlineExceeded``: :mod:`aios.worker.cancels`)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from aios.state import keys
from aios.state.context import Preempted
from aios.wire.errors import AIOSError, Cancelled, Interrupted
from aios.wire.syscalls import LLMSyscall
from aios.worker.call import Call, Done
from aios.worker.pipeline import Step

if TYPE_CHECKING:
    from aios.worker.runtime import Runtime

log = logging.getLogger("aios.worker")


def _streams_text(service: object) -> bool:
    """Whether the service sends a streamed syscall's text before its reply (the ``openai`` LLM backend does not:
    its text comes whole in the reply, so no stream is set up, and no chunk repeats it)."""
    streams = getattr(service, "streams_text", None)
    return True if streams is None else bool(streams())


class RunStep(Step):
    name = "run"

    def __init__(self, rt: "Runtime") -> None:
        self.rt = rt

    def _first_start(self, syscall_id: str) -> bool:
        """Mark ``syscall_id`` started; False if a copy had marked it before."""
        return bool(self.rt.redis.set(keys.started(syscall_id), self.rt.claims.holder, nx=True,
                                      ex=self.rt.settings.broker.result_ttl_s))

    def before(self, call: Call) -> None:
        syscall = call.need()
        assert call.payload is not None
        service = self.rt.service
        if call.snapshot is not None:  # continued from a suspension or a checkpoint, not started over
            self.rt.redis.hincrby(keys.STATS_DONE, f"{syscall.kind}:resumed", 1)
        if service.at_most_once(syscall) and not self._first_start(syscall.id):
            call.response = call.error(Interrupted(
                f"syscall {syscall.id} was started once already, by a worker that stopped before answering (killed, "
                f"or stalled past its lease); its tool is at-most-once, so it is not run again: its effect may or may "
                f"not have happened, check before asking again"))
            self.rt.redis.hincrby(keys.STATS_DONE, f"{syscall.kind}:interrupted", 1)
            call.counted = True
            return
        try:
            # A cancel recorded while it runs, or its time limit, asks the service to stop it (the watch pass).
            with self.rt.cancels.running(syscall.id, syscall.agent_id, lambda exc: service.abort(syscall.id, exc),
                                         deadline=syscall.stop_at):
                if isinstance(syscall, LLMSyscall) and syscall.stream and _streams_text(service):
                    with self.rt.streams.streaming(syscall, call.agent_key):
                        result = service.handle(syscall, call.snapshot)
                else:
                    result = service.handle(syscall, call.snapshot)
            call.response = call.ok(result)
            call.counted = True
        except Preempted as p:
            # Its time slice is up: the slice counts as the agent's service (the fair policy and status see it).
            self.rt.governor.account_slice(syscall, call.started, time.time())
            self.rt.requeue.suspend(call, p.snapshot)
            raise Done() from None
        except AIOSError as exc:
            if exc.transient and self.rt.requeue.retry_later(call, exc):
                raise Done() from None
            if isinstance(exc, Cancelled):
                self.rt.redis.hincrby(keys.STATS_DONE, f"{syscall.kind}:cancelled", 1)
            call.response = call.error(exc)
            call.counted = True
        except Exception as exc:  # a bug in a service must not kill the worker nor leave the caller waiting
            log.exception("syscall %s failed inside the %s service", syscall.id, self.rt.resource)
            call.response = call.error(AIOSError(f"{type(exc).__name__}: {exc} (a kernel bug: see the worker log)"))
            call.counted = True
