"""A benchmark-only tool with a side effect the benchmark can count: ``ledger_append`` works for ``work_ms``, then
appends its syscall id to ``<data_dir>/ledger.log`` (one line per execution).

Load it into a tool worker with ``AIOS_TOOL_MODULES=aios_bench.ledger``. Its effect comes last, as a tool that
commits its work at the end would: a worker killed during the work leaves no line, and the rerun writes the one
line; a worker killed after the line but before the answer was stored shows up as the same id twice, which is the
kernel's window of at-least-once execution that ``aios bench chaos`` and the restart tests count.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from aios.services.tools.service import Tool, ToolContext, ToolRegistry

LEDGER = "ledger.log"
LEDGER_ONCE = "ledger_append_once"
"""The same tool declared at-most-once (``Tool.at_most_once``): a copy of a syscall that started is answered
``interrupted`` instead of appending again."""


def ledger_path(data_dir: Path) -> Path:
    return data_dir / LEDGER


def _append(work_ms: int = 0, *, ctx: ToolContext) -> dict[str, Any]:
    if work_ms:
        time.sleep(work_ms / 1000)
    line = f"{ctx.syscall_id}\n".encode()
    # O_APPEND: one write of a short line lands whole even with several worker processes; the page cache keeps it
    # through a SIGKILL of the worker, which is all the benchmark needs (no fsync).
    fd = os.open(ledger_path(ctx.settings.data_dir), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return {"ok": True}


def register(registry: ToolRegistry) -> None:
    registry.register(Tool(
        name="ledger_append", description="Benchmark only: work, then append this syscall's id to the ledger.",
        parameters={"type": "object", "properties": {"work_ms": {"type": "integer", "minimum": 0, "maximum": 5000}},
                    "additionalProperties": False},
        fn=_append))
    registry.register(Tool(
        name=LEDGER_ONCE, description="Benchmark only: ledger_append, at most once per syscall.",
        parameters={"type": "object", "properties": {"work_ms": {"type": "integer", "minimum": 0, "maximum": 5000}},
                    "additionalProperties": False},
        fn=_append, at_most_once=True))


def executions(data_dir: Path) -> Counter[str]:
    """How many times each syscall id ran, from the ledger."""
    try:
        text = ledger_path(data_dir).read_text()
    except FileNotFoundError:
        return Counter()
    return Counter(line for line in text.splitlines() if line)
