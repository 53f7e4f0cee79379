"""The built-in agents end to end on the real local model (SmolLM2-135M), through the whole kernel.

The model is too small to be right: these tests check what each agent DID, as the kernel saw it (its syscalls
per resource, counted by the workers for its verified identity; the audit log; approvals) and as it left it (its
files, their versions, its memory), against the transcript the agent kept. Greedy decoding makes each run
repeatable; where the tests need one path of a loop (a retry), the task makes it certain (a product too large for
the model, acceptance tests no code can pass), never a fake model. Kept short: small ``max_tokens``, few steps.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from aios import AccessDenied, Kernel
from aios.ops.embedded import LocalKernel
from aios.policy.approvals import Approvals
from aios.policy.audit import AuditLog
from aios.policy.identity import Credentials
from aios.settings import QUEUES, Settings
from aios.state import keys
from aios_agents.coder import agent as coder
from aios_agents.pair import agent as pair
from aios_agents.plan_execute import agent as plan_execute
from aios_agents.reflexion import agent as reflexion
from tests.conftest import BROKERS, authorized, base_settings, make_broker_settings

pytestmark = pytest.mark.integration


def _sandbox_lacks_layers() -> bool:
    """Whether this machine cannot give the python tool its own uid and namespaces (then the kernel runs it
    degraded, AIOS_SANDBOX_DEGRADED, as a machine without namespaces must: the agent is what is tested here)."""
    from aios.services.tools.sandbox import missing_layers, run_sandboxed

    return bool(missing_layers(run_sandboxed("pass", allow_degraded=True, timeout_s=10).isolation))


@pytest.fixture(scope="module")
def lk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKernel]:
    # Approvals on, as by default: the pair's share must be approved by an operator (a thread of the test).
    settings = base_settings(tmp_path_factory.mktemp("agents"), llm_n_ctx=2048, approvals="required",
                             sandbox_degraded=_sandbox_lacks_layers())
    with LocalKernel(settings) as kernel:
        yield kernel


@pytest.fixture(scope="module", params=BROKERS)
def pair_kernel(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKernel]:
    """The pair on each broker: two agents' own broker users, reply channels and signatures side by side."""
    settings = make_broker_settings(request.param, tmp_path_factory.mktemp(f"pair-{request.param}"), request,
                                    llm_n_ctx=2048, approvals="required")
    with LocalKernel(settings, resources=["llm", "storage"]) as kernel:
        yield kernel


def syscalls(settings: Settings, agent: str) -> dict[str, int]:
    """The syscalls of ``agent`` the workers answered, per resource (``llm``, ``tool``, ``storage``: memory and
    files), as the kernel counted them for the agent's verified id."""
    state = redis.Redis.from_url(settings.state_redis_url())
    return {resource: int(state.hget(keys.agent_stats(resource), f"{agent}:n") or 0) for resource in QUEUES}


def transcript(k: Kernel) -> dict[str, Any]:
    """The run's transcript, found as a reader would: the agent's memory names its file."""
    last = k.memory_get("last_answer")
    record: dict[str, Any] = json.loads(k.read_file(last["transcript"]))
    assert record["answer"] == last["answer"]
    return record


