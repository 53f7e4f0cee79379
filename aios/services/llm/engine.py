"""Continuous batching on llama.cpp: one engine thread owns one llama context and decodes many sequences at once.

Worker threads call :meth:`BatchEngine.submit` and wait on the returned future. The engine thread admits a request
into a free sequence slot (each has its own KV stream of ``n_ctx`` cells) as soon as one is free. On every step
it builds one ``llama_batch`` holding one new token for each decoding sequence and, in the room left, prompt
chunks of newly admitted requests, calls ``llama_decode`` once, and samples each sequence from its own logits
with its own sampler chain (greedy, or temperature + seeded dist; behind a grammar for constrained output).
Requests join and leave between steps. Greedy output is the same, bit for bit, batched or alone (flash attention
and one KV stream per sequence; see ``__init__``).

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
from dataclasses import dataclass, field
from typing import Any, Callable

from aios.wire.errors import BackendError

log = logging.getLogger(__name__)


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


MIN_PREFIX = 16
"""Shortest shared prompt prefix worth copying from the prefix cache: a copy moves a whole KV stream
(``n_ctx`` cells), which costs about what prefilling a few tokens costs on a CPU."""


class _Seq:
    def __init__(self, req: Request, fut: "Future[Generation]", seq_id: int, sampler: Any) -> None:
        self.req, self.fut, self.seq_id, self.sampler = req, fut, seq_id, sampler
        self.feed = list(req.prompt)  # prompt tokens still to prefill, in chunks
        self.replay = list(req.resume)  # generated tokens to decode again, one per step as they were first decoded
        self.pos = 0
        self.generated = list(req.resume)
        self.slice_count = 0
        self.logit_index = -1  # index of this sequence's logits in the last batch, -1 when it has none
        self.reused = 0  # prompt tokens taken from the prefix cache
        self.prefilling = bool(self.feed)


class BatchEngine:
    """Decodes with the weights of ``llama`` (a ``llama_cpp.Llama``) in a new context of ``n_seq`` sequences of
    ``n_ctx`` tokens each."""

    def __init__(self, llama: Any, *, n_ctx: int, n_seq: int, n_batch: int = 512, n_threads: int | None = None,
                 flash_attn: bool = True, prefix_cache: bool = True) -> None:
        import llama_cpp

        self._lc = llama_cpp
        self.llama = llama
        self.n_ctx, self.n_seq, self.n_batch = n_ctx, n_seq, n_batch
        params = llama_cpp.llama_context_default_params()
        # One KV stream of n_ctx cells per sequence (kv_unified off): a sequence's attention never depends on where
        # other sequences' cells lie. llama.cpp puts the tokens of sequences with consecutive ids in one
        # micro-batch (so the weights are read once per step for all of them), which is why slots are handed out
        # lowest id first and the batch is built in id order. With flash attention on, each sequence's logits are
        # bit for bit those it gets alone (measured: 32 sequences x 96 tokens, Q4_1, Q8_0 and Q4_0 files, 1 and 2
        # threads); without it, batched greedy output drifts from the unbatched after a few tokens.
        # llama.cpp pads the context to 256 cells, then divides it evenly among the streams.
        n_streams = n_seq + 1 if prefix_cache else n_seq
        params.n_ctx = -(-n_ctx // 256) * 256 * n_streams
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = n_streams  # with the prefix cache, its stream is the last one
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
        self._pending: deque[tuple[Request, Future[Generation]]] = deque()
        self._active: list[_Seq] = []
        self._free = list(range(n_seq - 1, -1, -1))  # pop() takes the lowest free id
        self._cond = threading.Condition()
        self._closed = False
        self.steps = 0
        self.restored = 0
        self.moved = 0
        self.prefix_cache = prefix_cache
        """Whether the prefix cache is used (it can be switched off, not on, after construction)."""
        self._cache_seq = n_seq if prefix_cache else -1
        self._cache_tokens: list[int] = []
        self.prefix_hits = 0
        self.prefix_tokens_reused = 0
        self.keep_state = True
        self.max_active = 0
        self._thread = threading.Thread(target=self._run, name="aios-llm-engine", daemon=True)
        self._thread.start()

    # -- the worker threads' side -------------------------------------------------------------------------

    def submit(self, req: Request) -> "Future[Generation]":
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

    def waiting(self) -> int:
        """Requests submitted but not yet admitted to a sequence slot."""
        return len(self._pending)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)
        self._lc.llama_batch_free(self._batch)
        self._lc.llama_free(self._ctx)

    # -- the engine thread --------------------------------------------------------------------------------

    def _admit(self) -> None:
        while self._pending and self._free:
            req, fut = self._pending.popleft()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                sampler = self._sampler(req)
            except Exception as exc:  # noqa: BLE001 - a bad grammar fails this request only
                fut.set_exception(BackendError(f"llama.cpp could not build the sampler: {exc}"))
                continue
            seq = _Seq(req, fut, self._free.pop(), sampler)
            if req.state and req.resume and self._restore(seq, req.state):
                seq.feed, seq.replay, seq.prefilling = [], [req.resume[-1]], False
                seq.pos = len(req.prompt) + len(req.resume) - 1
            else:
                self._reuse_prefix(seq)
            for tok in req.resume:  # the grammar must see what was generated before the suspension
                self._lc.llama_sampler_accept(sampler, tok)
            self._active.append(seq)
        self.max_active = max(self.max_active, len(self._active))

    def _reuse_prefix(self, seq: _Seq) -> None:
        """Start ``seq`` from the cached KV cells of the prompt prefix it shares with an earlier request (agents
        share system prompts), so that only the rest of its prompt is prefilled. The copied cells are bit for bit those
        the prefix would get if computed afresh (batch invariance), so the output does not change."""
        if not self.prefix_cache or self._cache_seq < 0 or not self._cache_tokens:
            return
        prompt, cached = seq.req.prompt, self._cache_tokens
        m = 0
        limit = min(len(cached), len(prompt) - 1)  # at least one prompt token is evaluated, for the logits
        while m < limit and prompt[m] == cached[m]:
            m += 1
        if m < MIN_PREFIX:
            return
        self._lc.llama_memory_seq_cp(self._mem, self._cache_seq, seq.seq_id, -1, -1)
        self._lc.llama_memory_seq_rm(self._mem, seq.seq_id, m, -1)
        seq.feed, seq.pos, seq.reused = prompt[m:], m, m
        self.prefix_hits += 1
        self.prefix_tokens_reused += m

    def _cache_prompt(self, seq: _Seq) -> None:
        """After ``seq``'s prompt is prefilled: keep its cells as the prefix cache, unless it came from the cache
        (the cache then already holds what it shares with the others)."""
        if not self.prefix_cache or self._cache_seq < 0 or seq.reused or len(seq.req.prompt) < MIN_PREFIX:
            return
        self._lc.llama_memory_seq_rm(self._mem, self._cache_seq, -1, -1)
        self._lc.llama_memory_seq_cp(self._mem, seq.seq_id, self._cache_seq, -1, -1)
        self._lc.llama_memory_seq_rm(self._mem, self._cache_seq, len(seq.req.prompt), -1)
        self._cache_tokens = list(seq.req.prompt)

    def _restore(self, seq: _Seq, state: bytes) -> bool:
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if self._lc.llama_state_seq_set_data(self._ctx, buf, len(state), seq.seq_id) == 0:
            self._lc.llama_memory_seq_rm(self._mem, seq.seq_id, -1, -1)
            return False  # another model or layout: recompute from the tokens instead
        self.restored += 1
        return True

    def _snapshot(self, seq: _Seq) -> bytes:
        size = self._lc.llama_state_seq_get_size(self._ctx, seq.seq_id)
        buf = (ctypes.c_uint8 * size)()
        n = self._lc.llama_state_seq_get_data(self._ctx, buf, size, seq.seq_id)
        return bytes(buf[:n])

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
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(req.temperature))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(token_seed(req.seed, 0)))
        return chain

    def _reseed(self, seq: _Seq) -> None:
        """Sampled generation: the draw of token ``i`` is seeded by ``(seed, i)`` alone, not by an RNG that has
        run through the tokens before it, so a generation suspended after ``i`` tokens resumes with exactly the
        draws it would have made (and its output does not depend on what else ran in the engine)."""
        lc = self._lc
        last = lc.llama_sampler_chain_n(seq.sampler) - 1
        lc.llama_sampler_free(lc.llama_sampler_chain_remove(seq.sampler, last))
        lc.llama_sampler_chain_add(seq.sampler, lc.llama_sampler_init_dist(token_seed(seq.req.seed,
                                                                                      len(seq.generated))))

    def _release(self, seq: _Seq, reason: str, exc: Exception | None = None) -> None:
        state = self._snapshot(seq) if reason == "preempted" and self.keep_state else None
        self._active.remove(seq)
        self._lc.llama_memory_seq_rm(self._mem, seq.seq_id, -1, -1)
        self._lc.llama_sampler_free(seq.sampler)
        self._free.append(seq.seq_id)
        self._free.sort(reverse=True)  # pop() hands out the lowest id
        if exc is not None:
            seq.fut.set_exception(exc)
        else:
            seq.fut.set_result(Generation(seq.generated, reason, len(seq.req.prompt), state))

    def _compact(self) -> None:
        """Keep the active sequences' ids consecutive from 0: llama.cpp evaluates sequences with consecutive ids in
        one micro-batch, and ids with holes between them in several. The highest-id sequence moves into the
        lowest free slot; its KV stream is copied as it is, so what it generates next does not change."""
        while self._active and self._free and self._free[-1] < max(seq.seq_id for seq in self._active):
            seq = max(self._active, key=lambda q: q.seq_id)
            dst = self._free.pop()
            self._lc.llama_memory_seq_cp(self._mem, seq.seq_id, dst, -1, -1)
            self._lc.llama_memory_seq_rm(self._mem, seq.seq_id, -1, -1)
            self._free.append(seq.seq_id)
            self._free.sort(reverse=True)
            seq.seq_id = dst
            self.moved += 1

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._pending and not self._active:
                    self._cond.wait()
                if self._closed:
                    for seq in list(self._active):
                        self._release(seq, "", BackendError("the LLM engine shut down mid-generation"))
                    while self._pending:
                        self._pending.popleft()[1].set_exception(BackendError("the LLM engine shut down"))
                    return
                self._admit()
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 - fail the batch, keep the engine alive
                for seq in list(self._active):
                    self._release(seq, "", BackendError(f"llama.cpp decoding failed: {exc}"))

    def _step(self) -> None:
        b, n = self._batch, 0

        def put(seq: _Seq, tokens: list[int], last: bool) -> None:
            nonlocal n
            for j, tok in enumerate(tokens):
                b.token[n], b.pos[n], b.n_seq_id[n] = tok, seq.pos + j, 1
                b.seq_id[n][0] = seq.seq_id
                b.logits[n] = last and j == len(tokens) - 1
                n += 1
            seq.pos += len(tokens)
            if last:
                seq.logit_index = n - 1

        for seq in self._active:
            seq.logit_index = -1
        # One token for every decoding sequence first, then prompt chunks in the room left: sequences join the
        # batch without stalling the others' decoding.
        self._compact()
        self._active.sort(key=lambda q: q.seq_id)  # id order: llama.cpp batches consecutive sequences together
        for seq in self._active:
            if not seq.feed and seq.replay:
                put(seq, [seq.replay.pop(0)], not seq.replay)
        for seq in self._active:
            take = min(len(seq.feed), self.n_batch - n)
            if take > 0:
                chunk, seq.feed = seq.feed[:take], seq.feed[take:]
                put(seq, chunk, not seq.feed and not seq.replay)
        b.n_tokens = n
        if n == 0:
            return
        rc = self._lc.llama_decode(self._ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} (no room in the KV cache?)")
        self.steps += 1
        for seq in self._active:
            if seq.prefilling and not seq.feed:
                seq.prefilling = False
                self._cache_prompt(seq)
        for seq in list(self._active):
            if seq.logit_index < 0:
                continue
            if seq.req.temperature > 0 and seq.generated:
                self._reseed(seq)
            tok = self._lc.llama_sampler_sample(seq.sampler, self._ctx, seq.logit_index)
            if self._lc.llama_vocab_is_eog(self._vocab, tok):
                self._release(seq, "stop")
                continue
            seq.generated.append(tok)
            seq.slice_count += 1
            if len(seq.generated) >= seq.req.max_tokens or seq.pos + 1 >= self.n_ctx:
                self._release(seq, "length")
                continue
            req = seq.req
            if req.quantum and seq.slice_count >= req.quantum and (req.should_yield is None or req.should_yield()):
                self._release(seq, "preempted")
                continue
            seq.replay.append(tok)
