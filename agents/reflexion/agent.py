"""Reflexion (Shinn et al., 2023): answer, have the answer judged, reflect on a failure, try again with the lessons.

Each trial is one greedy answer (``llm_chat``) to the task, given the lessons of earlier trials. The answer is
judged by an evaluator: where the task holds arithmetic, by the kernel's ``calculator`` tool (a ground truth
computed once, never shown to the actor: the answer must contain its value), else by the model itself
(JSON-constrained: ``correct``, ``critique``). A failed trial ends in a self-reflection (JSON-constrained:
``mistake``, ``next_time``), which is kept in the agent's memory under ``reflections/<task>``, so a later run of the
same task starts from them, and added to the next trial's prompt. At most ``max_trials`` trials: the loop is
bounded, and its length is in the transcript (``trials``) and in the kernel's count of the agent's LLM syscalls.
"""

from __future__ import annotations

from typing import Any

from aios import AIOSError, Kernel, NotFound
from aios_agents.common import Steps, arithmetic_in, json_step, numbers_in, save_transcript, slug

MAX_TRIALS = 3
KEPT_REFLECTIONS = 5  # the newest lessons kept per task: enough to steer, few enough for a small context
ANSWER_TOKENS = 48
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"correct": {"type": "boolean"}, "critique": {"type": "string", "maxLength": 80}},
    "required": ["correct", "critique"],
}
REFLECTION_SCHEMA = {
    "type": "object",
    "properties": {"mistake": {"type": "string", "maxLength": 64}, "next_time": {"type": "string", "maxLength": 64}},
    "required": ["mistake", "next_time"],
}


def run(kernel: Kernel, task: str, *, max_trials: int = MAX_TRIALS, verbose: bool = False) -> str:
    steps: Steps = []
    memory_key = f"reflections/{slug(task)}"
    lessons = _recall(kernel, memory_key)
    steps.append({"kind": "recall", "lessons": len(lessons)})
    expected = _ground_truth(kernel, task, steps)
    answer, passed, trial = "", False, 0
    for trial in range(1, max_trials + 1):
        answer = kernel.llm_chat(_actor_prompt(task, lessons), max_tokens=ANSWER_TOKENS).strip()
        steps.append({"kind": "attempt", "trial": trial, "answer": answer})
        passed, critique, judge = _evaluate(kernel, task, answer, expected, steps)
        steps.append({"kind": "evaluation", "trial": trial, "passed": passed, "critique": critique, "by": judge})
        if verbose:
            print(f"  trial {trial}: {answer!r} -> {'pass' if passed else 'fail'} ({judge}: {critique})")
        if passed:
            break
        lesson = _reflect(kernel, task, answer, critique, steps)
        lessons = [*lessons, lesson][-KEPT_REFLECTIONS:]
        kernel.memory_put(memory_key, lessons)
        if verbose:
            print(f"  lesson: {lesson}")
    save_transcript(kernel, task, answer, steps, trials=trial, passed=passed)
    return answer


def _recall(kernel: Kernel, key: str) -> list[str]:
    try:
        kept = kernel.memory_get(key)
    except NotFound:
        return []
    return [str(x) for x in kept] if isinstance(kept, list) else []


def _ground_truth(kernel: Kernel, task: str, steps: Steps) -> float | None:
    """The value of the task's arithmetic, from the calculator tool; ``None`` where there is none to compute."""
    expression = arithmetic_in(task)
    if expression is None:
        return None
    try:
        value = kernel.call_tool("calculator", expression=expression)["value"]
    except AIOSError as exc:
        steps.append({"kind": "ground_truth", "expression": expression, "error": str(exc)})
        return None
    steps.append({"kind": "ground_truth", "expression": expression})  # the value stays out of the transcript
    return float(value)


def _actor_prompt(task: str, lessons: list[str]) -> list[dict[str, str]]:
    system = "Answer the task. Reply with the answer only, in one short sentence."
    if lessons:
        system += "\nLessons from your earlier attempts at this task:\n" + "\n".join(f"- {x}" for x in lessons)
    return [{"role": "system", "content": system}, {"role": "user", "content": task}]


def _evaluate(kernel: Kernel, task: str, answer: str, expected: float | None,
              steps: Steps) -> tuple[bool, str, str]:
    """(passed, critique, who judged): the calculator's value where there is one, else the model's own verdict."""
    if expected is not None:
        if any(abs(n - expected) <= 1e-9 * max(1.0, abs(expected)) for n in numbers_in(answer)):
            return True, "the answer holds the right value", "calculator"
        return False, f"the answer {answer[:80]!r} does not hold the right value", "calculator"
    prompt = [{"role": "system", "content": "You check answers. Reply with JSON: correct (true or false) and a short "
                                            "critique."},
              {"role": "user", "content": f"Task: {task}\nAnswer: {answer}\nIs the answer correct?"}]
    verdict: dict[str, Any] | None = json_step(kernel, prompt, VERDICT_SCHEMA, steps, kind="self_evaluation",
                                               max_tokens=80)
    if verdict is None:
        return False, "no verdict could be read", "self"
    return bool(verdict["correct"]), str(verdict["critique"]), "self"


def _reflect(kernel: Kernel, task: str, answer: str, critique: str, steps: Steps) -> str:
    prompt = [{"role": "system", "content": "Your answer was judged wrong. Reply with JSON: the mistake you made, and "
                                            "what you will do differently next time."},
              {"role": "user", "content": f"Task: {task}\nYour answer: {answer}\nJudgement: {critique}"}]
    got = json_step(kernel, prompt, REFLECTION_SCHEMA, steps, kind="reflection", max_tokens=96)
    if got is None:
        return f"The answer {answer[:60]!r} was wrong: {critique}"
    return f"{got['mistake']} Next time: {got['next_time']}"
