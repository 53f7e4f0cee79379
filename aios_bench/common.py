"""What every ``aios bench`` shares: the machine it ran on, target records, and writing the JSON and its plot."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn


def consoles() -> tuple[Console, Console]:
    """Where a benchmark writes: its table to stdout; progress and log lines to stderr."""
    return Console(), Console(stderr=True, log_path=False)


def progress_bars(err: Console, width: int, *middle: ProgressColumn) -> Progress:
    """Every benchmark's progress display on ``err``: the task's description (padded to ``width``), a bar, the
    ``middle`` columns (by default done/total) and the time elapsed."""
    return Progress(TextColumn(f"{{task.description:<{width}}}"), BarColumn(), *(middle or (MofNCompleteColumn(),)),
                    TimeElapsedColumn(), console=err, refresh_per_second=4)


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform()}


Bound = Literal["min", "max"]
"""How a target's goal bounds its value: at least (``min``) or at most (``max``)."""


def target(value: float | None, goal: float, bound: Bound) -> dict[str, Any]:
    """A target as ``--json`` reports it: met when ``value`` is at least (``min``) or at most (``max``) ``goal``;
    ``None`` (the run did not measure it) is not met."""
    met = value is not None and (value >= goal if bound == "min" else value <= goal)
    return {"value": value, "goal": goal, "met": met}


def save(json_path: Path | None, result: dict[str, Any], draw: Callable[[Path], None],
         log: Callable[[str], None]) -> None:
    """Write ``result`` to ``json_path`` and ``draw`` its plot beside it (same name, ``.png``); nothing without a path."""
    if json_path is None:
        return
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    png = json_path.with_suffix(".png")
    draw(png)
    log(f"wrote {json_path} and {png}")


def print_targets(console: Any, targets: dict[str, dict[str, Any]], bounds: dict[str, str]) -> None:
    """One line per target: its value, its goal (``bounds``: name -> ``min`` or ``max``), met or missed."""
    for name, t in targets.items():
        sign = ">=" if bounds[name] == "min" else "<="
        mark = "[green]met[/]" if t["met"] else "[red]missed[/]"
        shown = "n/a" if t["value"] is None else f"{t['value']:.3g}"
        console.print(f"  {name}: {shown} (goal {sign} {t['goal']}) {mark}")


RAW_TASK = "aios.bench.noop"
"""The plain Celery no-op of ``aios bench overhead`` (served by :mod:`aios_bench.raw_worker`)."""
RAW_QUEUE = "aios.bench.raw"
