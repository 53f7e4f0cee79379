"""The memory manager: per-agent memory items in two tiers, kept within a byte budget by LRU-K.

* **Durable tier**: the agent's SQLite database (``memory`` table, ``synchronous=FULL``) holds *every* item,
  plus its vector in Milvus (:mod:`aios.services.storage.vectors`) for search by meaning. A write is acknowledged only once it
  is committed there, so it survives a kill -9 of the storage worker.
* **Fast tier**: a Redis hash per agent (``aios:memfast:<agent>``) holds the items recently and frequently
  used, at most ``AIOS_MEMORY_BUDGET_BYTES`` of values per agent. :class:`LRUK` decides which items stay; an
  item it evicts is dropped from Redis (its durable copy is already there) and a later ``get`` brings it back
  transparently. Reads served from Redis never touch the disk.

So "swapping out" costs no write at eviction time: the durable tier is written through. Search covers both
tiers by construction, since Milvus indexes every item whichever tier holds it.

:class:`LRUK` is a pure policy object (no Redis, no clock of its own) and is unit-tested alone; ``k=1`` is
plain LRU, which ``aios bench memory`` runs side by side with LRU-K.
"""

from __future__ import annotations

import heapq
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import redis

from aios.services.storage import quota
from aios.state.connections import as_text
from aios.state.keys import memfast
from aios.wire.errors import Conflict, InvalidSyscall, NotFound

log = logging.getLogger("aios.memory")
_FAILED = object()

HISTORY_FACTOR = 4
"""LRU-K keeps the reference history of evicted items too (the "retained information"), for at most this
many times as many items as are resident (at least 1024), oldest forgotten first."""


class LRUK:
    """LRU-K (O'Neil, O'Neil and Weikum, 1993) over items with sizes, within a byte budget.

    The victim is the resident item with the largest backward K-distance: the one whose K-th most recent
    reference is oldest. Items referenced fewer than K times have an infinite distance and go first (oldest
    last reference first), which is what makes LRU-K resist scans: one pass over cold items cannot flush the
    items referenced again and again. ``k=1`` is exactly LRU.
    """

    def __init__(self, budget_bytes: int, k: int = 2) -> None:
        if budget_bytes < 0 or k < 1:
            raise ValueError("budget_bytes must be >= 0 and k >= 1")
        self.budget, self.k = budget_bytes, k
        self.clock = 0
        self.history: dict[str, deque[int]] = {}
        self.resident: dict[str, int] = {}  # key -> size in bytes
        self.used = 0
        self._heap: list[tuple[tuple[int, int], int, str]] = []  # (priority, stamp, key), lazily invalidated
        self._stamp: dict[str, int] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.resident

    def _priority(self, key: str) -> tuple[int, int]:
        h = self.history[key]
        return (1, h[0]) if len(h) >= self.k else (0, h[-1])  # smallest is evicted first

    def access(self, key: str, size: int) -> tuple[bool, list[str]]:
        """Record a reference to ``key`` (``size`` bytes). Returns (resident now, keys evicted to make room).

        An item larger than the whole budget is never admitted (it is served from the durable tier)."""
        self.clock += 1
        h = self.history.get(key)
        if h is None:
            h = self.history[key] = deque(maxlen=self.k)
        h.append(self.clock)
        if key in self.resident:
            self.used += size - self.resident[key]
            self.resident[key] = size
        elif size <= self.budget:
            self.resident[key] = size
            self.used += size
        stamp = self._stamp[key] = self._stamp.get(key, 0) + 1
        if key in self.resident:
            heapq.heappush(self._heap, (self._priority(key), stamp, key))
        evicted = self._evict(keep=key)
        self._forget()
        return key in self.resident, evicted

    def remove(self, key: str) -> None:
        """The item was deleted: drop it and its history."""
        self.used -= self.resident.pop(key, 0)
        self.history.pop(key, None)
        self._stamp.pop(key, None)

    def _evict(self, keep: str) -> list[str]:
        evicted: list[str] = []
        deferred = []
        while self.used > self.budget and self._heap:
            prio, stamp, key = heapq.heappop(self._heap)
            if self._stamp.get(key) != stamp or key not in self.resident:
                continue  # a stale entry: the item was referenced again or removed since
            if key == keep:
                deferred.append((prio, stamp, key))
                continue
            self.used -= self.resident.pop(key)
            evicted.append(key)
        for entry in deferred:
            heapq.heappush(self._heap, entry)
        if self.used > self.budget and keep in self.resident:  # only the new item left and still too big
            self.used -= self.resident.pop(keep)
            evicted.append(keep)
        if len(self._heap) > 4 * max(64, len(self.resident)):  # compact the lazily invalidated heap
            self._heap = [e for e in self._heap if self._stamp.get(e[2]) == e[1] and e[2] in self.resident]
            heapq.heapify(self._heap)
        return evicted

    def _forget(self) -> None:
        limit = max(1024, HISTORY_FACTOR * len(self.resident))
        if len(self.history) <= limit * 2:
            return
        cold = sorted((h[-1], key) for key, h in self.history.items() if key not in self.resident)
        for _, key in cold[:len(self.history) - limit]:
            del self.history[key]
            self._stamp.pop(key, None)


