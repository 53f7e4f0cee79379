"""Plan-and-execute: the model writes the whole plan first, then each step runs in order, then one answer.

The plan is one JSON-constrained LLM syscall: at most ``MAX_STEPS`` steps, each a tool (``calculator``,
``word_count``) or ``llm`` (a sub-question for the model) and its input. A step's input may name the result of an
earlier step as ``{1}``, ``{2}``... (the plan is written before any result exists, as in ReWOO). Each step runs as one
syscall; one that fails is recorded with its error and the rest still run. The plan lives in the agent's files,
``plans/<task>-<id>.json``: written once when made, then again after each step and once with the answer, each
time a compare-and-set on the version it read, so the file's versions are the execution's history (1 + steps + 1).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from aios import AIOSError, Kernel
from aios_agents.common import Steps, json_step, save_transcript, slug

MAX_STEPS = 4
TOOLS = {
    "calculator": ("expression", "evaluates arithmetic, e.g. 17 * 23"),
    "word_count": ("text", "counts the words in a text"),
    "llm": ("question", "asks the language model a question"),
}
PLAN_SCHEMA = {
    "type": "object",
    "properties": {
        "steps": {
            "type": "array", "minItems": 1, "maxItems": MAX_STEPS,
            "items": {
                "type": "object",
                "properties": {"tool": {"enum": list(TOOLS)}, "input": {"type": "string", "maxLength": 80}},
                "required": ["tool", "input"],
            },
        },
    },
    "required": ["steps"],
}
PLANNER = (
    "You make a plan for a task: a JSON object with a list of steps, each with a tool and its input.\n"
    "Tools: " + "; ".join(f"{name} (input: {arg}; {doc})" for name, (arg, doc) in TOOLS.items()) + ".\n"
    "A step's input may use the result of an earlier step: {1} is the result of step 1.\n"
    'Example: task "Add the number of words in \'a b c\' to 6 * 7" -> {"steps": [{"tool": "word_count", '
    '"input": "a b c"}, {"tool": "calculator", "input": "6 * 7"}, {"tool": "calculator", "input": "{1} + {2}"}]}'
)
_REFERENCE = re.compile(r"\{(\d+)\}")


def run(kernel: Kernel, task: str, *, verbose: bool = False) -> str:
    steps: Steps = []
    plan = json_step(kernel, [{"role": "system", "content": PLANNER}, {"role": "user", "content": f"Task: {task}"}],
                     PLAN_SCHEMA, steps, kind="plan", max_tokens=256)
    planned: list[dict[str, Any]] = plan["steps"] if plan else [{"tool": "llm", "input": task}]
    if plan is None:
        steps.append({"kind": "fallback_plan", "steps": planned})
    record: dict[str, Any] = {"task": task, "plan": planned, "results": [], "answer": None}
    path = f"plans/{slug(task)}-{uuid.uuid4().hex[:8]}.json"
    version = kernel.write_file(path, json.dumps(record), if_version=0)["version"]
    if verbose:
        print(f"  plan ({path}): {json.dumps(planned)}")
    results: list[str] = []
    for number, step in enumerate(planned, 1):
        arg = _resolve(str(step["input"]), results)
        result = _execute(kernel, str(step["tool"]), arg)
        results.append(result)
        steps.append({"kind": "execute", "step": number, "tool": step["tool"], "input": arg, "result": result})
        record["results"].append({"step": number, "input": arg, "result": result})
        version = kernel.write_file(path, json.dumps(record), if_version=version)["version"]
        if verbose:
            print(f"  step {number}: {step['tool']}({arg!r}) -> {result}")
    done = "\n".join(f"Step {i} ({s['tool']} {s['input']!r}): {r}"
                     for i, (s, r) in enumerate(zip(planned, results, strict=True), 1))
    answer = kernel.llm_chat([{"role": "system", "content": "Answer the task in one short sentence, using the results "
                                                            "of the steps that were run."},
                              {"role": "user", "content": f"Task: {task}\n{done}"}], max_tokens=64).strip()
    answer = answer or (results[-1] if results else "")
    record["answer"] = answer
    kernel.write_file(path, json.dumps(record), if_version=version)
    save_transcript(kernel, task, answer, steps, plan_file=path)
    return answer


def _resolve(text: str, results: list[str]) -> str:
    """``{n}`` becomes step n's result; a reference to a step not run yet stays as written."""
    return _REFERENCE.sub(lambda m: results[int(m[1]) - 1] if 0 < int(m[1]) <= len(results) else m[0], text)


def _execute(kernel: Kernel, tool: str, arg: str) -> str:
    try:
        if tool == "calculator":
            return str(kernel.call_tool("calculator", expression=arg)["value"])
        if tool == "word_count":
            return str(kernel.call_tool("word_count", text=arg)["words"])
        return kernel.llm_chat(arg or "?", max_tokens=48).strip()
    except AIOSError as exc:  # the plan goes on: a later step, or the answer, may not need this one
        return f"error: {exc}"
