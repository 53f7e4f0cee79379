"""The worker pipeline's steps, one concern each, in the order a syscall meets them (see :func:`default_steps`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aios.worker.pipeline import Step

if TYPE_CHECKING:
    from aios.worker.runtime import Runtime


def default_steps(rt: "Runtime") -> list[Step]:
    """reply (its ``after`` answers, last of all), decode, state read, identity, idempotency (answered? else claim
    it: at most one start), cancel (cancelled: answered so, never started; a cancel syscall: recorded), deadline (and the timeout_s cap), placement, affinity
    (LLM workers: to the worker holding the agent's context), approval, quota, run (with preemption and
    retries)."""
    from aios.worker.steps.approval import ApprovalStep
    from aios.worker.steps.cancel import CancelStep
    from aios.worker.steps.deadline import DeadlineStep
    from aios.worker.steps.decode import DecodeStep
    from aios.worker.steps.idempotency import IdempotencyStep
    from aios.worker.steps.identity import IdentityStep
    from aios.worker.steps.load import LoadStep
    from aios.worker.steps.placement import PlacementStep
    from aios.worker.steps.quota import QuotaStep
    from aios.worker.steps.reply import ReplyStep
    from aios.worker.steps.run import RunStep

    steps: list[Step] = [ReplyStep(rt), DecodeStep(rt), LoadStep(rt), IdentityStep(rt), IdempotencyStep(rt),
                         CancelStep(rt), DeadlineStep(rt), PlacementStep(rt)]
    if rt.affinity is not None:
        from aios.worker.steps.affinity import AffinityStep

        steps.append(AffinityStep(rt))
    if rt.settings.security.approvals == "required":
        steps.append(ApprovalStep(rt))
    steps += [QuotaStep(rt), RunStep(rt)]
    return steps
