"""docs/operations.md's settings table states each default; it must be the default the code really has."""

from __future__ import annotations

import re
from pathlib import Path

from aios.settings import env_defaults

ROW = re.compile(r"^\| `(AIOS_[A-Z0-9_]+)` \| `([^`]*)`")
DOC = Path(__file__).resolve().parents[1] / "docs" / "operations.md"


def _as_text(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict):
        return "{}" if not value else str(value)
    return str(value)


def test_every_documented_default_is_the_real_one() -> None:
    defaults = env_defaults()
    checked = 0
    for line in DOC.read_text().splitlines():
        m = ROW.match(line)
        if m is None or m.group(1) not in defaults:
            continue
        name, documented = m.groups()
        real = defaults[name]
        assert documented in (_as_text(real), str(real)), f"{name}: docs say {documented!r}, the code {real!r}"
        checked += 1
    assert checked >= 25, f"only {checked} documented defaults were found to check"


def test_the_visibility_timeout_prose_matches_the_default() -> None:
    text = DOC.read_text()
    seconds = env_defaults()["AIOS_VISIBILITY_TIMEOUT_S"]
    m = re.search(r"`AIOS_VISIBILITY_TIMEOUT_S` has passed[^.]*\.\s*That is ([0-9]+) s", text)
    assert m is not None, "docs/operations.md no longer says what the visibility timeout is by default"
    assert int(m.group(1)) == seconds
