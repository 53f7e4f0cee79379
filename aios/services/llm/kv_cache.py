"""The engine's cache of conversations: which token prefixes it keeps the KV cells of, and which it lets go.

Why: an agent's every LLM call carries its whole conversation so far (ReAct, chat history). When a call ends,
its KV cells (prompt and output) are kept here as llama.cpp sequence state, keyed by their tokens; the agent's
next call, whose prompt extends them, loads them and prefills only the new turn. Agents that share a system prompt
share its cells the same way. Output does not change: the cells are bit for bit those the prompt would get
computed afresh (one KV stream per sequence, flash attention; see :mod:`aios.services.llm.engine`).

This module is the policy alone, pure and unit-tested without llama.cpp (tests/unit/test_kv_cache.py): a radix
tree of token sequences, as in SGLang's ``radix_cache`` (a query finds, in one walk, the cached sequence sharing
its longest prefix), and least-recently-used eviction within a byte budget. An entry's data are opaque bytes
here (the runner's ``llama_state_seq_get_data``); a suspended generation's snapshot is the same thing, so a
resume on the worker that suspended it finds its cells here even when the snapshot carried tokens only.

Why host memory and not spare KV streams: in llama.cpp, copying between two sequences' streams
(``llama_memory_seq_cp``) copies the whole stream, ``n_ctx`` cells, while a sequence's state holds only its used
cells, so writing a conversation out and reading it back costs less than a stream copy; and the streams' memory
stays for the running sequences.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(eq=False)
class Entry:
    """One cached sequence: its ``tokens`` (those of its KV cells, in order), whose they were, and its data."""

    tokens: tuple[int, ...]
    agent: str
    data: bytes = field(repr=False)
    sharers: set[str] = field(default_factory=set, repr=False)
    """Other agents whose conversation it holds too (theirs was a prefix of it when they ended)."""


class _Node:
    __slots__ = ("children", "edge", "entry", "parent")

    def __init__(self, edge: tuple[int, ...], parent: _Node | None) -> None:
        self.edge = edge  # the tokens from the parent to this node
        self.parent = parent
        self.children: dict[int, _Node] = {}  # by the first token of the child's edge
        self.entry: Entry | None = None


def _common(a: Sequence[int], b: Sequence[int], start: int) -> int:
    """How many tokens ``a`` shares with ``b[start:]`` from their beginning."""
    n, limit = 0, min(len(a), len(b) - start)
    while n < limit and a[n] == b[start + n]:
        n += 1
    return n


class RadixCache:
    """Cached sequences of at most ``budget_bytes`` data in all, least recently used evicted first.

    Invariants: every leaf holds an entry (so every subtree does), and no entry's tokens are a prefix of another
    entry's (the longer one serves every match the shorter would: an agent's earlier turn is dropped when its
    next one is kept)."""

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 0:
            raise ValueError(f"the cache budget must not be negative: {budget_bytes}")
        self.budget_bytes = budget_bytes
        self.nbytes = 0
        self._root = _Node((), None)
        self._lru: OrderedDict[int, tuple[Entry, _Node]] = OrderedDict()  # by id(entry), least recent first
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._lru)

    def entries(self) -> list[Entry]:
        """Least recently used first."""
        return [e for e, _ in self._lru.values()]

    def agents(self) -> set[str]:
        """The agents whose conversations are cached (in their own entries, or in another's that extends them)."""
        return {a for e, _ in self._lru.values() for a in (e.agent, *e.sharers)}

    def match(self, tokens: Sequence[int]) -> tuple[Entry | None, int]:
        """The cached entry sharing the longest prefix with ``tokens``, and that prefix's length (``None, 0``
        when none shares a token). Of several entries sharing it, the shortest (the least data to load)."""
        node, i = self._root, 0
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                break
            k = _common(child.edge, tokens, i)
            i, node = i + k, child
            if k < len(child.edge):
                break
        if i == 0:
            return None, 0
        entry = self._shortest(node)
        self.touch(entry)
        return entry, i

    def insert(self, tokens: Sequence[int], agent: str, data: bytes) -> Entry | None:
        """Keep ``data``, the cells of ``tokens``. Returns the entry that now serves them: the new one, or one
        already cached that extends them (then nothing is added); None when ``data`` alone exceeds the budget."""
        if len(data) > self.budget_bytes or not tokens:
            return None
        tokens = tuple(tokens)
        node, i = self._root, 0
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                leaf = _Node(tokens[i:], node)
                node.children[tokens[i]] = leaf
                node, i = leaf, len(tokens)
                break
            k = _common(child.edge, tokens, i)
            if k < len(child.edge):  # split the edge where the new tokens leave it
                mid = _Node(child.edge[:k], node)
                node.children[tokens[i]] = mid
                child.edge, child.parent = child.edge[k:], mid
                mid.children[child.edge[0]] = child
                child = mid
            i, node = i + k, child
        if node.children:  # a cached entry extends these tokens: it serves them already
            longer = self._shortest(node)
            self.touch(longer)
            if agent != longer.agent:
                longer.sharers.add(agent)
            return longer
        if node.entry is not None:  # the same tokens again: the newer data replace the older, in place
            self._lru.pop(id(node.entry))
            self.nbytes -= len(node.entry.data)
        entry = Entry(tokens, agent, bytes(data))
        node.entry = entry
        self._lru[id(entry)] = (entry, node)
        self.nbytes += len(entry.data)
        up = node.parent
        while up is not None:  # cached prefixes of the new entry are redundant now
            if up.entry is not None:
                self._drop(up.entry)
            up = up.parent
        while self.nbytes > self.budget_bytes:
            victim = next(iter(self._lru.values()))[0]
            self._drop(victim)
            self.evicted += 1
        return entry

    def touch(self, entry: Entry) -> None:
        if id(entry) in self._lru:
            self._lru.move_to_end(id(entry))

    def remove(self, entry: Entry) -> None:
        """Forget ``entry`` (its data would not load)."""
        if id(entry) in self._lru:
            self._drop(entry)

    def clear(self) -> None:
        for entry in self.entries():
            self._drop(entry)

    def _drop(self, entry: Entry) -> None:
        _, node = self._lru.pop(id(entry))
        self.nbytes -= len(entry.data)
        node.entry = None
        while node.parent is not None and node.entry is None and not node.children:  # keep every leaf an entry
            del node.parent.children[node.edge[0]]
            node = node.parent
        if node.parent is not None and node.entry is None and len(node.children) == 1:  # one edge, not two
            (only,) = node.children.values()
            node.edge, node.children = node.edge + only.edge, only.children
            for grandchild in node.children.values():
                grandchild.parent = node
            node.entry = only.entry
            if only.entry is not None:
                self._lru[id(only.entry)] = (only.entry, node)

    @staticmethod
    def _shortest(node: _Node) -> Entry:
        """The entry with the fewest tokens in ``node``'s subtree (every subtree holds one)."""
        best: tuple[int, Entry] | None = None
        stack = [node]
        while stack:
            n = stack.pop()
            if n.entry is not None and (best is None or len(n.entry.tokens) < best[0]):
                best = (len(n.entry.tokens), n.entry)
            stack.extend(n.children.values())
        assert best is not None, "a subtree without an entry: the cache's invariant is broken"
        return best[1]
