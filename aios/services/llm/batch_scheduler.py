"""The continuous-batching scheduler, on its own: which request runs in which slot and which tokens go in a step.

Why a module of its own: admission, slot compaction, where a sequence starts from (its snapshot, a cached
conversation: :mod:`aios.services.llm.kv_cache`), chunked prefill, time slices and preemption are decisions, not llama.cpp calls, and mixed with those calls they could only be tested on the real
model. As in vLLM v1, a pure state machine decides and a runner (:class:`~aios.services.llm.engine.BatchEngine`)
executes: no I/O and no llama.cpp here, so every rule is unit-tested in milliseconds (tests/test_batch_scheduler.py).

One step: the runner adds (:meth:`~BatchScheduler.add`) the requests submitted since the last one, calls
:meth:`~BatchScheduler.schedule` and carries out the :class:`StepPlan` it returns, in its order: snapshot and
free the sequences preempted at the end of their time slice (keeping their cells in the cache when
:attr:`Finished.keep`), start the admitted ones in their slots (from the state the :class:`Admit` names, a snapshot
or a cached conversation; if it does not load, :meth:`~BatchScheduler.restore_failed` revises the plan), move
sequences down into holes, decode one ``llama_batch`` holding the decode tokens then the prompt chunks. Then it
samples and feeds the tokens back with :meth:`~BatchScheduler.update`, which advances the sequences by what was
decoded and says which finished (their cells to keep as well).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from aios.services.llm.kv_cache import Entry, RadixCache

MIN_PREFIX = 16
"""Shortest cached prefix worth loading: a load copies the cached sequence's cells (all of them, then trims),
which costs about what prefilling a few tokens costs on a CPU."""

LONE_ROW = "one token of one sequence in a llama.cpp ubatch"
"""Past 512 KV cells, llama.cpp's CPU flash attention splits such a row's cells across threads and rounds
otherwise than for the same row beside others: the scheduler never cuts a prompt so that its last token ends alone,
and the runner pads a step of one token with a token in a free slot."""

MAX_CHUNK = 63
"""Most prompt tokens of one sequence in one step. llama.cpp's CPU flash attention takes a tiled path for 64 query
rows or more (``GGML_FA_TILE_Q``) and a row-by-row path below, and the two round differently: a prompt evaluated in
one long chunk gets other cells than the same tokens evaluated in pieces (from the cache, after a snapshot).
Below the tile, every row is computed alike however the prompt is cut, so the cells do not depend on the cut."""


@dataclass
class Request:
    prompt: list[int]
    max_tokens: int
    temperature: float = 0.0
    seed: int = 42
    grammar: Any = None
    """A ``llama_cpp.LlamaGrammar`` (``_grammar`` text, ``_root`` rule) or None."""
    resume: list[int] = field(default_factory=list)
    """Tokens this request generated before it was suspended."""
    state: bytes | None = None
    """The suspended sequence's llama.cpp state (its KV cells), restored instead of recomputing ``resume``."""
    quantum: int = 0
    """Tokens per time slice; 0: run to the end."""
    should_yield: Callable[[], bool] | None = None
    top_p: float = 1.0
    """Nucleus sampling (temperature > 0 only)."""
    on_token: Callable[[int, int], None] | None = None
    """Called on the engine's thread with ``(index, token)`` for each generated token as it is decoded (index
    counts from the generation's start, resumed tokens included): token streaming. It must not block."""
    checkpoint: int = 0
    """Hand the generation so far to ``on_checkpoint`` every this many generated tokens; 0: never."""
    on_checkpoint: Callable[[list[int], bytes | None], None] | None = None
    """Called on the engine thread with every token generated so far and the sequence's KV state (or None): what
    a suspension would return, so that a redelivered request resumes from there (it must return at once)."""
    agent: str = ""
    """Whose conversation this is: its cells, kept in the cache when it ends, are counted as that agent's."""


class Status(enum.IntEnum):
    """A request's status, in the order it goes through them; every status from ``FINISHED_STOPPED`` on is final."""

    WAITING = 0
    RUNNING = 1
    FINISHED_STOPPED = 2
    FINISHED_LENGTH = 3
    FINISHED_PREEMPTED = 4
    FINISHED_ABORTED = 5

    def is_finished(self) -> bool:
        return self >= Status.FINISHED_STOPPED

    @property
    def finish_reason(self) -> str:
        """``Generation.finish_reason``: ``stop``, ``length``, ``preempted`` ('' while not finished, or aborted)."""
        return {Status.FINISHED_STOPPED: "stop", Status.FINISHED_LENGTH: "length",
                Status.FINISHED_PREEMPTED: "preempted"}.get(self, "")


