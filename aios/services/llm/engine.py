"""Continuous batching on llama.cpp: one engine thread owns one llama context and decodes many sequences at once.

This module is the runner: it carries out, with llama.cpp, the steps that the pure
:class:`~aios.services.llm.batch_scheduler.BatchScheduler` plans (which request runs in which slot, which tokens
go in the batch, who is preempted), so that those rules are tested without the model and the llama.cpp calls
stay in one place. Worker threads call :meth:`BatchEngine.submit` and wait on the returned future. A request is
admitted into a free sequence slot (each has its own KV stream of ``n_ctx`` cells) as soon as one is free. On
every step the engine fills one ``llama_batch`` with one new token for each decoding sequence and, in the room
left, prompt chunks of newly admitted requests, calls ``llama_decode`` once, and samples each sequence from its
own logits with its own sampler chain (greedy, or temperature + seeded dist; behind a grammar for constrained
output). Requests join and leave between steps. Greedy output is the same, bit for bit, batched or alone (flash
attention and one KV stream per sequence; see ``__init__``).

When a request ends, the KV cells of its prompt are written out (``llama_state_seq_get_data``) into the
conversation cache (:mod:`aios.services.llm.kv_cache`); a later request whose tokens share a long enough prefix
with a cached entry (its agent's last call, a shared system prompt) starts from those cells
(``llama_state_seq_set_data``, then the cells past the shared prefix removed) and prefills only the rest.

A request may carry a quantum (tokens per time slice) and a ``should_yield`` callable: once it has generated a
quantum of tokens in this slice and ``should_yield()`` is true, it is suspended and its future resolves with
``finish_reason="preempted"`` and every token generated so far. Submitting the same prompt with those tokens as
``resume`` continues it where it stopped: the sequence's KV state is restored from ``state`` (or, without it,
the prompt is prefilled and the tokens decoded again one by one, exactly as first decoded), the tokens are
replayed into the grammar sampler, so greedy output is the same as an uninterrupted run. Sampled output too: each
token's draw is seeded by (seed, its index), not by an RNG state that the snapshot would have to carry.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from aios.services.llm.batch_scheduler import (
    MIN_PREFIX,
    Admit,
    BatchScheduler,
    Budget,
    Chunk,
    Finished,
    Request,
    Sampled,
    Status,
    StepPlan,
)
from aios.services.llm.kv_cache import RadixCache
from aios.wire.errors import BackendError

__all__ = ["MIN_PREFIX", "BatchEngine", "Generation", "Request", "token_seed"]

log = logging.getLogger(__name__)


@dataclass
class Generation:
    tokens: list[int]
    """Every generated token, those of earlier slices included (EOG excluded)."""
    finish_reason: str
    """``stop`` (end of generation), ``length`` (max_tokens or the context), ``preempted``."""
    prompt_tokens: int
    state: bytes | None = None
    """Preempted only: the sequence's llama.cpp state, for :attr:`Request.state`."""


