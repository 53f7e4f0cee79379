"""The batch scheduler alone (no model, no llama.cpp): admission, compaction, chunked prefill within the token
budget, time slices and preemption, where a sequence starts from (a cached conversation, its snapshot); each test runs in milliseconds."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from aios.services.llm.batch_scheduler import (
    MAX_CHUNK,
    MIN_PREFIX,
    Admit,
    BatchScheduler,
    Budget,
    Finished,
    Move,
    Request,
    Sampled,
    Status,
    StepPlan,
)

EOG = -1


def req(n: int = 4, *, start: int = 100, max_tokens: int = 50, **kw: object) -> Request:
    """A request whose prompt is ``n`` tokens counting up from ``start``."""
    return Request(prompt=list(range(start, start + n)), max_tokens=max_tokens, **kw)  # type: ignore[arg-type]


def sched(n_seq: int = 4, n_batch: int = 64, n_ctx: int = 256, cache_bytes: int = 1 << 20) -> BatchScheduler:
    return BatchScheduler(Budget(n_seq=n_seq, n_ctx=n_ctx, n_batch=n_batch), cache_bytes=cache_bytes)


def step(s: BatchScheduler, token: Callable[[int], int] = lambda rid: 7) -> StepPlan:
    """Schedule a step and feed back ``token(rid)`` for every sequence the plan samples (EOG ends it)."""
    plan = s.schedule()
    outs = [Sampled(c.rid, token(c.rid), token(c.rid) == EOG) for c in (*plan.decode, *plan.prefill) if c.logits]
    s.update(outs)
    return plan


def slots(s: BatchScheduler) -> list[int]:
    return sorted(s.slot(r) for r in s.running_ids())


def test_admission_takes_the_lowest_free_slot_and_finish_frees_it() -> None:
    s = sched(n_seq=3)
    a, b, c, d = (s.add(req()) for _ in range(4))
    plan = s.schedule()
    assert [(x.rid, x.slot) for x in plan.admitted] == [(a, 0), (b, 1), (c, 2)]
    assert s.waiting_ids() == [d] and s.free_slots == [] and plan.n_running == 3
    done = s.finish(b)
    assert (done.slot, done.status, b in s) == (1, Status.FINISHED_ABORTED, False)
    assert s.free_slots == [1]
    plan = s.schedule()
    assert [(x.rid, x.slot) for x in plan.admitted] == [(d, 1)] and plan.moves == ()
    with pytest.raises(KeyError):
        s.finish(b)


def test_a_sequence_ending_below_others_makes_the_highest_move_down() -> None:
    s = sched(n_seq=4)
    rids = [s.add(req(start=100 * i)) for i in range(4)]
    step(s)
    step(s, lambda rid: EOG if rid == rids[1] else 7)  # slot 1 ends
    assert s.free_slots == [1] and rids[1] not in s
    plan = s.schedule()
    assert plan.moves == (Move(rids[3], 3, 1),)
    assert slots(s) == [0, 1, 2] and s.slot(rids[3]) == 1 and s.free_slots == [3]
    assert [c.slot for c in plan.decode] == [0, 1, 2]  # the batch in slot order
    s.finish(rids[0])
    s.finish(rids[2])
    plan = s.schedule()  # the highest one moves down until there are no holes
    assert plan.moves == (Move(rids[3], 1, 0),) and slots(s) == [0] and s.free_slots == [3, 2, 1]


def test_prefill_is_chunked_within_the_token_budget_after_the_decode_tokens() -> None:
    s = sched(n_seq=3, n_batch=8)
    a = s.add(req(3))
    first = step(s)
    assert [(c.rid, c.pos, len(c.tokens), c.logits) for c in first.prefill] == [(a, 0, 3, True)]
    b, c = s.add(req(10, start=200)), s.add(req(5, start=300))
    plans = [step(s) for _ in range(3)]
    for p in plans:  # one token per decoding sequence, first; prompt chunks in the room left
        assert p.n_tokens <= 8 and p.decode[0].rid == a and all(len(x.tokens) == 1 for x in p.decode)
    assert [[(x.rid, x.pos, len(x.tokens), x.logits) for x in p.prefill] for p in plans] == [
        [(b, 0, 7, False)],  # 8 - 1 decode token
        [(b, 7, 3, True), (c, 0, 3, False)],  # b's prompt done: its logits; c gets 3 (4 would end alone)
        [(c, 3, 1, False)]]  # 2 beside two decode tokens would end alone too
    assert plans[1].prefill[0].tokens == tuple(range(207, 210))
    assert [x.rid for x in plans[2].decode] == [a, b]  # b decodes from the step after its prompt is done
    assert [x.pos for x in plans[2].decode] == [5, 10]


def test_preemption_at_the_quantum_only_when_should_yield_says_others_wait() -> None:
    others_wait, asked = [False], [0]

    def should_yield() -> bool:
        asked[0] += 1
        return others_wait[0]

    s = sched(n_seq=1)
    a = s.add(req(max_tokens=20, quantum=3, should_yield=should_yield))
    for _ in range(3):
        plan = step(s)
    assert asked[0] == 0 and plan.preempted == ()  # not asked before a quantum of tokens
    b = s.add(req(start=500))
    step(s)
    assert asked[0] == 1 and a in s and s.waiting_ids() == [b]  # quantum reached, nobody (said to) wait: go on
    others_wait[0] = True
    plan = step(s)
    assert asked[0] == 2 and [p.rid for p in plan.preempted] == [a]
    assert plan.preempted[0].status == Status.FINISHED_PREEMPTED and plan.preempted[0].tokens == (7,) * 4
    assert plan.preempted[0].status.finish_reason == "preempted"
    assert [(x.rid, x.slot) for x in plan.admitted] == [(b, 0)]  # the freed slot goes to the waiting request
    no_callable = sched(n_seq=1)
    c = no_callable.add(req(quantum=2))
    plans = [step(no_callable) for _ in range(3)]
    assert [p.rid for p in plans[2].preempted] == [c]  # no should_yield: every quantum ends the slice


def test_should_yield_raising_changes_nothing() -> None:
    def boom() -> bool:
        raise RuntimeError("broker down")

    s = sched(n_seq=2)
    a = s.add(req(quantum=1, should_yield=boom))
    step(s)
    with pytest.raises(RuntimeError):
        s.schedule()
    assert s.running_ids() == [a] and s.free_slots == [1] and s.status(a) == Status.RUNNING


def keep(s: BatchScheduler, finished: Finished, agent: str = "a") -> bytes:
    """What the runner does with a sequence that ends with ``keep``: its cells' state goes to the cache (here a
    stand-in naming the tokens, since there is no llama.cpp state without the model)."""
    assert finished.keep
    data = f"cells of {list(finished.cells)}".encode()
    s.cache.insert(finished.cells, agent, data)
    return data


def test_an_ended_conversation_keeps_its_cells_and_the_next_turn_starts_from_them() -> None:
    s = sched(n_seq=4)
    first = s.add(req(20, max_tokens=3, agent="a"))
    plan = s.schedule()
    assert plan.admitted == (Admit(first, 0),)
    outs = [step(s) for _ in range(2)]
    result = s.update([Sampled(c.rid, 8) for c in s.schedule().decode])  # 3 tokens: 7, 7, 8: max_tokens
    (done,) = result.finished
    assert outs and done.status == Status.FINISHED_LENGTH and done.tokens == (7, 7, 8)
    assert done.cells == tuple(range(100, 120))  # its prompt's: the reply's are prefilled with the next turn
    data = keep(s, done)
    # Its agent's next call carries the conversation so far and a new turn: only the new tokens are prefilled.
    turn = s.add(Request(prompt=list(done.cells) + [7, 7, 8, 1, 2, 3], max_tokens=5))
    same = s.add(req(20))  # a prompt wholly cached: its last token is evaluated again, for the logits
    few = s.add(Request(prompt=list(range(100, 100 + MIN_PREFIX - 1)) + [1, 2], max_tokens=5))
    plan = s.schedule()
    assert plan.admitted == (Admit(turn, 0, data, 20), Admit(same, 1, data, 19), Admit(few, 2))
    assert {c.rid: (c.pos, c.tokens) for c in plan.prefill} == {
        turn: (20, (7, 7, 8, 1, 2, 3)), same: (19, (119,)), few: (0, tuple(range(100, 115)) + (1, 2))}
    off = sched(cache_bytes=0)
    a = off.add(req(20))
    step(off)
    assert not off.finish(a).keep and len(off.cache) == 0
    assert off.schedule().admitted == () and off.cached_prefix(list(range(100, 130))) == (None, 0)
    short = sched()
    b = short.add(req(MIN_PREFIX - 2))
    step(short)
    assert not short.finish(b).keep  # too short to be worth a load
    aborted = sched()
    c = aborted.add(req(20))
    step(aborted)
    assert not aborted.finish(c).keep  # cut short by a failure: kept nowhere


def test_the_cache_switched_off_is_not_used() -> None:
    s = sched()
    a = s.add(req(20))
    step(s)
    keep(s, s.finish(a, Status.FINISHED_STOPPED))
    s.prefix_cache = False
    b = s.add(req(20))
    assert s.schedule().admitted == (Admit(b, 0),)


def test_a_suspended_generation_resumes_from_the_cache_when_its_snapshot_has_tokens_only() -> None:
    """The snapshot and the cache are one mechanism: a sequence preempted keeps its cells in the cache, and its
    resume on this engine starts from them even when the snapshot that travelled carried no KV state."""
    s = sched(n_seq=1)
    r = s.add(req(20, quantum=2, should_yield=lambda: True))
    step(s), step(s)  # the prompt, then a token: two tokens generated, a time slice's worth
    (done,) = s.schedule().preempted
    assert done.status == Status.FINISHED_PREEMPTED and done.tokens == (7, 7) and done.keep
    assert done.cells == tuple(range(100, 120))
    data = keep(s, done)
    again = s.add(req(20, resume=list(done.tokens)))
    plan = s.schedule()
    assert plan.admitted == (Admit(again, 0, data, 20),) and plan.prefill == ()
    s.update([])  # its first token decoded again, nothing to sample yet
    steps = [plan, step(s)]
    assert [(c.pos, c.tokens, c.logits, c.sample_index) for p in steps for c in p.decode] == [
        (20, (7,), False, 2), (21, (7,), True, 2)]  # its tokens decoded again one by one, as first decoded
    assert r not in s


def test_finish_reasons_and_the_context_limit() -> None:
    s = sched(n_seq=2, n_ctx=8)
    a, b = s.add(req(2, max_tokens=2)), s.add(req(4, start=300, max_tokens=50))
    step(s)
    plan = s.schedule()
    result = s.update([Sampled(c.rid, 9) for c in plan.decode])
    assert {f.rid: (f.status, f.tokens) for f in result.finished} == {a: (Status.FINISHED_LENGTH, (7, 9))}
    for _ in range(2):
        plan = s.schedule()
        result = s.update([Sampled(c.rid, 9) for c in plan.decode])
    assert [(f.rid, f.status.finish_reason) for f in result.finished] == [(b, "length")]  # its next position would be n_ctx
    assert s.free_slots == [1, 0] and not s.has_work()


def test_a_snapshot_resumes_with_one_token_and_falls_back_to_the_cache_then_to_recomputing() -> None:
    s = sched(n_seq=2)
    r = s.add(req(20, resume=[5, 6, 7], state=b"kv"))
    plan = s.schedule()
    assert plan.admitted == (Admit(r, 0, b"kv", 22, snapshot=True),) and plan.prefill == ()
    assert [(c.pos, c.tokens, c.logits, c.sample_index) for c in plan.decode] == [(22, (7,), True, 3)]
    s2 = sched(n_seq=2)
    warm = s2.add(req(20))
    step(s2)
    data = keep(s2, s2.finish(warm, Status.FINISHED_STOPPED))  # its cells: the 20 prompt tokens
    r2 = s2.add(req(20, resume=[5, 6], state=b"from another layout"))
    planned = s2.schedule()
    assert planned.admitted == (Admit(r2, 0, b"from another layout", 21, snapshot=True),)
    assert [c.tokens for c in planned.decode] == [(6,)]
    revised = s2.restore_failed(r2)  # it starts over in this very step, from the cache
    assert revised.admitted == (Admit(r2, 0, data, 20),) and revised.prefill == ()
    assert [(c.pos, c.tokens, c.logits) for c in revised.decode] == [(20, (5,), False)]
    afresh = s2.restore_failed(r2)  # that did not load either: from scratch, and the cache forgets it
    assert afresh.admitted == (Admit(r2, 0),) and len(s2.cache) == 0 and afresh.decode == ()
    assert [(c.pos, c.tokens, c.logits) for c in afresh.prefill] == [(0, tuple(range(100, 120)), False)]
    assert s2.update([]).finished == ()
    plans = [step(s2) for _ in range(2)]
    assert [(c.pos, c.tokens, c.logits, c.sample_index) for p in plans for c in p.decode] == [
        (20, (5,), False, 2), (21, (6,), True, 2)]  # the earlier tokens decoded again one per step, then sampled


def test_a_plan_not_decoded_leaves_positions_where_they_were() -> None:
    s = sched(n_seq=1, n_batch=4)
    s.add(req(10))
    first, again = s.schedule(), s.schedule()  # the first plan's batch was never decoded (a failed decode)
    assert first.prefill == again.prefill and again.prefill[0].pos == 0
    s.update([])
    assert s.schedule().prefill[0].pos == 4


def test_status_is_ordered_and_budgets_are_checked() -> None:
    assert Status.WAITING < Status.RUNNING < Status.FINISHED_STOPPED
    assert [st.is_finished() for st in Status] == [False, False, True, True, True, True]
    with pytest.raises(ValueError):
        Budget(n_seq=8, n_ctx=64, n_batch=4)
    with pytest.raises(ValueError):
        Budget(n_seq=0, n_ctx=64, n_batch=4)


def test_progress_says_when_a_checkpoint_may_be_taken() -> None:
    """A checkpoint (tokens + KV state) is whole only once the prompt is prefilled and resumed tokens are decoded
    again: then the cells hold every generated token but the last, as when a slice ends."""
    s = sched(n_batch=4)
    fresh = s.add(req(n=6))
    resumed = s.add(req(n=2, start=300, resume=[1, 2, 3]))  # tokens only: decoded again one per step
    s.schedule()
    assert s.progress(fresh) == ([], False) and s.progress(resumed)[1] is False
    s.update([])  # the first chunk of the prompts: still prefilling
    assert s.progress(fresh)[1] is False
    for _ in range(6):
        step(s)
    tokens, whole = s.progress(fresh)
    assert whole and tokens == [7] * len(tokens) and len(tokens) >= 1
    tokens, whole = s.progress(resumed)
    assert whole and tokens[:3] == [1, 2, 3] and len(tokens) > 3


def test_a_long_prompt_is_prefilled_in_pieces_below_the_attention_tile() -> None:
    """A prompt's cells must not depend on where it is cut (the cache cuts it where the last call ended): every
    piece stays below llama.cpp's flash-attention tile, however much room the step has."""
    s = sched(n_seq=2, n_batch=512)
    a = s.add(req(150))
    plan = s.schedule()
    assert [(c.rid, c.pos, len(c.tokens)) for c in plan.prefill] == [(a, 0, MAX_CHUNK)]
    s.update([])
    assert [(c.pos, len(c.tokens)) for c in s.schedule().prefill] == [(MAX_CHUNK, MAX_CHUNK)]