@dataclass(frozen=True)
class Budget:
    """What one engine holds: ``n_seq`` sequence slots of ``n_ctx`` tokens each, ``n_batch`` tokens per step."""

    n_seq: int
    n_ctx: int
    n_batch: int

    def __post_init__(self) -> None:
        if min(self.n_seq, self.n_ctx, self.n_batch) < 1:
            raise ValueError(f"budgets must be positive: {self}")
        if self.n_batch < self.n_seq:  # one decode token per sequence must fit in a step
            raise ValueError(f"n_batch ({self.n_batch}) must be at least n_seq ({self.n_seq})")


@dataclass(frozen=True)
class Admit:
    """``rid`` starts in ``slot``: with the first ``cells`` KV cells of ``state`` (llama.cpp sequence state: the
    request's own snapshot when ``snapshot``, else a cached conversation's), or afresh (``state`` None, 0 cells)."""

    rid: int
    slot: int
    state: bytes | None = field(default=None, repr=False)
    cells: int = 0
    snapshot: bool = False


@dataclass(frozen=True)
class Move:
    """Copy the KV stream of ``rid`` from slot ``src`` down to the free slot ``dst`` (slots stay consecutive)."""

    rid: int
    src: int
    dst: int


@dataclass(frozen=True)
class Chunk:
    """Tokens of one sequence in the batch, at positions ``pos``...; ``logits``: sample its token index
    ``sample_index`` from the last one."""

    rid: int
    slot: int
    pos: int
    tokens: tuple[int, ...]
    logits: bool
    sample_index: int


@dataclass(frozen=True)
class Finished:
    """A sequence that left its slot: every token it generated, and why (``status``); ``keep``: save the KV cells
    of its prompt (those of ``cells``) in the cache before the slot is emptied."""

    rid: int
    slot: int
    status: Status
    tokens: tuple[int, ...]
    prompt_tokens: int
    cells: tuple[int, ...] = ()
    keep: bool = False


@dataclass(frozen=True)
class StepPlan:
    """One step, in the order the runner carries it out."""

    preempted: tuple[Finished, ...] = ()
    admitted: tuple[Admit, ...] = ()
    moves: tuple[Move, ...] = ()
    decode: tuple[Chunk, ...] = ()
    """One token of each decoding sequence, in slot order: first in the batch."""
    prefill: tuple[Chunk, ...] = ()
    """Prompt chunks in the room left, in slot order."""
    n_running: int = 0

    @property
    def n_tokens(self) -> int:
        return sum(len(c.tokens) for c in self.decode) + sum(len(c.tokens) for c in self.prefill)


@dataclass(frozen=True)
class Sampled:
    """The token sampled for ``rid``; ``eog``: it ends the generation."""

    rid: int
    token: int
    eog: bool = False


@dataclass(frozen=True)
class StepResult:
    """What :meth:`BatchScheduler.update` decided: the sequences that ended, for the runner to free."""

    finished: tuple[Finished, ...] = ()


class _Seq:
    def __init__(self, rid: int, req: Request) -> None:
        self.rid, self.req = rid, req
        self.status = Status.WAITING
        self.slot = -1
        self.feed = list(req.prompt)  # prompt tokens still to prefill, in chunks
        self.replay = list(req.resume)  # generated tokens to decode again, one per step as they were first decoded
        self.pos = 0
        self.generated = list(req.resume)
        self.slice_count = 0
        self.slice_end = False  # a token of the last step ended a time slice: ask should_yield before the next
        self.source: Entry | None = None  # the cached conversation it started from
        self.snapshot_failed = False  # its snapshot did not load: never try it again
        self.cache_failed = False  # neither did the cached state it then started from: start afresh


