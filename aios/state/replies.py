"""The one function that answers a syscall: :func:`Replies.write_reply` (workers, refusals, operators' denials)."""

from __future__ import annotations

from typing import Any

import redis

from aios.state import keys
from aios.state.scripts import register
from aios.wire.seal import seal_reply
from aios.wire.syscalls import Response, Syscall

WAITS_KEPT = 2000
"""Queue waits kept per resource for percentiles (``aios status``, metrics)."""


class Replies:
    """Answers syscalls on one connection to the kernel's state (the script is registered once)."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self._script = register(client, "reply")

    def write_reply(self, response: Response, *, agent_id: str, key: str | None, kind: str | None,
                    once: bool = True, account: tuple[str, Syscall] | None = None, push: bool = True) -> bool:
        """Answer ``response.id`` of ``agent_id``: stored once and handed to its caller (``once``), or only handed
        over (a refusal, ``once=False``). The answer handed over is sealed with the agent's ``key`` (``None``: a
        kernel without identities, ``AIOS_AUTH=off``), so the caller accepts only what the kernel made for this
        syscall. ``kind`` counts it in ``aios:stats:done``; ``account=(resource, syscall)`` adds its service and
        wait to its agent's record, in the same atomic step. ``push=False``: store and count only (the caller is
        answered on another channel: a RabbitMQ reply queue). True if this call answered."""
        sid = response.id
        resource, syscall = account if account is not None else ("", None)
        t = response.timing
        accounted = syscall.agent_id if syscall is not None and t is not None else ""
        body = response.model_dump_json()
        argv: list[Any] = [
            "once" if once else "notify", body, (seal_reply(body, key, sid) if key else body) if push else "",
            self.ttl_s, f"{kind}:{response.status.value}" if kind is not None else "",
            accounted, t.service_s if accounted and t else 0, t.queue_wait_s if accounted and t else 0, WAITS_KEPT,
        ]
        key_list = [keys.result(sid), keys.reply(agent_id, sid), keys.STATS_DONE, keys.context(sid),
                    keys.attempts(sid), keys.attained(resource), keys.agent_stats(resource), keys.waits(resource)]
        return bool(self._script(keys=key_list, args=argv))
