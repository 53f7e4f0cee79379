"""Lua scripts of the kernel, one ``.lua`` file each in ``aios/state/lua/``, registered once per connection.

Each file opens with a header naming its KEYS and ARGV and what it returns; multi-step updates that must be
atomic across workers live in these scripts (or in MULTI transactions), never in check-then-act Python.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import redis
from redis.commands.core import Script

LUA_PACKAGE = "aios.state.lua"


@cache
def source(name: str) -> str:
    """The text of ``lua/<name>.lua``."""
    return resources.files(LUA_PACKAGE).joinpath(f"{name}.lua").read_text(encoding="utf-8")


def names() -> list[str]:
    return sorted(p.name[:-4] for p in resources.files(LUA_PACKAGE).iterdir() if p.name.endswith(".lua"))


class LeanScript(Script):
    """redis-py's ``Script``, called on its own client with one ``EVALSHA`` on a pooled connection: without the
    command machinery of ``execute_command`` (its retry wrapper, option parsing, response callbacks), which cost
    about as much CPU as the call itself (44 against 24 us for a script of 12 keys and 12 arguments, measured on
    this repository's VM), twice per syscall in a worker. Anything unusual (an unknown script, a dropped
    connection, another client or a pipeline) goes through ``Script.__call__`` as before: it loads the script,
    and the client's retries ride out a restart."""

    def __call__(self, keys: Any = None, args: Any = None, client: Any = None) -> Any:
        if client is not None and client is not self.registered_client:
            return super().__call__(keys, args, client)
        keys, args = keys or [], args or []
        pool = self.registered_client.connection_pool  # type: ignore[union-attr]  # never a RedisCluster here
        try:
            conn = pool.get_connection()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return super().__call__(keys, args)
        try:
            conn.send_command("EVALSHA", self.sha, len(keys), *keys, *args)
            return conn.read_response()
        except redis.exceptions.NoScriptError:
            pass  # a restarted server: loaded and run below
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            conn.disconnect()  # run below, with the client's retries
        finally:
            pool.release(conn)
        return super().__call__(keys, args)


def register(client: redis.Redis, name: str) -> Script:
    """``lua/<name>.lua`` registered on ``client`` (EVALSHA, loaded on first use)."""
    return LeanScript(client, source(name))
