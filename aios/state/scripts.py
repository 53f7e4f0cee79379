"""Lua scripts of the kernel, one ``.lua`` file each in ``aios/state/lua/``, registered once per connection.

Each file opens with a header naming its KEYS and ARGV and what it returns; multi-step updates that must be
atomic across workers live in these scripts (or in MULTI transactions), never in check-then-act Python.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import redis
from redis.commands.core import Script

LUA_PACKAGE = "aios.state.lua"


@cache
def source(name: str) -> str:
    """The text of ``lua/<name>.lua``."""
    return resources.files(LUA_PACKAGE).joinpath(f"{name}.lua").read_text(encoding="utf-8")


def names() -> list[str]:
    return sorted(p.name[:-4] for p in resources.files(LUA_PACKAGE).iterdir() if p.name.endswith(".lua"))


def register(client: redis.Redis, name: str) -> Script:
    """``lua/<name>.lua`` registered on ``client`` (EVALSHA, loaded on first use)."""
    return client.register_script(source(name))
