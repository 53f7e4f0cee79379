"""A service time shaped like an 8B model on one GPU, for the provider emulator (``aios bench agents --emulated``).

A continuous-batching server (vLLM, TGI, llama-server) on one GPU runs in steps: each step decodes one token for
every running sequence and prefills the prompts of the sequences that join; a sequence leaves when it has its
``max_tokens``. At most ``max_batch`` run at once; the rest wait in order. One step costs::

    step_ms = step_base_ms + step_per_seq_ms * running + prefill_per_token_ms * prompt tokens joining

The defaults are Llama-3-8B in bf16 on one H100 (80 GB, 3.35 TB/s, ~990 dense bf16 TFLOP/s):

- ``step_base_ms`` 7: a decode step reads all 16 GB of weights once, about 5 ms at full bandwidth, plus kernel
  launches and sampling; single-stream decoding of 8B models on an H100 runs at 120-150 tokens/s.
- ``step_per_seq_ms`` 0.06: each running sequence adds its KV-cache reads and its share of the matmuls; at 256
  sequences a step takes 22 ms, about 11,600 tokens/s of output, the range reported for vLLM serving an 8B model
  on one H100 (not measured here: no GPU was lent to this work).
- ``prefill_per_token_ms`` 0.05: prefill is compute-bound, 2 x 8e9 FLOP per token at ~320 TFLOP/s effective.
- ``max_batch`` 256: vLLM's default ``max_num_seqs``; the KV cache of an 8B model with GQA (128 KiB per token)
  holds about 400k tokens in the memory left over, room for 256 sequences of 1,500 tokens.

Times are kept on a virtual clock that each step advances by its cost and the loop sleeps up to: when the event
loop is late (a loaded machine), the next steps start at once and catch up, so the emulated GPU's throughput does
not depend on the host's scheduling noise.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class GPUShape:
    max_batch: int = 256
    step_base_ms: float = 7.0
    step_per_seq_ms: float = 0.06
    prefill_per_token_ms: float = 0.05

    def __post_init__(self) -> None:
        if self.max_batch < 1 or min(self.step_base_ms, self.step_per_seq_ms, self.prefill_per_token_ms) < 0:
            raise ValueError(f"a GPU shape needs max_batch >= 1 and times >= 0 (got {self})")

    def step_ms(self, running: int, prompt_tokens: int) -> float:
        return self.step_base_ms + self.step_per_seq_ms * running + self.prefill_per_token_ms * prompt_tokens

    def alone_s(self, prompt_tokens: int, max_tokens: int) -> float:
        """Service time of one request alone on the GPU: its prefill step, then one step per further token."""
        return (self.step_ms(1, prompt_tokens) + (max_tokens - 1) * self.step_ms(1, 0)) / 1000


@dataclass
class _Seq:
    prompt_tokens: int
    max_tokens: int
    done: asyncio.Future[None]
    generated: int = 0


@dataclass
class BatchedGPU:
    """The stepping loop, on the emulator's event loop: :meth:`serve` returns when the request's tokens are out."""

    shape: GPUShape
    waiting: deque[_Seq] = field(default_factory=deque)
    running: list[_Seq] = field(default_factory=list)
    steps: int = 0
    max_running: int = 0
    _wake: asyncio.Event | None = None
    _task: asyncio.Task[None] | None = None

    async def serve(self, prompt_tokens: int, max_tokens: int) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._loop())
        seq = _Seq(prompt_tokens, max_tokens, asyncio.get_running_loop().create_future())
        self.waiting.append(seq)
        assert self._wake is not None
        self._wake.set()
        await seq.done

    async def _loop(self) -> None:
        assert self._wake is not None
        clock = 0.0
        while True:
            if not self.running and not self.waiting:
                self._wake.clear()
                await self._wake.wait()
                clock = time.monotonic()  # idle time is not caught up; a late step is
            now = time.monotonic()
            joining = 0
            while self.waiting and len(self.running) < self.shape.max_batch:
                seq = self.waiting.popleft()
                self.running.append(seq)
                joining += seq.prompt_tokens
            self.max_running = max(self.max_running, len(self.running))
            clock += self.shape.step_ms(len(self.running), joining) / 1000
            if clock > now:
                await asyncio.sleep(clock - now)
            else:
                await asyncio.sleep(0)  # behind: catch up, but let the requests' handlers run
            self.steps += 1
            still = []
            for seq in self.running:
                seq.generated += 1  # a prefill step yields the sequence's first token too
                if seq.generated >= seq.max_tokens:
                    if not seq.done.done():
                        seq.done.set_result(None)
                else:
                    still.append(seq)
            self.running = still
