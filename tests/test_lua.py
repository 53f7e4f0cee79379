"""The kernel's Lua scripts: one ``.lua`` file each with a header naming its KEYS and ARGV, every one in use, none
inline in Python."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aios.state import scripts

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("aios", "aios_bench") for p in sorted((ROOT / d).rglob("*.py"))]
REGISTERED = re.compile(r"""\bregister\(\s*[\w.]+\s*,\s*["'](\w+)["']\s*\)""")
SLOT = re.compile(r"\b(KEYS|ARGV)\[(\d+)\]")


def header(text: str) -> tuple[str, str]:
    """(the leading block of ``--`` comment lines, the rest)."""
    lines = text.splitlines()
    n = next((i for i, line in enumerate(lines) if not line.startswith("--")), len(lines))
    return "\n".join(lines[:n]), "\n".join(lines[n:])


@pytest.mark.parametrize("name", scripts.names())
def test_every_script_opens_with_a_header_naming_its_keys_argv_and_result(name: str) -> None:
    head, body = header(scripts.source(name))
    assert head.count("\n") >= 2, f"{name}.lua: no header (say what it does, its KEYS, ARGV and what it returns)"
    for part in ("-- KEYS[", "ARGV[", "-- Returns"):
        assert part in head, f"{name}.lua: the header does not name {part.strip('- [')}"
    for slot, i in SLOT.findall(body):  # every literal KEYS[i] / ARGV[i] the script reads is described
        assert f"{slot}[{i}]" in head, f"{name}.lua reads {slot}[{i}], which its header does not describe"
    assert body.strip(), f"{name}.lua: a header and no script"


def test_every_script_is_registered_somewhere_and_none_is_inline() -> None:
    used: dict[str, list[str]] = {}
    inline = []
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        for name in REGISTERED.findall(text):
            used.setdefault(name, []).append(str(path.relative_to(ROOT)))
        if "redis.call(" in text:
            inline.append(str(path.relative_to(ROOT)))
    assert not inline, f"inline Lua in {inline}: move it to aios/state/lua/<name>.lua (aios.state.scripts)"
    names = scripts.names()
    assert names, "no .lua files found in aios/state/lua"
    assert sorted(set(names) - set(used)) == [], "scripts nothing registers (dead, or registered another way)"
    assert sorted(set(used) - set(names)) == [], "registered names with no .lua file"


def test_the_lua_files_are_package_data() -> None:
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "*.lua" in data["tool"]["setuptools"]["package-data"][scripts.LUA_PACKAGE]
    assert (ROOT / "aios" / "state" / "lua" / "__init__.py").exists(), "aios.state.lua must be a package"