def token_seed(seed: int, index: int) -> int:
    """The dist sampler's seed for generated token ``index`` (never 0xFFFFFFFF: llama.cpp reads it as random)."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=4).digest()
    return min(int.from_bytes(digest, "little"), 0xFFFFFFFE)


class _Live:
    """What only the runner holds of a request in the scheduler."""

    def __init__(self, req: Request, fut: Future[Generation], sampler: Any) -> None:
        self.req, self.fut, self.sampler = req, fut, sampler
        self.emitted = len(req.resume)  # the index of its next generated token, for on_token
        self.checkpointed = len(req.resume)  # tokens generated at its last checkpoint (or resume)


class BatchEngine:
    """Decodes with the weights of ``llama`` (a ``llama_cpp.Llama``) in a new context of ``n_seq`` sequences of
    ``n_ctx`` tokens each."""

    def __init__(self, llama: Any, *, n_ctx: int, n_seq: int, n_batch: int = 512, n_threads: int | None = None,
                 flash_attn: bool = True, cache_bytes: int = 0) -> None:
        import llama_cpp

        self._lc = llama_cpp
        self.llama = llama
        self.n_ctx, self.n_seq, self.n_batch = n_ctx, n_seq, n_batch
        self._sched = BatchScheduler(Budget(n_seq=n_seq, n_ctx=n_ctx, n_batch=n_batch), cache_bytes=cache_bytes)
        params = llama_cpp.llama_context_default_params()
        # One KV stream of n_ctx cells per sequence (kv_unified off): a sequence's attention never depends on where
        # other sequences' cells lie. llama.cpp puts the tokens of sequences with consecutive ids in one
        # micro-batch (so the weights are read once per step for all of them), which is why slots are handed out
        # lowest id first and the batch is built in id order. With flash attention on, each sequence's logits are
        # bit for bit those it gets alone (measured: 32 sequences x 96 tokens, Q4_1, Q8_0 and Q4_0 files, 1 and 2
        # threads); without it, batched greedy output drifts from the unbatched after a few tokens.
        # llama.cpp pads the context to 256 cells, then divides it evenly among the streams.
        params.n_ctx = -(-n_ctx // 256) * 256 * n_seq
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = n_seq
        params.kv_unified = False
        params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                  else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        params.no_perf = True
        if n_threads:
            params.n_threads = params.n_threads_batch = n_threads
        self._model = llama._model.model
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._ctx = llama_cpp.llama_init_from_model(self._model, params)
        if not self._ctx and flash_attn:  # a device without flash attention: run, but say what it costs
            log.warning("llama.cpp could not enable flash attention here; batched greedy output may differ from "
                        "unbatched output after a few tokens (set AIOS_LLM_BATCH_SIZE=1 where that matters)")
            params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
            self._ctx = llama_cpp.llama_init_from_model(self._model, params)
        if not self._ctx:
            raise BackendError(f"llama.cpp could not create a context of {n_ctx} tokens for {n_seq} sequences; "
                               "lower AIOS_LLM_N_CTX or AIOS_LLM_BATCH_SIZE")
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._pending: deque[tuple[Request, Future[Generation]]] = deque()  # submitted, not yet in _sched
        self._live: dict[int, _Live] = {}  # by request id: in _sched (waiting or running), or being released
        self._aborting: list[tuple[Future[Generation], Exception]] = []  # abort() asked, the engine thread ends them
        self._cond = threading.Condition()
        self._closed = False
        self.steps = 0
        self.restored = 0
        self.moved = 0
        self.prefix_hits = 0
        """Sequences started from a cached conversation."""
        self.prefix_misses = 0
        """Sequences started afresh (no cached conversation shared 16 tokens or more with their prompt)."""
        self.prefix_tokens_reused = 0
        """Prompt (and resumed) tokens those took from the cache instead of evaluating them."""
        self.prefilled = 0
        """Prompt tokens evaluated."""
        self.agents_held: frozenset[str] = frozenset()
        """The agents whose conversations the cache holds (read by other threads: replaced, never changed)."""
        self.keep_state = True
        self._pad: int | None = None  # the free slot padding the last step, emptied after it
        self.max_active = 0
        self._thread = threading.Thread(target=self._run, name="aios-llm-engine", daemon=True)
        self._thread.start()

    # -- the scheduler's state, as this class always showed it ----------------------------------------------

    @property
    def prefix_cache(self) -> bool:
        """Whether the conversation cache is used (sequences start from it and keep their cells in it)."""
        return self._sched.prefix_cache

    @prefix_cache.setter
    def prefix_cache(self, on: bool) -> None:
        self._sched.prefix_cache = on

    @property
    def cache(self) -> RadixCache:
        """The cached conversations (read it on the engine thread, or while the engine is idle)."""
        return self._sched.cache

    @property
    def _free(self) -> list[int]:
        """Free slot ids, highest first."""
        return self._sched.free_slots

    # -- the worker threads' side -------------------------------------------------------------------------

    def submit(self, req: Request) -> Future[Generation]:
        fut: Future[Generation] = Future()
        need = len(req.prompt) + len(req.resume)
        if need >= self.n_ctx:
            fut.set_exception(BackendError(
                f"the prompt is {need} tokens; the context holds {self.n_ctx}: shorten the messages or raise "
                f"AIOS_LLM_N_CTX"))
            return fut
        with self._cond:
            if self._closed:
                raise BackendError("the LLM engine is shut down")
            self._pending.append((req, fut))
            self._cond.notify()
        return fut

    def abort(self, fut: "Future[Generation]", exc: Exception) -> bool:
        """End the request of ``fut`` (submitted, waiting or generating) before the next step: its slot is freed and
        ``fut`` fails with ``exc``. ``False`` if it is done already."""
        with self._cond:
            if fut.done() or self._closed:
                return False
            self._aborting.append((fut, exc))
            self._cond.notify()
        return True

    def waiting(self) -> int:
        """Requests submitted but not yet admitted to a sequence slot."""
        return len(self._pending) + self._sched.num_waiting

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)
        self._lc.llama_batch_free(self._batch)
        self._lc.llama_free(self._ctx)

    # -- the engine thread --------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._pending and not self._aborting and not self._sched.has_work():
                    self._cond.wait()
                if self._closed:
                    self._fail_live(BackendError("the LLM engine shut down mid-generation"))
                    for rid in self._sched.waiting_ids():
                        self._sched.finish(rid)
                    self._fail_live(BackendError("the LLM engine shut down"))
                    while self._pending:
                        self._pending.popleft()[1].set_exception(BackendError("the LLM engine shut down"))
                    return
                while self._pending:
                    self._add(*self._pending.popleft())
                aborting, self._aborting = self._aborting, []
            for fut, exc in aborting:
                self._abort(fut, exc)
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 - fail the batch, keep the engine alive
                self._fail_live(BackendError(f"llama.cpp decoding failed: {exc}"))

    def _add(self, req: Request, fut: Future[Generation]) -> None:
        """Hand a submitted request to the scheduler (this thread alone drives it), with its sampler."""
        if not fut.set_running_or_notify_cancel():
            return
        try:
            sampler = self._sampler(req)
        except Exception as exc:  # noqa: BLE001 - a bad grammar fails this request only
            fut.set_exception(BackendError(f"llama.cpp could not build the sampler: {exc}"))
            return
        for tok in req.resume:  # the grammar must see what was generated before the suspension
            self._lc.llama_sampler_accept(sampler, tok)
        self._live[self._sched.add(req)] = _Live(req, fut, sampler)

    def _step(self) -> None:
        plan = self._sched.schedule()
        for done in plan.preempted:
            self._release(done)
        for adm in plan.admitted:
            plan = self._start(adm, plan)
        self.max_active = max(self.max_active, plan.n_running)
        for mv in plan.moves:
            self._lc.llama_memory_seq_cp(self._mem, mv.src, mv.dst, -1, -1)
            self._lc.llama_memory_seq_rm(self._mem, mv.src, -1, -1)
            self.moved += 1
        sample = self._fill(plan)
        if self._batch.n_tokens == 0:
            return
        rc = self._lc.llama_decode(self._ctx, self._batch)
        if self._pad is not None:
            self._lc.llama_memory_seq_rm(self._mem, self._pad, -1, -1)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} (no room in the KV cache?)")
        self.steps += 1
        outputs = [self._sample(chunk, index) for chunk, index in sorted(sample, key=lambda ci: ci[0].slot)]
        result = self._sched.update(outputs)
        for out in outputs:  # every token but an end-of-generation one is the sequence's next (see update)
            live = self._live[out.rid]
            if live.req.on_token is not None and not out.eog:
                try:
                    live.req.on_token(live.emitted, out.token)
                except Exception:  # noqa: BLE001 - a failing stream must not stop the batch
                    log.exception("the token callback failed; the generation goes on")
            live.emitted += not out.eog
        for done in result.finished:
            self._release(done)
        self._checkpoint()

    def _checkpoint(self) -> None:
        """Hand each running request that generated ``checkpoint`` more tokens since its last checkpoint what a
        suspension would return now (tokens, KV state), without stopping it."""
        for rid in self._sched.running_ids():
            live = self._live[rid]
            every, hand = live.req.checkpoint, live.req.on_checkpoint
            if not every or hand is None:
                continue
            tokens, whole = self._sched.progress(rid)
            if not whole or len(tokens) - live.checkpointed < every:
                continue
            live.checkpointed = len(tokens)
            try:
                hand(list(tokens), self._save(self._sched.slot(rid)) if self.keep_state else None)
            except Exception:  # noqa: BLE001 - a lost checkpoint costs a recomputation, never the batch
                log.exception("a checkpoint callback failed")

    def _fill(self, plan: StepPlan) -> list[tuple[Chunk, int]]:
        """Write the plan's chunks into the batch, decode tokens first; returns the chunks to sample from, each
        with the index of its logits."""
        b, n = self._batch, 0
        sample: list[tuple[Chunk, int]] = []
        for chunk in (*plan.decode, *plan.prefill):
            last = len(chunk.tokens) - 1
            for j, tok in enumerate(chunk.tokens):
                b.token[n], b.pos[n], b.n_seq_id[n] = tok, chunk.pos + j, 1
                b.seq_id[n][0] = chunk.slot
                b.logits[n] = chunk.logits and j == last
                n += 1
            if chunk.logits:
                sample.append((chunk, n - 1))
        self.prefilled += sum(len(c.tokens) for c in plan.prefill)
        self._pad = None
        if n == 1 and self._free:  # LONE_ROW: a token in the next free slot, so that this one is not alone
            self._pad = self._free[-1]
            b.token[1], b.pos[1], b.n_seq_id[1], b.logits[1] = b.token[0], 0, 1, False
            b.seq_id[1][0] = self._pad
            n = 2
        b.n_tokens = n
        return sample

    def _sample(self, chunk: Chunk, index: int) -> Sampled:
        live = self._live[chunk.rid]
        if live.req.temperature > 0 and chunk.sample_index:
            self._reseed(live, chunk.sample_index)
        tok = self._lc.llama_sampler_sample(live.sampler, self._ctx, index)
        return Sampled(chunk.rid, tok, bool(self._lc.llama_vocab_is_eog(self._vocab, tok)))

    def _start(self, adm: Admit, plan: StepPlan) -> StepPlan:
        """Start an admitted request in its slot, from the state its admission names (its snapshot or a cached
        conversation, trimmed to the cells it shares) or afresh. Returns the plan to carry out (revised when the
        state does not load)."""
        while adm.state is not None and not self._load(adm.slot, adm.state):
            # Another model or layout: start from the cache or afresh instead, in this very step.
            plan = self._sched.restore_failed(adm.rid)
            adm = next(a for a in plan.admitted if a.rid == adm.rid)
        if adm.state is not None:
            self._lc.llama_memory_seq_rm(self._mem, adm.slot, adm.cells, -1)
            if adm.snapshot:
                self.restored += 1
            else:
                self.prefix_hits += 1
                self.prefix_tokens_reused += adm.cells
        elif self.prefix_cache:
            self.prefix_misses += 1
        return plan

    def _load(self, slot: int, state: bytes) -> bool:
        """Write a sequence state (``llama_state_seq_get_data``'s) into ``slot``; False if it does not load."""
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if self._lc.llama_state_seq_set_data(self._ctx, buf, len(state), slot) == 0:
            self._lc.llama_memory_seq_rm(self._mem, slot, -1, -1)
            return False
        return True

    def _save(self, slot: int) -> bytes:
        """The sequence state of ``slot``: its used KV cells (about 23 KB a token for SmolLM2-135M)."""
        size = self._lc.llama_state_seq_get_size(self._ctx, slot)
        buf = (ctypes.c_uint8 * size)()
        n = self._lc.llama_state_seq_get_data(self._ctx, buf, size, slot)
        return ctypes.string_at(buf, n)

    def _sampler(self, req: Request) -> Any:
        lc = self._lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if req.grammar is not None:
            g = lc.llama_sampler_init_grammar(self._vocab, req.grammar._grammar.encode(), req.grammar._root.encode())
            if not g:
                lc.llama_sampler_free(chain)
                raise BackendError("llama.cpp refused the grammar compiled from the schema")
            lc.llama_sampler_chain_add(chain, g)
        if req.temperature <= 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
        else:
            if req.top_p < 1.0:
                lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(req.top_p, 1))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(req.temperature))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(token_seed(req.seed, 0)))
        return chain

    def _reseed(self, live: _Live, index: int) -> None:
        """Sampled generation: the draw of token ``i`` is seeded by ``(seed, i)`` alone, not by an RNG that has
        run through the tokens before it, so a generation suspended after ``i`` tokens resumes with exactly the
        draws it would have made (and its output does not depend on what else ran in the engine)."""
        lc = self._lc
        last = lc.llama_sampler_chain_n(live.sampler) - 1
        lc.llama_sampler_free(lc.llama_sampler_chain_remove(live.sampler, last))
        lc.llama_sampler_chain_add(live.sampler, lc.llama_sampler_init_dist(token_seed(live.req.seed, index)))

    def _release(self, done: Finished) -> None:
        """Free a sequence's slot: when it was suspended, its state goes to the snapshot (``keep_state``), and its
        prompt's cells to the cache (``keep``); one state, written out the same way for both."""
        live = self._live[done.rid]
        state = self._save(done.slot) if done.status == Status.FINISHED_PREEMPTED and self.keep_state else None
        if done.keep:
            self._lc.llama_memory_seq_rm(self._mem, done.slot, len(done.cells), -1)  # its prompt's cells only
            if self._sched.cache.insert(done.cells, live.req.agent, self._save(done.slot)):
                self.agents_held = frozenset(self._sched.cache.agents())
        self._lc.llama_memory_seq_rm(self._mem, done.slot, -1, -1)
        del self._live[done.rid]
        self._lc.llama_sampler_free(live.sampler)
        live.fut.set_result(Generation(list(done.tokens), done.status.finish_reason, done.prompt_tokens, state))

    def _abort(self, fut: "Future[Generation]", exc: Exception) -> None:
        """End the request of ``fut`` now (between steps): free its slot and its sampler, fail its future."""
        rid = next((r for r, live in self._live.items() if live.fut is fut), None)
        if rid is None or rid not in self._sched:  # finished meanwhile (or never admitted: a failed sampler)
            return
        done = self._sched.finish(rid)
        live = self._live.pop(rid)
        if done.slot is not None and done.slot >= 0:
            self._lc.llama_memory_seq_rm(self._mem, done.slot, -1, -1)
        self._lc.llama_sampler_free(live.sampler)
        fut.set_exception(exc)

    def _fail_live(self, exc: Exception) -> None:
        """Fail every request past admission whose future is unresolved (those of a plan half carried out
        included) and empty every sequence slot; requests waiting for a slot stay queued."""
        for rid in self._sched.running_ids():
            self._sched.finish(rid)
        for rid in [r for r in self._live if r not in self._sched]:
            live = self._live.pop(rid)
            self._lc.llama_sampler_free(live.sampler)
            if not live.fut.done():
                live.fut.set_exception(exc)
        for slot in range(self.n_seq):
            self._lc.llama_memory_seq_rm(self._mem, slot, -1, -1)
