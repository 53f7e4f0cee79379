"""The conversation cache's policy alone (no model): longest-prefix match in the radix tree, redundant prefixes,
least-recently-used eviction within the byte budget; each test runs in milliseconds."""

from __future__ import annotations

import random

import pytest

from aios.services.llm.kv_cache import RadixCache

SYSTEM = tuple(range(100, 120))


def conv(agent: int, turns: int) -> tuple[int, ...]:
    """A conversation: the shared system prompt, then ``turns`` turns of 5 tokens of agent ``agent``'s own."""
    return SYSTEM + tuple(1000 * (agent + 1) + t for t in range(5 * turns))


def test_a_conversation_matches_its_agents_earlier_turn_and_others_share_the_system_prompt() -> None:
    c = RadixCache(1 << 20)
    a1 = c.insert(conv(0, 1), "a", b"x" * 10)
    b2 = c.insert(conv(1, 2), "b", b"y" * 20)
    assert a1 is not None and b2 is not None and len(c) == 2 and c.nbytes == 30
    assert c.match(conv(0, 3)) == (a1, len(conv(0, 1)))  # agent a's next call extends its first turn
    assert c.match(conv(1, 2) + (7,)) == (b2, len(conv(1, 2)))
    entry, m = c.match(conv(2, 1))  # a new agent shares the system prompt with both: the shorter is loaded
    assert (entry, m) == (a1, len(SYSTEM))
    assert c.match((5, 6, 7)) == (None, 0)
    assert c.match(conv(1, 1)) == (b2, len(conv(1, 1)))  # part of an entry: its cells are trimmed after loading
    assert c.agents() == {"a", "b"}


def test_an_agents_next_turn_replaces_its_earlier_one_and_a_shorter_insert_adds_nothing() -> None:
    c = RadixCache(1 << 20)
    first = c.insert(conv(0, 1), "a", b"1")
    second = c.insert(conv(0, 2), "a", b"22")
    assert c.entries() == [second] and c.nbytes == 2  # the earlier turn is a prefix of the next: dropped
    assert first is not None and c.match(conv(0, 1))[0] is second
    assert c.insert(conv(0, 1), "a", b"333") is second and c.nbytes == 2  # already served by the longer one
    assert c.insert(conv(0, 1), "b", b"333") is second and c.agents() == {"a", "b"}  # b's conversation is held too
    again = c.insert(conv(0, 2), "a", b"4444")  # the same tokens again: the newer data replaces the older
    assert c.entries() == [again] and c.nbytes == 4


def test_least_recently_used_conversations_are_evicted_past_the_budget() -> None:
    c = RadixCache(100)
    entries = [c.insert(conv(i, 1), f"agent{i}", b"." * 30) for i in range(3)]
    c.match(conv(0, 2))  # agent 0 came back: now the most recent
    d = c.insert(conv(3, 1), "agent3", b"." * 30)
    assert c.entries() == [entries[2], entries[0], d] and c.nbytes == 90 and c.evicted == 1
    entry, m = c.match(conv(1, 1))  # agent 1's cells are gone; the system prompt's are not
    assert m == len(SYSTEM) and entry in (entries[0], entries[2], d)
    assert c.insert(conv(4, 1), "big", b"." * 101) is None and len(c) == 3  # larger than the whole budget
    assert RadixCache(0).insert(conv(0, 1), "a", b"x") is None
    with pytest.raises(ValueError):
        RadixCache(-1)


def test_the_tree_agrees_with_a_linear_scan_under_random_inserts_and_evictions() -> None:
    rng = random.Random(7)
    c = RadixCache(400)
    for _ in range(600):
        base = rng.choice([(), (1, 2, 3), (1, 2, 4, 5), (9,)])
        tokens = base + tuple(rng.randrange(4) for _ in range(rng.randrange(1, 8)))
        if rng.random() < 0.5:
            c.insert(tokens, "a", b"." * rng.randrange(1, 60))
        else:
            entry, m = c.match(tokens)
            best = max((_shared(e.tokens, tokens) for e in c.entries()), default=0)
            assert m == best and (entry is None) == (best == 0)
            if entry is not None:
                assert _shared(entry.tokens, tokens) == m
        held = c.entries()
        assert c.nbytes == sum(len(e.data) for e in held) <= 400
        assert not any(a is not b and b.tokens[:len(a.tokens)] == a.tokens for a in held for b in held)
        for e in held:  # every entry is found by its own tokens
            assert c.match(e.tokens) == (c.match(e.tokens)[0], len(e.tokens))


def _shared(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n
