"""The one function that answers a syscall: :func:`Replies.write_reply` (workers, refusals, operators' denials)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from aios.state import keys
from aios.state.scripts import register
from aios.wire.seal import seal_reply
from aios.wire.syscalls import Response, Syscall

WAITS_KEPT = 2000
"""Queue waits kept per resource for percentiles (``aios status``, metrics)."""
RECENT_KEPT = 500
"""Answered syscalls kept, all agents together, for the operator console (:data:`aios.state.keys.RECENT`)."""


@dataclass(frozen=True)
class Ack:
    """A message on a Redis broker, to acknowledge with its answer: its delivery tag and kombu's two keys that
    record it as unacknowledged (:mod:`aios.broker.kombu_client`)."""

    tag: str
    unacked_key: str
    unacked_index_key: str


Deliver = Callable[[str, str, str], None]
"""``deliver(agent_id, syscall_id, sealed_reply)``: hand an answer over on another channel than the reply lists
(a RabbitMQ reply queue: :mod:`aios.broker.reply_queues`)."""


class Replies:
    """Answers syscalls on one connection to the kernel's state (the script is registered once). ``deliver``:
    hand answers over through it instead of the Redis reply lists (build one with
    :func:`aios.broker.reply_queues.replies_for`)."""

    def __init__(self, client: redis.Redis, ttl_s: int, deliver: Deliver | None = None) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.deliver = deliver
        self._script = register(client, "reply")

    def write_reply(self, response: Response, *, agent_id: str, key: str | None, kind: str | None,
                    once: bool = True, account: tuple[str, Syscall] | None = None,
                    ack: Ack | None = None) -> bool:
        """Answer ``response.id`` of ``agent_id``: stored once and handed to its caller (``once``), or only handed
        over (a refusal, ``once=False``). The answer handed over is sealed with the agent's ``key`` (``None``: a
        kernel without identities, ``AIOS_AUTH=off``), so the caller accepts only what the kernel made for this
        syscall. ``kind`` counts it in ``aios:stats:done``; ``account=(resource, syscall)`` adds its service and
        wait to its agent's record, in the same atomic step; ``ack``: the message it answers, acknowledged on the
        Redis broker in that step too (only where the broker's lists live on this same server and database).
        True if this call answered."""
        sid = response.id
        resource, syscall = account if account is not None else ("", None)
        t = response.timing
        accounted = syscall.agent_id if syscall is not None and t is not None else ""
        body = response.model_dump_json()
        sealed = seal_reply(body, key, sid) if key else body
        # The script stores the response JSON and hands the sealed answer over: sent once, the seal stripped there.
        if self.deliver is not None:
            answer, how = body, "keep"
        else:
            answer, how = sealed, "sealed" if key else "plain"
        argv: list[Any] = [
            "once" if once else "notify", answer, how,
            self.ttl_s, f"{kind}:{response.status.value}" if kind is not None else "",
            accounted, t.service_s if accounted and t else 0, t.queue_wait_s if accounted and t else 0, WAITS_KEPT,
            recent_record(response, syscall) if syscall is not None else "", RECENT_KEPT,
        ]
        key_list = [keys.result(sid), keys.reply(agent_id, sid), keys.STATS_DONE, keys.context(sid),
                    keys.attempts(sid), keys.attained(resource), keys.agent_stats(resource), keys.waits(resource),
                    keys.claim(sid), keys.RECENT]
        if ack is not None:
            key_list += [ack.unacked_key, ack.unacked_index_key]
            argv.append(ack.tag)
        answered = bool(self._script(keys=key_list, args=argv))
        if answered and self.deliver is not None:
            self.deliver(agent_id, sid, sealed)
        return answered

    def push_chunk(self, agent_id: str, syscall_id: str, sealed: str) -> None:
        """Hand a streamed syscall's chunk (:mod:`aios.wire.stream`) to its caller, on the channel its reply
        takes; nothing is stored or counted (the reply is the answer)."""
        if self.deliver is not None:
            self.deliver(agent_id, syscall_id, sealed)
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.rpush(keys.reply(agent_id, syscall_id), sealed)
        pipe.expire(keys.reply(agent_id, syscall_id), self.ttl_s)
        pipe.execute()

    def hand_over_again(self, agent_id: str, syscall_id: str, key: str | None) -> bool:
        """Hand a stored answer over once more (a redelivered syscall whose answer may never have left: on
        RabbitMQ the answer is stored, then published). The SDK takes the first answer to an id and ignores the
        rest. True if there was one to hand over."""
        if self.deliver is None:
            return False
        stored = self.client.get(keys.result(syscall_id))
        if stored is None:
            return False
        body = stored.decode() if isinstance(stored, bytes) else str(stored)
        self.deliver(agent_id, syscall_id, seal_reply(body, key, syscall_id) if key else body)
        return True


def recent_record(response: Response, syscall: Syscall) -> str:
    """What the console lists of an answered syscall: who, which call, how it ended, how long it waited and ran;
    never its payload (a prompt, arguments, content)."""
    what = {"llm": "output", "tool": "tool", "memory": "op", "storage": "op"}[syscall.kind]
    t = response.timing
    return json.dumps({
        "id": response.id, "agent": syscall.agent_id, "kind": syscall.kind, "what": getattr(syscall, what),
        "status": response.status.value, "code": response.error.code if response.error else "",
        "wait_s": round(t.queue_wait_s, 6), "service_s": round(t.service_s, 6),
        "at": round(t.finished_at, 3)}, separators=(",", ":"))