def kinds(record: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [s for s in record["steps"] if s["kind"] == kind]


def test_reflexion_retries_with_reflections_kept_in_memory(lk: LocalKernel) -> None:
    # The 135M model cannot multiply six digits by three: the calculator's verdict fails every trial.
    task = "What is 123456 * 789?"
    with authorized(lk.settings, "reflexion-e2e") as k:
        answer = reflexion.run(k, task, max_trials=2)
        counted = syscalls(lk.settings, "reflexion-e2e")
        record = transcript(k)
        lessons = k.memory_get("reflections/what-is-123456-789")
    assert record["answer"] == answer and record["trials"] == 2 and record["passed"] is False
    attempts, verdicts = kinds(record, "attempt"), kinds(record, "evaluation")
    assert [a["trial"] for a in attempts] == [v["trial"] for v in verdicts] == [1, 2]
    assert all(v["by"] == "calculator" and not v["passed"] for v in verdicts)
    reflections = kinds(record, "reflection")  # one per failed trial (a cut-off reply is asked once more)
    assert len(lessons) == 2 and 2 <= len(reflections) <= 4
    # What the kernel counted for this agent: one LLM call per answer and per reflection asked, the calculator
    # once (the ground truth), memory read once and written once per lesson and once at the end, files once.
    assert counted == {"llm": 2 + len(reflections), "tool": 1, "storage": 1 + 2 + 1 + 1}
    # A second run of the task starts from the lessons kept.
    with authorized(lk.settings, "reflexion-e2e") as k:
        reflexion.run(k, task, max_trials=1)
        assert kinds(transcript(k), "recall") == [{"kind": "recall", "lessons": 2}]
        assert len(k.memory_get("reflections/what-is-123456-789")) == 3


def test_reflexion_without_arithmetic_is_judged_by_the_model(lk: LocalKernel) -> None:
    with authorized(lk.settings, "reflexion-e2e-2") as k:
        reflexion.run(k, "Name the capital of France.", max_trials=1)
        counted = syscalls(lk.settings, "reflexion-e2e-2")
        record = transcript(k)
    (verdict,) = kinds(record, "evaluation")
    asked, reflections = kinds(record, "self_evaluation"), kinds(record, "reflection")
    assert verdict["by"] == "self" and 1 <= len(asked) <= 2 and not kinds(record, "ground_truth")
    assert bool(reflections) == (not verdict["passed"])  # a failed trial ends in a reflection, a passed one not
    assert counted == {"llm": 1 + len(asked) + len(reflections), "tool": 0,
                       "storage": 1 + (0 if verdict["passed"] else 1) + 2}


def test_plan_execute_runs_each_planned_step_and_the_plan_file_keeps_the_history(lk: LocalKernel) -> None:
    with authorized(lk.settings, "planner-e2e") as k:
        answer = plan_execute.run(k, "Multiply 6 by 7, then count the words in 'to be or not to be'.")
        counted = syscalls(lk.settings, "planner-e2e")
        record = transcript(k)
        plan = json.loads(k.read_file(record["plan_file"]))
        versions = k.file_versions(record["plan_file"])
    assert answer == record["answer"] == plan["answer"]
    executed = kinds(record, "execute")
    assert 1 <= len(plan["plan"]) <= plan_execute.MAX_STEPS
    assert [e["step"] for e in executed] == [r["step"] for r in plan["results"]] == list(range(1, len(plan["plan"]) + 1))
    assert [e["tool"] for e in executed] == [s["tool"] for s in plan["plan"]]
    # Written when planned, after each step, and with the answer: compare-and-set each time, nothing lost.
    assert [v["version"] for v in versions] == list(range(1, len(executed) + 3))
    tools = sum(e["tool"] != "llm" for e in executed)
    planning = len(kinds(record, "plan"))
    assert counted == {
        "llm": planning + (len(executed) - tools) + 1, "tool": tools, "storage": len(executed) + 2 + 2}


def test_coder_runs_its_code_in_the_sandbox_and_retries_until_its_attempts_run_out(lk: LocalKernel) -> None:
    # No code passes both acceptance tests: every attempt fails on an AssertionError and is retried, to the bound.
    task = "Write a Python function add(a, b) that returns a + b.\nassert add(1, 1) == 2\nassert add(1, 1) == 3"
    with authorized(lk.settings, "coder-e2e") as k:
        answer = coder.run(k, task, max_attempts=2)
        counted = syscalls(lk.settings, "coder-e2e")
        record = transcript(k)
        versions = k.file_versions(record["code_file"])
        last_code = k.read_file(record["code_file"])
    assert answer.startswith("no attempt passed its tests (2 tried)")
    assert record["attempts"] == 2 and record["passed"] is False
    attempts = kinds(record, "attempt")
    assert [a["attempt"] for a in attempts] == [a["version"] for a in attempts] == [1, 2]
    assert [v["version"] for v in versions] == [1, 2]  # each attempt's code is a version of the one file
    for a in attempts:  # it ran, in the sandbox, and failed; what it gave went back to the model
        assert a["acceptance"] == 2 and not a.get("infrastructure") and not a["passed"]
        assert a["exit_code"] != 0 or a["timed_out"]
        assert a["feedback"] and (a["timed_out"] or "Error" in a["feedback"])
    assert last_code.strip()
    assert counted == {"llm": 2, "tool": 2, "storage": 2 + 2}


def test_coder_passes_when_its_code_and_tests_hold(lk: LocalKernel) -> None:
    """Whatever the model writes, the verdict is the sandbox's: pass exactly when the run reached its end."""
    with authorized(lk.settings, "coder-e2e-2") as k:
        coder.run(k, "Write a function double(x) that returns 2 * x.\nassert double(2) == 4", max_attempts=2)
        record = transcript(k)
    attempts = kinds(record, "attempt")
    assert [a["passed"] for a in attempts[:-1]] == [False] * (len(attempts) - 1)  # it stops at the first pass
    assert record["passed"] == attempts[-1]["passed"] and (record["passed"] or len(attempts) == 2)
    for a in attempts:
        assert a["passed"] == (a["exit_code"] == 0 and not a["timed_out"] and a["feedback"] == "")
    assert syscalls(lk.settings, "coder-e2e-2")["tool"] == len(attempts)


def _operator(settings: Settings, writer: str, approve: bool, seen: list[dict[str, Any]],
              stop: threading.Event) -> None:
    """The operator: reads what the writer's pending request would do, then approves or denies it."""
    approvals = Approvals(settings)
    while not stop.wait(0.2):
        for request in approvals.pending():
            if request.agent_id == writer:
                seen.append(request.public())
                approvals.approve(request.id) if approve else approvals.deny(request.id, "not this one")


def test_pair_writer_and_reviewer_work_on_one_shared_file_as_two_agents(pair_kernel: LocalKernel) -> None:
    lk = pair_kernel
    writer, reviewer = "pair-e2e", "pair-e2e-reviewer"
    Credentials(lk.settings).create(reviewer)  # as `aios run pair` does for the peers the agent names
    seen: list[dict[str, Any]] = []
    stop = threading.Event()
    operator = threading.Thread(target=_operator, args=(lk.settings, writer, True, seen, stop), daemon=True)
    operator.start()
    try:
        with authorized(lk.settings, writer) as k:
            final = pair.run(k, "A two-sentence note inviting the team to Friday's demo.")
            counted = {who: syscalls(lk.settings, who) for who in (writer, reviewer)}
            record = transcript(k)
            path = record["draft_file"]
            versions = k.file_versions(path)
            text, version = k.read_file_versioned(path)
            own_transcript = k.memory_get("last_answer")["transcript"]
    finally:
        stop.set()
        operator.join(timeout=5)
    assert record["reviewer"] == reviewer and text == final and version == 3
    # The history of the one file: the writer's draft, the reviewer's edit (on the version it read), the final.
    assert [v["version"] for v in versions] == [1, 2, 3]
    assert [(s["kind"], s["agent"], s.get("version")) for s in record["steps"] if s["kind"] != "review"] == [
        ("draft", writer, 1), ("share", writer, None), ("edit", reviewer, 2), ("final", writer, 3)]
    assert kinds(record, "edit")[0]["read_version"] == 1
    # The share waited for the operator, who read exactly what it grants.
    assert len(seen) == 1 and seen[0]["summary"] == f"storage share of {writer}:/{path} with {reviewer} (write)"
    # The audit log: the reviewer's read and write of the writer's file, each allowed by the share of that file.
    audit = AuditLog(redis.Redis.from_url(lk.settings.state_redis_url())).query(agent=reviewer)
    used = sorted((e["op"], e["owner"], e["target"], e["decision"]) for e in audit if e["actor"] == reviewer)
    assert used == [("read", writer, path, "allow"), ("write", writer, path, "allow")]
    assert all(e["reason"] == "file shared with it (write)" for e in audit if e["actor"] == reviewer)
    # Two identities, each with its own syscalls, counted by the kernel under each verified id.
    reviews = len(kinds(record, "review"))
    # writer: the draft, the share, the read of the edit, the final, the transcript and its memory entry;
    # reviewer: the read and the edit of the writer's file, and its own review record.
    assert counted == {writer: {"llm": 2, "tool": 0, "storage": 6}, reviewer: {"llm": reviews, "tool": 0, "storage": 3}}
    # The share reached that one file and no other of the writer's.
    with Kernel(reviewer, settings=lk.settings) as r:
        with pytest.raises(AccessDenied):
            r.read_file(own_transcript, owner=writer)
        assert r.list_files(f"reviews/{writer}")["entries"][0]["name"] == f"{path.rsplit('/', 1)[-1]}.json"


def test_pair_stops_at_the_draft_when_the_operator_denies_the_share(lk: LocalKernel) -> None:
    writer, reviewer = "pair-denied", "pair-denied-reviewer"
    Credentials(lk.settings).create(reviewer)
    seen: list[dict[str, Any]] = []
    stop = threading.Event()
    operator = threading.Thread(target=_operator, args=(lk.settings, writer, False, seen, stop), daemon=True)
    operator.start()
    try:
        with authorized(lk.settings, writer) as k:
            answer = pair.run(k, "One line about tea.")
            counted = {who: syscalls(lk.settings, who) for who in (writer, reviewer)}
            record = transcript(k)
            versions = k.file_versions(record["draft_file"])
    finally:
        stop.set()
        operator.join(timeout=5)
    assert len(seen) == 1 and answer == record["answer"]
    assert [s["kind"] for s in record["steps"]] == ["draft", "share"] and "denied" in record["steps"][1]["error"]
    assert [v["version"] for v in versions] == [1]  # nobody but the writer touched it
    # The reviewer made no syscall at all. The writer: its draft (LLM, file) and its transcript (file, memory); the
    # share was answered by the operator's denial, not served by a worker, so no worker counted it.
    assert counted == {writer: {"llm": 1, "tool": 0, "storage": 3}, reviewer: {"llm": 0, "tool": 0, "storage": 0}}


def test_aios_run_pair_issues_the_reviewer_its_own_identity(tmp_path: Path) -> None:
    """`aios run pair` alone: an embedded kernel, credentials for the writer and its reviewer, both at work."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOS_")}
    env.update(AIOS_DATA_DIR=str(tmp_path), AIOS_LLM_N_CTX="2048", AIOS_APPROVALS="off")
    done = subprocess.run([sys.executable, "-m", "aios", "run", "pair", "One sentence about tea."], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    files = tmp_path / "agents"
    assert list((files / "pair" / "files" / "drafts").iterdir())  # the writer's draft
    assert list((files / "pair-reviewer" / "files" / "reviews" / "pair").iterdir())  # the reviewer's own record