class FastTier(Protocol):
    def get(self, agent: str, key: str) -> str | None: ...
    def set(self, agent: str, key: str, value: str) -> None: ...
    def drop(self, agent: str, keys: Iterable[str]) -> None: ...
    def clear(self, agent: str) -> None: ...
    def size(self, agent: str) -> tuple[int, int]:
        """(items, bytes of values) actually held."""


class RedisFastTier:
    """The fast tier in the kernel's Redis: hash ``aios:memfast:<agent>``, field = key, value = JSON text."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    @staticmethod
    def _name(agent: str) -> str:
        return memfast(agent)

    def get(self, agent: str, key: str) -> str | None:
        raw = self.redis.hget(self._name(agent), key)
        return None if raw is None else as_text(raw)

    def set(self, agent: str, key: str, value: str) -> None:
        self.redis.hset(self._name(agent), key, value)

    def drop(self, agent: str, keys: Iterable[str]) -> None:
        keys = list(keys)
        if keys:
            self.redis.hdel(self._name(agent), *keys)

    def clear(self, agent: str) -> None:
        self.redis.delete(self._name(agent))

    def size(self, agent: str) -> tuple[int, int]:
        values = self.redis.hvals(self._name(agent))
        return len(values), sum(len(v) for v in values)


class LocalFastTier:
    """The fast tier in this process's memory: used when no kernel Redis is configured (unit tests, a
    StorageService used as a library)."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def get(self, agent: str, key: str) -> str | None:
        return self.data.get(agent, {}).get(key)

    def set(self, agent: str, key: str, value: str) -> None:
        with self._lock:
            self.data.setdefault(agent, {})[key] = value

    def drop(self, agent: str, keys: Iterable[str]) -> None:
        with self._lock:
            d = self.data.get(agent, {})
            for key in keys:
                d.pop(key, None)

    def clear(self, agent: str) -> None:
        with self._lock:
            self.data.pop(agent, None)

    def size(self, agent: str) -> tuple[int, int]:
        d = self.data.get(agent, {})
        return len(d), sum(len(v.encode("utf-8")) for v in d.values())


class _Agent:
    def __init__(self, budget: int, k: int) -> None:
        self.policy = LRUK(budget, k)
        self.lock = threading.Lock()
        self.hits = self.misses = 0
        self.dirty = True
        """The fast tier may hold what the policy does not know of (a fresh process, a Redis failure): it is
        cleared, and the policy restarted, on the next use that can reach Redis."""


