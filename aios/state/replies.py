"""The one function that answers a syscall: :func:`write_reply` (workers, refusals, operators' denials)."""

from __future__ import annotations

from typing import Any

import redis

from aios.state import keys
from aios.state.scripts import register
from aios.wire.syscalls import Response, Syscall

WAITS_KEPT = 2000
"""Queue waits kept per resource for percentiles (``aios status``, metrics)."""


class Replies:
    """Answers syscalls on one connection to the kernel's state (the script is registered once)."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self._script = register(client, "reply")

    def write_reply(self, response: Response, *, kind: str | None, once: bool = True,
                    account: tuple[str, Syscall] | None = None) -> bool:
        """Answer ``response.id``: stored once and handed to its caller (``once``), or only handed over (a refusal,
        ``once=False``). ``kind`` counts it in ``aios:stats:done``; ``account=(resource, syscall)`` adds its
        service and wait to its agent's record, in the same atomic step. True if this call answered."""
        sid = response.id
        resource, syscall = account if account is not None else ("", None)
        t = response.timing
        agent = syscall.agent_id if syscall is not None and t is not None else ""
        argv: list[Any] = [
            "once" if once else "notify", response.model_dump_json(), self.ttl_s,
            f"{kind}:{response.status.value}" if kind is not None else "",
            agent, t.service_s if agent and t else 0, t.queue_wait_s if agent and t else 0, WAITS_KEPT,
        ]
        key_list = [keys.result(sid), keys.reply(sid), keys.STATS_DONE, keys.context(sid), keys.attempts(sid),
                    keys.attained(resource), keys.agent_stats(resource), keys.waits(resource)]
        return bool(self._script(keys=key_list, args=argv))
