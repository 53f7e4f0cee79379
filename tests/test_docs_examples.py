"""The examples in README.md, docs/quickstart.md and docs/sdk.md, run as a reader would run them.

Every ```python and ```sh block runs, in the document's order, against one running embedded kernel (its
environment: ``LocalKernel.env()``), in a fresh folder per document, and must succeed. A block that cannot run
here (an install, ``aios up`` in the foreground, a list of signatures) says why on the line before it, as
``<!-- not run: why -->``. A Python block that begins with ``# some/path.py`` is a file: it is written there, for
the blocks after it (``aios run ./my_agent``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aios import AsyncKernel, Kernel
from aios.ops.embedded import LocalKernel
from tests.conftest import base_settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "docs/quickstart.md", "docs/sdk.md"]
FENCE = re.compile(r"^```(\w*)\s*$")
NOT_RUN = re.compile(r"^<!-- not run: (.+\S) -->$")
FILE_BLOCK = re.compile(r"^# ([\w./-]+\.py)\s*$")
BLOCK_TIMEOUT_S = 300


@dataclass(frozen=True)
class Block:
    doc: str
    line: int
    lang: str
    text: str
    not_run: str | None  # why, if it is not run

    def __str__(self) -> str:
        return f"{self.doc}:{self.line} ({self.lang})"


def blocks(doc: str) -> list[Block]:
    lines = (ROOT / doc).read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        i += 1
        while not lines[i].startswith("```"):
            i += 1
        before = next((x.strip() for x in reversed(lines[:start]) if x.strip()), "")
        reason = NOT_RUN.match(before)
        out.append(Block(doc, start + 1, lang, "\n".join(lines[start + 1:i]) + "\n", reason and reason.group(1)))
        i += 1
    return out


def runnable(doc: str) -> list[Block]:
    return [b for b in blocks(doc) if b.lang in ("python", "sh") and b.not_run is None]


# -- without a kernel: the examples are well-formed --------------------------------------------------------

@pytest.mark.parametrize("doc", DOCS)
def test_every_example_runs_or_says_why_not(doc: str) -> None:
    found = blocks(doc)
    assert all(b.lang in ("python", "sh", "json", "") for b in found), [str(b) for b in found]
    assert runnable(doc), f"{doc} has no example that runs"
    for b in found:
        if b.lang == "python" and b.not_run is None:
            compile(b.text, str(b), "exec")  # a syntax error fails here already, without a kernel


def test_sdk_reference_names_every_call() -> None:
    text = (ROOT / "docs/sdk.md").read_text()
    for client in (Kernel, AsyncKernel):
        for name in (n for n in dir(client) if not n.startswith("_")):
            assert f"{name}(" in text or f"`{name}`" in text, f"docs/sdk.md does not describe {client.__name__}.{name}"


# -- with a kernel: each document, block by block ----------------------------------------------------------

@pytest.fixture(scope="module")
def docs_kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKernel]:
    settings = base_settings(tmp_path_factory.mktemp("docs-kernel"), llm_n_ctx=2048, default_timeout_s=120.0)
    with LocalKernel(settings) as lk:
        yield lk


def _run(block: Block, env: dict[str, str], cwd: Path) -> None:
    if block.lang == "python":
        first = block.text.splitlines()[0]
        if m := FILE_BLOCK.match(first):
            (cwd / m.group(1)).parent.mkdir(parents=True, exist_ok=True)
            (cwd / m.group(1)).write_text(block.text)
            return
        argv = [sys.executable, "-c", block.text]
    else:
        argv = ["bash", "-e", "-o", "pipefail", "-c", block.text]
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    assert done.returncode == 0, f"the example at {block} failed:\n{block.text}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"


@pytest.mark.integration
@pytest.mark.parametrize("doc", DOCS)
def test_the_examples_run_against_a_kernel(doc: str, docs_kernel: LocalKernel, tmp_path: Path) -> None:
    env = docs_kernel.env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the `aios` command
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)  # this checkout's aios
    for block in runnable(doc):
        _run(block, env, tmp_path)
