"""A ReAct agent: think, act with a tool, observe, repeat; every step is a syscall through the kernel.

The model's step is JSON-constrained (``thought``, ``action``, ``input``), so even a tiny model produces a
well-formed step; what it decides is its own business. The agent remembers its last answer per task in
its memory, and keeps a transcript of each run in its files (a new file each time: agents/common.py).
"""

from __future__ import annotations

import json
from typing import Any

from aios import AIOSError, Kernel
from aios_agents.common import Steps, arithmetic_in, json_step, save_transcript

MAX_STEPS = 4
TOOLS = {
    "calculator": ("expression", "evaluates arithmetic, e.g. 17 * 23"),
    "word_count": ("text", "counts the words in a text"),
}
STEP_SCHEMA = {
    "type": "object",
    "properties": {
        "thought": {"type": "string", "maxLength": 160},
        "action": {"enum": [*TOOLS, "finish"]},
        "input": {"type": "string", "maxLength": 160},
    },
    "required": ["thought", "action", "input"],
}
SYSTEM = (
    "You solve tasks step by step. Each reply is JSON with keys thought, action, input.\n"
    "Actions: " + "; ".join(f"{name} (input: {arg}, {doc})" for name, (arg, doc) in TOOLS.items())
    + "; finish (input: the final answer).\n"
    'Example: task "What is 6 * 7?" -> {"thought": "I should multiply", "action": "calculator", "input": "6 * 7"}'
    ' then, after "Observation: 42" -> {"thought": "done", "action": "finish", "input": "42"}'
)


def run(kernel: Kernel, task: str, *, max_steps: int = MAX_STEPS, verbose: bool = False) -> str:
    messages: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Task: {task}"}]
    transcript: Steps = []
    answer: str | None = None
    last_observation: str | None = None
    for _ in range(max_steps):
        # One try per step: a reply cut off mid-JSON is noted and costs the step.
        step = json_step(kernel, messages, STEP_SCHEMA, transcript, kind="step", max_tokens=200, tries=1)
        if step is None:
            continue
        if verbose:
            print(f"  step: {json.dumps(step)}")
        action, arg = step.get("action"), str(step.get("input", ""))
        if action == "finish":
            answer = arg.strip() or last_observation
            break
        observation = _act(kernel, action, arg, task)
        last_observation = observation
        transcript.append({"kind": "observation", "value": observation})
        if verbose:
            print(f"  observation: {observation}")
        messages.append({"role": "assistant", "content": json.dumps(step)})
        messages.append({"role": "user", "content": f"Observation: {observation}"})
    if not answer:
        answer = last_observation or kernel.llm_chat(f"Answer briefly: {task}", max_tokens=64).strip()
    save_transcript(kernel, task, answer, transcript)
    return answer


def _act(kernel: Kernel, action: Any, arg: str, task: str) -> str:
    if action == "calculator":
        try:
            return str(kernel.call_tool("calculator", expression=arg)["value"])
        except AIOSError as first:
            # Small models often wrap the arithmetic in words; retry with the arithmetic found in the task.
            found = arithmetic_in(task)
            if found:
                try:
                    return str(kernel.call_tool("calculator", expression=found)["value"])
                except AIOSError:
                    pass
            return f"error: {first}"
    if action == "word_count":
        return str(kernel.call_tool("word_count", text=arg)["words"])
    return f"error: unknown action {action!r}"