def value_text(value: Any) -> str:
    """What is embedded for an item: a string as is, anything else as its JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


class MemoryManager:
    """Per-agent memory over the durable tier (``db``), the fast tier and the vector index.

    ``db(agent, create)`` gives the agent's SQLite connection (or None); ``vectors()`` and ``embed(texts)``
    are called lazily, so that get/list/delete never load a model. ``quota_bytes``: the agent's storage quota
    (:mod:`aios.services.storage.quota`), which its memory values count against with its files; ``None``: none."""

    def __init__(self, fast: FastTier, budget_bytes: int, k: int, db: Callable[[str, bool], Any],
                 vectors: Callable[[], Any], embed: Callable[[list[str]], Any], quota_bytes: int | None = None) -> None:
        self.fast, self.budget, self.k, self.quota = fast, budget_bytes, k, quota_bytes
        self._db, self._vectors, self._embed = db, vectors, embed
        self._agents: dict[str, _Agent] = {}
        self._agents_lock = threading.Lock()

    def _agent(self, agent: str) -> _Agent:
        with self._agents_lock:
            state = self._agents.get(agent)
            if state is None:
                state = self._agents[agent] = _Agent(self.budget, self.k)
        if state.dirty:
            with state.lock:
                # This process knows nothing of what an earlier process (or a failed write) left in the fast
                # tier: start it empty, so the policy's accounting is the truth (the durable tier has it all).
                if state.dirty and self._fast(state, self.fast.clear, agent) is not _FAILED:
                    state.policy = LRUK(self.budget, self.k)
                    state.dirty = False
        return state

    def _fast(self, state: _Agent, op: Callable[..., Any], *args: Any) -> Any:
        """A fast-tier operation; if Redis fails, memory goes on from the durable tier alone (slower, never
        wrong) and the fast tier is cleared once Redis answers again."""
        try:
            return op(*args)
        except redis.RedisError as exc:
            if not state.dirty:
                log.warning("memory fast tier unavailable (%s); serving from the durable tier", exc)
            state.dirty = True
            return _FAILED

    def _missing(self, agent: str, key: str) -> NotFound:
        return NotFound(f"memory key '{key}' not found for agent '{agent}'; list keys with op='list'")

    def write(self, agent: str, key: str | None, value: Any, mode: str) -> dict[str, Any]:
        """``mode``: ``put`` (create or replace), ``create`` (fails if the key exists), ``update`` (fails if not)."""
        text = to_json(value)
        if key is None:
            key = uuid.uuid4().hex
        vector = self._embed([value_text(value)])[0]
        state = self._agent(agent)
        db = self._db(agent, True)
        now = time.time()
        with state.lock, db:  # IMMEDIATE takes the write lock first, so "created" is decided under it
            db.execute("BEGIN IMMEDIATE")
            old = db.execute("SELECT length(CAST(value AS BLOB)) FROM memory WHERE key = ?", (key,)).fetchone()
            created = old is None
            if mode == "create" and not created:
                raise Conflict(f"memory key '{key}' already exists for agent '{agent}'; use update_memory to "
                           "change it")
            if mode == "update" and created:
                raise self._missing(agent, key)
            size = len(text.encode("utf-8"))
            quota.charge(db, agent, size - (0 if old is None else int(old[0])), self.quota,
                         f"memory item '{key}' ({size} bytes)")
            db.execute("INSERT INTO memory VALUES (?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                       "value = excluded.value, updated_at = excluded.updated_at", (key, text, now, now))
            self._vectors().put_memory(agent, [(key, vector)])
            self._admit(agent, state, key, text)  # before COMMIT: another process's later write lands after
        return {"key": key, "created": created}

    def _admit(self, agent: str, state: _Agent, key: str, text: str) -> None:
        if state.dirty:
            self._fast(state, self.fast.drop, agent, [key])  # never leave an old value behind
            return
        resident, evicted = state.policy.access(key, len(text.encode("utf-8")))
        if self._fast(state, self.fast.drop, agent, [e for e in evicted if e != key] + ([key] if not resident
                                                                                          else [])) is _FAILED:
            return
        if resident:
            self._fast(state, self.fast.set, agent, key, text)

    def get(self, agent: str, key: str) -> dict[str, Any]:
        state = self._agent(agent)
        with state.lock:
            if key in state.policy and not state.dirty:
                text = self._fast(state, self.fast.get, agent, key)
                if text is not None and text is not _FAILED:
                    state.hits += 1
                    state.policy.access(key, len(text.encode("utf-8")))
                    return {"key": key, "value": json.loads(text)}
            db = self._db(agent, False)
            row = None if db is None else db.execute("SELECT value FROM memory WHERE key = ?", (key,)).fetchone()
            if row is None:
                raise self._missing(agent, key)
            state.misses += 1
            self._admit(agent, state, key, row[0])  # swapped back in; LRU-K picks what makes room
            return {"key": key, "value": json.loads(row[0])}

    def delete(self, agent: str, key: str) -> dict[str, Any]:
        db = self._db(agent, False)
        if db is None:
            return {"key": key, "deleted": False}
        state = self._agent(agent)
        with state.lock, db:
            db.execute("BEGIN IMMEDIATE")
            old = db.execute("SELECT length(CAST(value AS BLOB)) FROM memory WHERE key = ?", (key,)).fetchone()
            deleted = old is not None
            if deleted:
                db.execute("DELETE FROM memory WHERE key = ?", (key,))
                quota.charge(db, agent, -int(old[0]), None, f"deleting memory item '{key}'")
            state.policy.remove(key)
            self._fast(state, self.fast.drop, agent, [key])
        if deleted:
            self._vectors().delete_memory(agent, key)
        return {"key": key, "deleted": deleted}

    def list(self, agent: str) -> dict[str, Any]:
        db = self._db(agent, False)
        return {"keys": [] if db is None else sorted(row[0] for row in db.execute("SELECT key FROM memory"))}

    def search(self, agent: str, query: str, k: int) -> dict[str, Any]:
        db = self._db(agent, False)
        if db is None:
            return {"query": query, "results": []}
        vector = self._embed([query])[0]
        results = []
        for key, score in self._vectors().search_memory(agent, vector, k):
            row = db.execute("SELECT value FROM memory WHERE key = ?", (key,)).fetchone()
            if row is not None:  # deleted between the index and the table: not a result
                results.append({"key": key, "value": json.loads(row[0]), "score": round(score, 6)})
        return {"query": query, "results": results}

    def stats(self, agent: str) -> dict[str, Any]:
        state = self._agent(agent)
        with state.lock:
            items, held = self.fast.size(agent)
            db = self._db(agent, False)
            total = 0 if db is None else db.execute("SELECT count(*) FROM memory").fetchone()[0]
            return {"budget_bytes": self.budget, "k": self.k, "fast_items": items, "fast_bytes": held,
                    "items": total, "hits": state.hits, "misses": state.misses}


def to_json(value: Any) -> str:
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidSyscall(f"memory value must be plain JSON: {exc}") from None
