"""Unit tests of the memory manager: the LRU-K policy alone, then the two tiers with an in-process fast tier."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from aios.services.storage.memory import LRUK, LocalFastTier
from aios.services.storage.service import StorageService
from aios.settings import Settings
from aios.wire.errors import ConfigError, Conflict, InvalidSyscall, NotFound
from aios.wire.syscalls import MemorySyscall
from tests.conftest import storage_service

# -- the policy alone --------------------------------------------------------------------------------------


def test_k1_is_lru() -> None:
    p = LRUK(budget_bytes=20, k=1)
    assert p.access("a", 10) == (True, [])
    assert p.access("b", 10) == (True, [])
    p.access("a", 10)  # a is now the most recent
    assert p.access("c", 10) == (True, ["b"])
    assert "a" in p and "c" in p and "b" not in p


def test_lru2_resists_a_scan_that_flushes_lru() -> None:
    def run(k: int) -> set[str]:
        p = LRUK(budget_bytes=30, k=k)
        for _ in range(2):
            p.access("hot1", 10)
            p.access("hot2", 10)
        for i in range(10):  # one pass over cold items
            p.access(f"cold{i}", 10)
        return set(p.resident)

    assert {"hot1", "hot2"} <= run(2)
    assert not {"hot1", "hot2"} & run(1)


def test_victim_is_the_oldest_kth_reference() -> None:
    p = LRUK(budget_bytes=20, k=2)
    for key in ("a", "b", "a", "b"):  # a's 2nd most recent ref is t1, b's is t2
        p.access(key, 10)
    p.access("a", 10)  # now a: (t3, t5), b: (t2, t4) -> b is older at K=2
    _, evicted = p.access("c", 10)  # c has one reference (infinite distance) but is the one being admitted
    assert evicted == ["b"]
    _, evicted = p.access("d", 10)  # c (one reference) goes before a (two)
    assert evicted == ["c"]


def test_oversized_item_is_not_admitted_and_budget_holds_on_random_traces() -> None:
    p = LRUK(budget_bytes=100, k=2)
    assert p.access("huge", 101) == (False, [])
    assert p.used == 0 and "huge" not in p
    rng = random.Random(7)
    for _ in range(5000):
        key = f"k{int(rng.paretovariate(1.2)) % 300}"
        resident, evicted = p.access(key, rng.randint(1, 60))
        assert resident and key not in evicted
        assert p.used == sum(p.resident.values()) <= 100
    p.remove(next(iter(p.resident)))
    assert p.used == sum(p.resident.values())


def test_bad_parameters_refused() -> None:
    with pytest.raises(ValueError):
        LRUK(budget_bytes=10, k=0)


# -- the tiers (in-process fast tier, FAKE embedder, real Milvus Lite) -------------------------------------------


@pytest.fixture
def svc(tmp_path: Path, vectors: Any) -> StorageService:
    return storage_service(Settings(data_dir=tmp_path, memory_budget_bytes=64), vectors)


def mem(svc: StorageService, op: str, key: str | None = None, value: object = None, **kw: object) -> dict:
    return svc.handle(MemorySyscall(agent_id="a1", op=op, key=key, value=value, **kw))  # type: ignore[return-value]


def test_eviction_keeps_the_fast_tier_within_budget_and_reloads_transparently(svc: StorageService) -> None:
    assert isinstance(svc.memory.fast, LocalFastTier)
    for i in range(10):
        mem(svc, "put", f"k{i}", "x" * 20)  # 22 bytes of JSON each: at most 2 fit in 64
        stats = mem(svc, "stats")
        assert stats["fast_bytes"] <= 64 and stats["fast_items"] <= 2
    assert mem(svc, "stats")["items"] == 10
    assert "k0" not in svc.memory.fast.data["a1"]  # evicted to the durable tier
    assert mem(svc, "get", "k0") == {"key": "k0", "value": "x" * 20}  # and back
    assert "k0" in svc.memory.fast.data["a1"]
    stats = mem(svc, "stats")
    assert stats["misses"] == 1 and stats["fast_bytes"] <= 64
    mem(svc, "get", "k0")
    assert mem(svc, "stats")["hits"] == 1


def test_create_update_semantics(svc: StorageService) -> None:
    key = mem(svc, "create", value={"note": 1})["key"]
    assert len(key) == 32
    with pytest.raises(Conflict, match=f"memory key '{key}' already exists"):
        mem(svc, "create", key, 2)
    with pytest.raises(NotFound, match="memory key 'nope' not found"):
        mem(svc, "update", "nope", 3)
    assert mem(svc, "update", key, {"note": 2}) == {"key": key, "created": False}
    assert mem(svc, "get", key)["value"] == {"note": 2}
    with pytest.raises(InvalidSyscall, match="plain JSON"):
        mem(svc, "update", key, float("nan"))
    assert mem(svc, "get", key)["value"] == {"note": 2}  # a refused update changed nothing


def test_search_spans_both_tiers_and_skips_deleted(svc: StorageService) -> None:
    mem(svc, "put", "old", "alpha beta gamma")
    for i in range(6):
        mem(svc, "put", f"filler{i}", f"delta {i}")
    assert "old" not in svc.memory.fast.data["a1"]
    hits = mem(svc, "search", query="alpha beta", k=2)["results"]
    assert hits[0]["key"] == "old" and hits[0]["value"] == "alpha beta gamma"
    mem(svc, "delete", "old")
    assert all(h["key"] != "old" for h in mem(svc, "search", query="alpha beta", k=10)["results"])


def test_search_is_per_agent(svc: StorageService) -> None:
    mem(svc, "put", "mine", "secret plans")
    other = svc.handle(MemorySyscall(agent_id="a2", op="search", query="secret plans"))
    assert other == {"query": "secret plans", "results": []}


def test_memory_goes_on_from_disk_when_the_fast_tier_redis_is_down(tmp_path: Path, vectors: Any) -> None:
    svc = storage_service(Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:1/0", reconnect_s=0), vectors)
    assert mem(svc, "put", "k", {"v": 1})["created"] is True
    assert mem(svc, "get", "k") == {"key": "k", "value": {"v": 1}}
    assert mem(svc, "update", "k", {"v": 2})["created"] is False
    assert mem(svc, "get", "k")["value"] == {"v": 2}
    assert mem(svc, "search", query="v", k=1)["results"][0]["key"] == "k"
    assert mem(svc, "delete", "k") == {"key": "k", "deleted": True}


@pytest.mark.integration  # a second Python process on a Milvus Lite server of its own
def test_a_second_process_on_the_same_milvus_lite_gets_a_clear_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    from aios.services.storage.vectors import VectorStore

    uri = str(tmp_path / "vectors" / "milvus.db")
    store = VectorStore(uri, dim=8)
    try:
        code = ("from aios.services.storage.vectors import VectorStore\n"
                f"try:\n    VectorStore({uri!r}, dim=8)\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    finally:
        store.close()
    assert out.startswith("ConfigError cannot open the vector store")
    assert "only one process may open a data file" in out and "AIOS_MILVUS_URI" in out


class EmbeddingServer:
    """A real HTTP server speaking the OpenAI ``/v1/embeddings`` API, computing with the real local model: the
    ``openai`` embedding backend is tested end to end without a network."""

    def __init__(self) -> None:
        import base64
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from aios.services.storage.embeddings import MiniLM

        model, self.requests = MiniLM(), []  # type: ignore[var-annotated]
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's spelling
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(req)
                texts = req["input"] if isinstance(req["input"], list) else [req["input"]]
                vecs = model.embed(texts)
                enc = (lambda v: base64.b64encode(v.astype("<f4").tobytes()).decode()) \
                    if req.get("encoding_format") == "base64" else (lambda v: v.tolist())
                body = json.dumps({"object": "list", "model": req["model"], "usage": {"prompt_tokens": 1,
                                   "total_tokens": 1}, "data": [{"object": "embedding", "index": i,
                                                                 "embedding": enc(v)} for i, v in enumerate(vecs)]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


@pytest.mark.integration  # the real local embedding model, behind a real HTTP server
def test_openai_compatible_embedding_endpoint(tmp_path: Path) -> None:
    from aios.services.storage.embeddings import OpenAIEmbedder, get_embedder

    server = EmbeddingServer()
    try:
        settings = Settings(data_dir=tmp_path, embedding_backend="openai", embedding_base_url=server.url,
                            embedding_model="minilm-served", embedding_dim=384)
        assert isinstance(get_embedder(settings), OpenAIEmbedder)
        svc = StorageService(settings)
        for key, text in (("cat", "The cat sleeps on the sofa."), ("tax", "Taxes are due in April.")):
            svc.handle(MemorySyscall(agent_id="a1", op="put", key=key, value=text))
        hits = svc.handle(MemorySyscall(agent_id="a1", op="search", query="a kitten napping", k=1))["results"]
        assert hits[0]["key"] == "cat"
        assert server.requests[0]["model"] == "minilm-served"
        wrong = OpenAIEmbedder(server.url, "minilm-served", dim=10, api_key=None)
        with pytest.raises(ConfigError, match="returned 384 dimensions; AIOS_EMBEDDING_DIM is 10"):
            wrong.embed(["x"])
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
