"""What the built-in agents share: a JSON-constrained step that survives a cut-off reply, the transcript every run
leaves in the agent's files, and a second identity for agents that work as a team.

Each agent keeps a transcript of its run (a list of steps, each a small dict with a ``kind``), so what it did can
be read back from its files afterwards, and compared with what the kernel counted for it (`aios status`).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

from aios import AIOSError, Kernel

Steps = list[dict[str, Any]]
"""A run's transcript: one dict per step, ``{"kind": ..., ...}``."""


def json_step(kernel: Kernel, messages: Any, schema: dict[str, Any], steps: Steps, *, kind: str,
              max_tokens: int = 200, tries: int = 2) -> Any | None:
    """The model's next step as JSON valid against ``schema`` (greedy, grammar-constrained), recorded in ``steps``.

    A small model can run out of tokens mid-object: such a reply is a ``BackendError``, recorded, and asked again,
    at most ``tries`` times in all. ``None`` if no try gave a valid object. Give ``max_tokens`` room for every
    string at its ``maxLength``: under a grammar a rambling model fills them, at about 2 characters a token.
    """
    for _ in range(tries):
        try:
            value = kernel.llm_chat_with_json_output(messages, json_schema=schema, max_tokens=max_tokens)
        except AIOSError as exc:
            steps.append({"kind": kind, "error": str(exc)})
            continue
        steps.append({"kind": kind, "value": value})
        return value
    return None


def save_transcript(kernel: Kernel, task: str, answer: str, steps: Steps, **extra: Any) -> str:
    """Keep the run in the agent's files (a new file each run) and its last answer in its memory; the file's path.

    A new file per run, rather than one overwritten: every run stays readable, each with its own history.
    """
    path = f"transcripts/{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.json"
    kernel.write_file(path, json.dumps({"task": task, "answer": answer, "steps": steps, **extra}))
    kernel.memory_put("last_answer", {"task": task, "answer": answer, "transcript": path})
    return path


def slug(text: str, limit: int = 40) -> str:
    """A file name from a task: lower-case words joined by ``-`` (``task`` if nothing is left)."""
    return "-".join(re.findall(r"[a-z0-9]+", text.lower()))[:limit].strip("-") or "task"


def peer(kernel: Kernel, role: str) -> Kernel:
    """A second agent working beside ``kernel``'s, with its own identity: ``<agent id>-<role>``.

    It signs with its own credential (``aios run`` issues one for each role an agent lists in ``PEERS``; elsewhere
    `aios agent create <agent id>-<role>`), so the kernel sees, checks and audits it as the other agent it is.
    """
    return Kernel(f"{kernel.agent_id}-{role}", settings=kernel.settings, timeout_s=kernel.timeout_s)


_ARITHMETIC = re.compile(r"[-+*/().\d\s^%]{3,}")
_OPERATION = re.compile(r"[\d)]\s*(?:\*\*|[-+*/%^])\s*[\d(]")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def arithmetic_in(text: str) -> str | None:
    """The first arithmetic expression in ``text`` (``17 * 23`` of "What is 17 * 23?"), or ``None``."""
    for found in _ARITHMETIC.finditer(text):
        candidate = found.group().strip().rstrip(".")
        if _OPERATION.search(candidate):
            return candidate
    return None


def numbers_in(text: str) -> list[float]:
    """Every number written in ``text``, thousands separators allowed (``"391"``, ``"97,406,784"``, ``"-2.5"``)."""
    out = []
    for found in _NUMBER.findall(text):
        try:
            out.append(float(found.replace(",", "")))
        except ValueError:
            continue
    return out
