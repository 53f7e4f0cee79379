"""The pipeline: the steps in the order a syscall meets them, ``after`` hooks in reverse (as ``finally``) for
every step whose ``before`` ran, and an SDK-built syscall through the broker queue to its reply, in-process."""

from __future__ import annotations

import pytest

from aios.testing import StubService
from aios.worker.call import Call, Done
from aios.worker.pipeline import Pipeline, Step
from aios.worker.steps import default_steps
from tests.unit.conftest import MakeHarness, MakeSettings, tools

ORDER = ["reply", "decode", "load", "identity", "idempotency", "cancel", "deadline", "placement", "quota", "run"]


def test_the_default_order(harness: MakeHarness, make_settings: MakeSettings) -> None:
    assert harness("tool", StubService()).runtime.pipeline.names() == ORDER
    with_approvals = harness("tool", StubService(), settings=make_settings(approvals="required")).runtime
    assert with_approvals.pipeline.names() == [*ORDER[:8], "approval", *ORDER[8:]]
    assert [s.name for s in default_steps(with_approvals)] == with_approvals.pipeline.names()


class Recorder(Step):
    def __init__(self, name: str, log: list[str], *, stop: BaseException | None = None,
                 after_fails: bool = False) -> None:
        self.name, self.log, self.stop, self.after_fails = name, log, stop, after_fails

    def before(self, call: Call) -> None:
        self.log.append(f"before {self.name}")
        if self.stop is not None:
            raise self.stop

    def after(self, call: Call) -> None:
        self.log.append(f"after {self.name}")
        if self.after_fails:
            raise RuntimeError("broken after-hook")


def test_after_hooks_run_in_reverse_for_the_steps_that_began() -> None:
    log: list[str] = []
    pipeline = Pipeline([Recorder("a", log), Recorder("b", log, after_fails=True), Recorder("c", log, stop=Done()),
                         Recorder("d", log)])
    with pytest.raises(Done):
        pipeline.run(Call(message_id="m", args=(), kwargs={}, worker="w"))
    # c ended the pipeline in its before: it never began, so no after; b's failing after does not stop a's.
    assert log == ["before a", "before b", "before c", "after b", "after a"]


def test_a_runtime_takes_its_own_steps(harness: MakeHarness) -> None:
    log: list[str] = []
    h = harness("tool", StubService(), steps=lambda rt: [Recorder("only", log)])
    h.execute(h.sdk.tool_syscall("noop"))
    assert h.runtime.pipeline.names() == ["only"] and log == ["before only", "after only"]


def test_sdk_to_queue_to_pipeline_to_sdk(harness: MakeHarness, settings: object) -> None:
    h = harness("tool", tools(settings))  # type: ignore[arg-type]
    pending = [h.submit(h.sdk.tool_syscall("calculator", {"expression": f"{i} * 7"})) for i in range(3)]
    assert [q.message_id for q in h.queued()] == [p.id for p in pending]
    while h.deliver():
        pass
    assert [h.sdk.wait(p)["value"] for p in pending] == [0, 7, 14]  # what the caller's BLPOP reads