def test_no_prompt_chunk_leaves_its_last_token_alone_in_a_ubatch() -> None:
    """llama.cpp evaluates as many tokens of every sequence per ubatch: a chunk one token longer than all others
    would end in a ubatch of its own last token (LONE_ROW); it is cut one token shorter instead."""
    s = sched(n_seq=3, n_batch=512)
    a = s.add(req(5, max_tokens=9))
    step(s)
    b = s.add(req(3, start=300))
    plan = s.schedule()  # beside a's decode token: b's 3 prompt tokens end in a ubatch of 2, not alone
    assert {c.rid: len(c.tokens) for c in (*plan.decode, *plan.prefill)} == {a: 1, b: 3}
    s.update([Sampled(a, 7), Sampled(b, 7)])
    s.add(req(2, start=400))
    plan = s.schedule()  # but 2 would: 1 beside the others, then 1 alone; it takes 1
    assert sorted(len(c.tokens) for c in (*plan.decode, *plan.prefill)) == [1, 1, 1]
    c = sched(n_seq=2, n_batch=512)
    x, y = c.add(req(31)), c.add(req(30, start=300))
    plan = c.schedule()
    assert {ch.rid: (len(ch.tokens), ch.logits) for ch in plan.prefill} == {x: (30, False), y: (30, True)}
