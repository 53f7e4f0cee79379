"""The kernel's Lua scripts: one ``.lua`` file each with a header naming its KEYS and ARGV, every one in use, none
inline in Python; and the ager's script held to the rule it implements (:func:`aios.policy.scheduler.aged_priority`)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from aios.broker.queues import priority_lists
from aios.policy.governor import Ager
from aios.policy.scheduler import aged_priority
from aios.state import keys, scripts
from aios.wire.priority import MAX_PRIORITY, MIN_PRIORITY

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("aios", "aios_bench") for p in sorted((ROOT / d).rglob("*.py"))]
REGISTERED = re.compile(r"""\b(?:register\(\s*[\w.]+\s*,|source\()\s*["'](\w+)["']\s*\)""")
"""``scripts.register(client, "name")``, or ``scripts.source("name")`` for a script sent by hand (the kombu patch
sends the take script on kombu's own connection)."""
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


# -- the ager against the rule -----------------------------------------------------------------------------------

AGINGS = (10.0, 0.1, 0.3, 7.0, 1.5)
NOWS = (1_700_000_000.123, 1000.0)  # a real clock, and one small enough to keep the 1e-9 offsets below


def waits(aging: float) -> list[float]:
    """Around every step boundary (where a float division and a floor division can disagree), and the extremes."""
    out = [-5.0, 0.0, 1e-9, aging / 2]
    for k in (1, 2, 3, 5, 9, 10, 11):
        out += [k * aging, k * aging - 1e-9, k * aging + 1e-9, k * aging * (1 - 1e-15)]
    out += [1.0, 3.0, 0.9, 100 * aging, 1e6]
    return out


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    from aios.ops.embedded import LocalKernel
    from aios.state.connections import state_client
    from tests.conftest import base_settings

    lk = LocalKernel(base_settings(tmp_path_factory.mktemp("lua-ager")), resources=())
    lk.start()
    client = state_client(lk.settings)
    try:
        client.flushdb()
        yield client
    finally:
        client.close()
        lk.stop()


@pytest.mark.integration
@pytest.mark.parametrize("aging_s", AGINGS)
def test_the_lua_ager_moves_each_message_where_aged_priority_says(broker: redis.Redis, aging_s: float) -> None:
    cases = [(now, base, wait) for now in NOWS for base in range(MIN_PRIORITY, MAX_PRIORITY + 1)
             for wait in waits(aging_s)]
    wrong = []
    for i, (now, base, wait) in enumerate(cases):
        queue = f"grid-{aging_s:g}-{i}"
        lists = priority_lists(queue)
        enqueued = now - wait
        body = {"headers": {keys.HEADER_ENQUEUED: enqueued, keys.HEADER_PRIORITY: base}, "body": "x"}
        broker.lpush(lists[base], json.dumps(body))
        moved = Ager(broker, queue, aging_s).run_once(now)
        expected = aged_priority(base, now - enqueued, aging_s)  # the wait the script sees, to the last bit
        where = [p for p, name in enumerate(lists) if broker.llen(name)]
        if where != [expected] or moved != int(expected != base):
            wrong.append((base, now - enqueued, where, expected, moved))
        broker.delete(*lists)
    assert len({aged_priority(b, w, aging_s) - b for _, b, w in cases}) > 3, "the grid must cover several steps"
    assert not wrong, f"aging {aging_s}: (base, waited, lua put it in, aged_priority says, moved) {wrong[:10]}"


@pytest.mark.integration
def test_a_registered_script_runs_on_after_a_flush_and_a_dropped_connection(broker: redis.Redis) -> None:
    """Scripts are called with one EVALSHA on a pooled connection (``scripts.LeanScript``); a server that forgot
    them (a restart: SCRIPT FLUSH here) and a connection it dropped (CLIENT KILL) are ridden out, with the same
    results, and a script's own error still reaches the caller."""
    script = scripts.register(broker, "reply")
    assert isinstance(script, scripts.LeanScript)
    probe = scripts.LeanScript(broker, "return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}")
    broker.delete("aios:test:lean")
    assert probe(keys=["aios:test:lean"], args=["a"]) == [b"aios:test:lean", b"a", 1]
    broker.script_flush()
    assert probe(keys=["aios:test:lean"], args=["b"]) == [b"aios:test:lean", b"b", 2]
    broker.client_kill_filter(_type="normal", skipme=False)  # every connection, this pool's included
    assert probe(keys=["aios:test:lean"], args=["c"]) == [b"aios:test:lean", b"c", 3]
    with pytest.raises(redis.ResponseError, match="boom"):
        scripts.LeanScript(broker, "return redis.error_reply('boom')")()
