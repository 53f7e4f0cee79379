"""The context manager: snapshots of suspended LLM generations, kept in the kernel's Redis.

When an LLM syscall's time slice expires and other syscalls wait, the backend raises :class:`Preempted` with a
:class:`Snapshot`. The worker stores it under ``aios:ctx:<syscall id>`` and requeues the syscall's original signed
message unchanged; whichever LLM worker takes it next loads the snapshot and resumes. The snapshot is deleted in
the same transaction that stores the final answer.

- llama.cpp backend: state-based. The generated token ids, plus (``AIOS_LLM_SNAPSHOT_KV``) the sequence's KV
  state, so the resume restores the cache instead of recomputing it.
- OpenAI-compatible backend: text-based. The partial output, resumed as a completion of the rendered prompt
  plus that text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import redis

from aios.state import keys


@dataclass
class Snapshot:
    backend: str
    model: str
    tokens: list[int] = field(default_factory=list)
    """llama.cpp: every token generated so far."""
    text: str = ""
    """openai: the output generated so far."""
    state: bytes | None = None
    """llama.cpp: the sequence's KV state (``llama_state_seq_get_data``), or None."""
    slices: int = 0
    """Time slices this syscall has run so far."""
    usage: dict[str, int] = field(default_factory=dict)

    def meta(self) -> str:
        return json.dumps({"backend": self.backend, "model": self.model, "tokens": self.tokens, "text": self.text,
                           "slices": self.slices, "usage": self.usage})

    @classmethod
    def from_redis(cls, record: dict[bytes, bytes]) -> "Snapshot | None":
        if not record or b"meta" not in record:
            return None
        meta = json.loads(record[b"meta"])
        return cls(state=record.get(b"state") or None, **meta)


class Preempted(Exception):
    """Raised by a service when a generation's time slice expired: not an error, the syscall is requeued."""

    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__(f"suspended after {len(snapshot.tokens) or len(snapshot.text)} tokens/chars")
        self.snapshot = snapshot


class ContextStore:
    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.redis, self.ttl_s = client, ttl_s

    def save(self, syscall_id: str, snap: Snapshot) -> None:
        key = keys.context(syscall_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping={"meta": snap.meta(), **({"state": snap.state} if snap.state else {})})
        pipe.expire(key, self.ttl_s)
        pipe.execute()


def load_from(record: Any) -> Snapshot | None:
    """A snapshot from an ``HGETALL`` done in someone else's pipeline."""
    return Snapshot.from_redis(record or {})