class BatchScheduler:
    """The scheduling state of one engine; not thread-safe (the engine thread alone drives it)."""

    def __init__(self, budget: Budget, *, cache_bytes: int = 0) -> None:
        self.budget = budget
        self.cache = RadixCache(cache_bytes)
        """The conversations whose KV cells are kept (budget 0: none)."""
        self.prefix_cache = cache_bytes > 0
        """Whether the cache is used: sequences start from it, and keep their cells in it when they end."""
        self.free_slots = list(range(budget.n_seq - 1, -1, -1))
        """Free slot ids, highest first: ``pop()`` hands out the lowest."""
        self._waiting: deque[_Seq] = deque()
        self._running: list[_Seq] = []  # in slot order after each schedule()
        self._by_rid: dict[int, _Seq] = {}
        self._next_rid = 0
        self._planned = StepPlan()  # the last plan, until update() says its batch was decoded

    # -- requests in, state out ---------------------------------------------------------------------------

    def add(self, req: Request) -> int:
        """Queue ``req``; returns its request id."""
        rid, self._next_rid = self._next_rid, self._next_rid + 1
        seq = _Seq(rid, req)
        self._waiting.append(seq)
        self._by_rid[rid] = seq
        return rid

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self._running)

    def waiting_ids(self) -> list[int]:
        return [s.rid for s in self._waiting]

    def running_ids(self) -> list[int]:
        return [s.rid for s in self._running]

    def has_work(self) -> bool:
        return bool(self._waiting or self._running)

    def __contains__(self, rid: object) -> bool:
        return rid in self._by_rid

    def status(self, rid: int) -> Status:
        return self._by_rid[rid].status

    def slot(self, rid: int) -> int:
        return self._by_rid[rid].slot

    def progress(self, rid: int) -> tuple[list[int], bool]:
        """What ``rid`` generated so far, and whether its KV cells hold all of it but the last token (it is not
        prefilling nor decoding resumed tokens again): only then is its state a snapshot a resume can start from."""
        s = self._by_rid[rid]
        return s.generated, s.status == Status.RUNNING and not s.feed and len(s.replay) <= 1

    # -- one step -----------------------------------------------------------------------------------------

    def schedule(self) -> StepPlan:
        """Decide the next step. Raises only what a ``should_yield`` raises, and then before changing anything.
        Positions advance by the plan's chunks only in :meth:`update`: a plan whose batch is not decoded (the
        decode failed, or :meth:`schedule` is called again) leaves them where they were."""
        # Every should_yield is asked before anything changes: one that raises leaves the state as it was.
        ending = [s for s in self._running if s.slice_end]
        yielding = {s.rid for s in ending if s.req.should_yield is None or s.req.should_yield()}
        for s in ending:
            s.slice_end = False
        preempted = tuple(self._finish(s, Status.FINISHED_PREEMPTED) for s in list(self._running)
                          if s.rid in yielding)
        admitted = tuple(self._admit(s) for s in self._take_admissible())
        moves = self._compact()
        self._running.sort(key=lambda q: q.slot)  # slot order: llama.cpp batches consecutive sequences together
        self._planned = self._compose(StepPlan(preempted, admitted, moves, n_running=len(self._running)))
        return self._planned

    def update(self, outputs: Iterable[Sampled]) -> StepResult:
        """The last plan's batch was decoded: advance its sequences, and feed back the tokens sampled from it."""
        plan, self._planned = self._planned, StepPlan()
        for c in (*plan.decode, *plan.prefill):
            s = self._by_rid.get(c.rid)
            if s is not None and s.status == Status.RUNNING:
                s.pos += len(c.tokens)
                if s.feed:
                    s.feed = s.feed[len(c.tokens):]
                else:
                    s.replay.pop(0)
        finished: list[Finished] = []
        for out in outputs:
            s = self._by_rid[out.rid]
            if out.eog:
                finished.append(self._finish(s, Status.FINISHED_STOPPED))
                continue
            s.generated.append(out.token)
            s.slice_count += 1
            if len(s.generated) >= s.req.max_tokens or s.pos + 1 >= self.budget.n_ctx:
                finished.append(self._finish(s, Status.FINISHED_LENGTH))
                continue
            if s.req.quantum and s.slice_count >= s.req.quantum:
                s.slice_end = True
            s.replay.append(out.token)
        return StepResult(tuple(finished))

    def finish(self, rid: int, status: Status = Status.FINISHED_ABORTED) -> Finished:
        """End ``rid`` (waiting or running) with ``status``; its slot is free for the next :meth:`schedule`."""
        return self._finish(self._by_rid[rid], status)

    def restore_failed(self, rid: int) -> StepPlan:
        """The state that the last plan's admission of ``rid`` named did not load (a snapshot from another model
        or KV layout): it starts from the cache instead if that was its snapshot, else afresh (and the cache
        forgets that entry); the rest is prefilled and its earlier tokens decoded again. Returns the last plan with
        its admission of ``rid`` and its batch revised; carry out that one."""
        s = self._by_rid[rid]
        if s.source is not None:
            self.cache.remove(s.source)
            s.cache_failed = True
        s.snapshot_failed = True
        fallback = self._start(s)
        admitted = tuple(fallback if a.rid == rid else a for a in self._planned.admitted)
        self._planned = self._compose(replace(self._planned, admitted=admitted))
        return self._planned

    # -- the rules ----------------------------------------------------------------------------------------

    def _take_admissible(self) -> list[_Seq]:
        taken: list[_Seq] = []
        while self._waiting and len(taken) < len(self.free_slots):
            taken.append(self._waiting.popleft())
        return taken

    def _admit(self, s: _Seq) -> Admit:
        s.slot, s.status = self.free_slots.pop(), Status.RUNNING
        self._running.append(s)
        return self._start(s)

    def cached_prefix(self, tokens: list[int]) -> tuple[Entry | None, int]:
        """The cached conversation a sequence of ``tokens`` starts from, and how many of its cells: the longest
        shared prefix, leaving at least one token to evaluate (for the logits); none under :data:`MIN_PREFIX`."""
        if not self.prefix_cache:
            return None, 0
        entry, m = self.cache.match(tokens)
        m = min(m, len(tokens) - 1)
        return (entry, m) if entry is not None and m >= MIN_PREFIX else (None, 0)

    def _start(self, s: _Seq) -> Admit:
        """Where ``s`` starts: the longest prefix of its tokens (prompt, then those generated before a suspension)
        whose cells it can load, from its own snapshot or from a cached conversation (its agent's earlier turn,
        another agent's system prompt); then the rest of the prompt is prefilled and the generated tokens decoded
        again one by one, as they were first decoded. The loaded cells are bit for bit those computed afresh
        (batch invariance), so the output does not change."""
        prompt, resume = s.req.prompt, s.req.resume
        full = prompt + resume
        snapshot = len(full) - 1 if s.req.state and resume and not s.snapshot_failed else 0
        entry, m = self.cached_prefix(full) if not s.cache_failed else (None, 0)
        s.source = entry if entry is not None and m > snapshot else None
        if snapshot and s.source is None:
            start, state = snapshot, s.req.state
        else:
            start, state = (m, s.source.data) if s.source is not None else (0, None)
        s.pos, s.feed, s.replay = start, prompt[start:], resume[max(0, start - len(prompt)):]
        return Admit(s.rid, s.slot, state, start, snapshot=bool(snapshot) and s.source is None)

    def _compact(self) -> tuple[Move, ...]:
        """Keep the running sequences' slots consecutive from 0: llama.cpp evaluates sequences with consecutive ids
        in one micro-batch, and ids with holes between them in several. The highest sequence moves into the lowest
        free slot; its KV stream is copied as it is, so what it generates next does not change."""
        moves: list[Move] = []
        while self._running and self.free_slots and self.free_slots[-1] < max(s.slot for s in self._running):
            s = max(self._running, key=lambda q: q.slot)
            dst = self.free_slots.pop()
            self._free_slot(s.slot)
            moves.append(Move(s.rid, s.slot, dst))
            s.slot = dst
        return tuple(moves)

    def _compose(self, plan: StepPlan) -> StepPlan:
        """Fill ``plan``'s batch: one token of every decoding sequence first, then prompt chunks in the room left
        (sequences join the batch without stalling the others' decoding), all in slot order."""
        decode = tuple(Chunk(s.rid, s.slot, s.pos, (s.replay[0],), len(s.replay) == 1, len(s.generated))
                       for s in self._running if not s.feed and s.replay)
        room = self.budget.n_batch - len(decode)
        prefill: list[Chunk] = []
        for s in self._running:
            take = min(len(s.feed), room, MAX_CHUNK)
            if take > 0:
                last = take == len(s.feed) and not s.replay
                prefill.append(Chunk(s.rid, s.slot, s.pos, tuple(s.feed[:take]), last, len(s.generated)))
                room -= take
        counts = sorted([1] * len(decode) + [len(c.tokens) for c in prefill], reverse=True)
        if len(counts) >= 2 and counts[0] == counts[1] + 1 >= 2:
            # llama.cpp cuts a batch into ubatches of as many tokens from every sequence, so the longest chunk's
            # last token would be evaluated alone; one token fewer, and it ends beside another (see LONE_ROW).
            i = next(i for i, c in enumerate(prefill) if len(c.tokens) == counts[0])
            prefill[i] = replace(prefill[i], tokens=prefill[i].tokens[:-1], logits=False)
        return replace(plan, decode=decode, prefill=tuple(prefill))

    def _free_slot(self, slot: int) -> None:
        self.free_slots.append(slot)
        self.free_slots.sort(reverse=True)

    def _finish(self, s: _Seq, status: Status) -> Finished:
        if s.status == Status.WAITING:
            self._waiting.remove(s)
        elif s.status == Status.RUNNING:
            self._running.remove(s)
            self._free_slot(s.slot)
        else:
            raise ValueError(f"request {s.rid} already finished ({s.status.name})")
        was_running, s.status = s.status == Status.RUNNING, status
        del self._by_rid[s.rid]
        # Prompt cells only: a generated token's cells were computed by a one-row decode, which llama.cpp's CPU
        # flash attention splits across threads past 512 cells; the next call prefills that reply as prompt
        # tokens, and those cells must be what prefilling computes.
        cells = tuple(s.req.prompt[:min(s.pos, len(s.req.prompt))]) if was_running else ()
        keep = self.prefix_cache and status != Status.FINISHED_ABORTED and len(cells) >= MIN_PREFIX
        return Finished(s.rid, s.slot, status, tuple(s.generated), len(s.req.prompt), cells, keep)
