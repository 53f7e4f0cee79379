"""A code agent: the model writes Python with its own tests, the kernel's sandboxed ``python`` tool runs it, and a
failure goes back to the model with the traceback, at most ``max_attempts`` times.

An attempt passes when the program ran to its end: the model's code and its ``assert`` lines, then the
acceptance tests given with the task (the task's lines that start with ``assert``), then a line the agent
adds that prints a fresh random marker; exit status 0 and the marker on stdout mean every assert held. Code
without a single assert (neither its own nor the task's) does not pass: the agent asks for tests.
Each attempt's code is a new version of one file, ``code/<task>-<id>.py``, so the file's versions are the
attempts; the transcript says what each run gave.
"""

from __future__ import annotations

import ast
import re
import uuid
from typing import Any

from aios import AIOSError, Kernel
from aios_agents.common import Steps, save_transcript, slug

MAX_ATTEMPTS = 3
CODE_TOKENS = 256
RUN_TIMEOUT_S = 10
FEEDBACK_CHARS = 400  # the end of a traceback: where the error is; the rest would crowd a small context
SYSTEM = (
    "You write Python 3 code that solves the task, followed by assert statements that test it. "
    "Reply with one ```python code block and nothing else."
)
_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.S)


def run(kernel: Kernel, task: str, *, max_attempts: int = MAX_ATTEMPTS, verbose: bool = False) -> str:
    steps: Steps = []
    acceptance = [line.strip() for line in task.splitlines() if line.strip().startswith("assert ")]
    path = f"code/{slug(task)}-{uuid.uuid4().hex[:8]}.py"
    messages: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": task}]
    passed, attempt, stdout = False, 0, ""
    for attempt in range(1, max_attempts + 1):
        code = extract_code(kernel.llm_chat(messages, max_tokens=CODE_TOKENS))
        version = kernel.write_file(path, code)["version"]
        outcome = _check(kernel, code, acceptance)
        passed, stdout = outcome["passed"], outcome.get("stdout", "")
        steps.append({"kind": "attempt", "attempt": attempt, "version": version, **outcome})
        if verbose:
            print(f"  attempt {attempt} ({path} v{version}): {'passed' if passed else outcome['feedback']}")
        if passed or outcome.get("infrastructure"):  # a sandbox that refuses to run will refuse the next try too
            break
        # Only the last attempt and what it gave: a small model's context holds little more than that.
        messages = [messages[0], messages[1], {"role": "assistant", "content": f"```python\n{code}\n```"},
                    {"role": "user", "content": f"{outcome['feedback']}\nFix the code. Reply with the whole "
                                                "corrected code in one ```python block."}]
    answer = (f"passed its tests in attempt {attempt}: {path}" if passed else
              f"no attempt passed its tests ({attempt} tried): {path}")
    if stdout.strip():
        answer += f"\n{stdout.strip()}"
    save_transcript(kernel, task, answer, steps, code_file=path, attempts=attempt, passed=passed)
    return answer


def extract_code(reply: str) -> str:
    """The first fenced code block of a reply, else the whole reply."""
    found = _FENCE.search(reply)
    return (found.group(1) if found else reply).strip()


def count_asserts(code: str) -> int | None:
    """How many assert statements ``code`` holds; ``None`` if it is not valid Python."""
    try:
        return sum(isinstance(node, ast.Assert) for node in ast.walk(ast.parse(code)))
    except (SyntaxError, ValueError):
        return None


def _check(kernel: Kernel, code: str, acceptance: list[str]) -> dict[str, Any]:
    """Run ``code``, its asserts and the task's, in the sandbox: ``passed``, what it gave, and feedback for a retry."""
    own = count_asserts(code)
    marker = f"AIOS-TESTS-PASSED-{uuid.uuid4().hex}"
    program = "\n".join([code, "", *acceptance, f"print({marker!r})"])
    try:
        ran = kernel.call_tool("python", code=program, timeout_s=RUN_TIMEOUT_S)
    except AIOSError as exc:  # not the code's fault: the tool refused or failed
        return {"passed": False, "infrastructure": True, "asserts": own, "feedback": f"the python tool failed: {exc}"}
    stdout = str(ran.get("stdout", "")).replace(marker, "").rstrip()
    result: dict[str, Any] = {"asserts": own, "acceptance": len(acceptance), "exit_code": ran.get("exit_code"),
                              "timed_out": bool(ran.get("timed_out")), "stdout": stdout[-FEEDBACK_CHARS:]}
    tail = str(ran.get("stderr", ""))[-FEEDBACK_CHARS:]
    if ran.get("timed_out"):
        feedback = f"It ran longer than {RUN_TIMEOUT_S} s and was stopped."
    elif ran.get("exit_code") != 0 or marker not in str(ran.get("stdout", "")):
        feedback = f"Running it failed:\n{tail}" if tail else "It stopped before its tests finished."
    elif not own and not acceptance:
        feedback = "It ran, but it has no tests: add assert statements that check it."
    else:
        return {"passed": True, **result, "feedback": ""}
    return {"passed": False, **result, "feedback": feedback}
