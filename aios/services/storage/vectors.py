"""The vector store: Milvus, embedded (Milvus Lite, a file under the data dir) or a server by URI.

The same :class:`pymilvus.MilvusClient` code serves both. **Only one process may open a Milvus Lite data
file** (it takes a file lock): with the default ``AIOS_MILVUS_URI`` unset, that process is the storage worker
(one worker process, any number of threads). With several storage worker processes, run a Milvus server (the
``milvus`` service of ``compose.yaml``) or ``milvus-lite server --host 127.0.0.1 --port 19530`` and set
``AIOS_MILVUS_URI=http://127.0.0.1:19530`` for every one of them.

Two collections, named after the embedding dimension so that switching models never mixes vector spaces:

* ``aios_memory_d<dim>``: one row per memory item (``agent``, ``key``); id = sha1(agent, key).
* ``aios_files_d<dim>``: one row per chunk of a file (``agent``, ``path``, ``chunk``); ``pid`` =
  sha1(agent, path) selects all chunks of one file.

No text is kept here: Milvus Lite serves its data over gRPC on a loopback port without authentication, so what
it holds is readable by local processes. Snippets are read from the agent's files when a search returns.

Every query is filtered on ``agent`` (an agent id matches ``AGENT_ID_RE``, so it needs no escaping), so one
agent's search never returns another agent's items.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Before grpc is first imported (pymilvus imports it): gRPC's fork handlers, on by default, restart its poller
# threads in a forked child, which then aborts (SIGABRT) when the parent has gRPC threads running -- and Milvus
# Lite runs a gRPC server in this process. Measured: 6 of 150 subprocess launches aborted with the handlers, 0
# of 150 without. Children of this process exec at once and never use gRPC, so they need no handlers.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import numpy as np  # noqa: E402
from pymilvus.exceptions import MilvusException as MilvusException  # noqa: E402  (re-exported for aios.storage)

from aios.state.private_files import private_dir, private_tree  # noqa: E402
from aios.wire.errors import AIOSError, ConfigError  # noqa: E402
from aios.wire.syscalls import AGENT_ID_RE

# Milvus Lite's in-process gRPC server logs a traceback for every call pymilvus makes that it does not implement
# (AllocTimestamp, asked on each write); pymilvus carries on without it.
logging.getLogger("grpc._server").setLevel(logging.CRITICAL)

FLUSH_ROWS = 1024
"""Rows written to a collection after which it is flushed. Milvus Lite searches rows not yet flushed by brute
force in Python (about 50 us a row, measured: 10,000 unflushed rows made a search take 400 ms instead of 20 ms);
flushed segments are searched by faiss."""
FLUSH_BEFORE_SEARCH = 128
"""A search first flushes its collection if at least this many rows wait (a flush of a few hundred rows takes
tens of ms)."""


def row_id(agent: str, name: str) -> str:
    return hashlib.sha1(f"{agent}\x00{name}".encode("utf-8", "surrogatepass")).hexdigest()


class VectorStore:
    """Thread-safe wrapper over one ``MilvusClient``; collections are created once, at open."""

    def __init__(self, uri: str, dim: int, token: str | None = None) -> None:
        from pymilvus import MilvusClient

        self.uri, self.dim = uri, dim
        if "://" not in uri:  # Milvus Lite: its folder 0700 (what it writes there has the process umask)
            private_dir(Path(uri).parent)
        try:
            self.client = MilvusClient(uri=uri, token=token or "")
        except Exception as exc:  # pymilvus raises several types; all mean the store cannot be opened
            hint = (" (Milvus Lite: only one process may open a data file; with several storage workers set "
                    "AIOS_MILVUS_URI to a Milvus server)") if "://" not in uri else ""
            raise ConfigError(f"cannot open the vector store at {uri}: {exc}{hint}") from None
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}
        self.memory = f"aios_memory_d{dim}"
        self.files = f"aios_files_d{dim}"
        self._create()
        if "://" not in uri:
            private_tree(Path(uri).parent)  # what it made, now and before, under the process umask: 0700 / 0600

    def _create(self) -> None:
        from pymilvus import DataType

        for name, fields in ((self.memory, [("key", 1100)]), (self.files, [("pid", 40), ("path", 4200)])):
            if self.client.has_collection(name):
                self.client.load_collection(name)  # reopened after a restart: released until loaded
                continue
            schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
            schema.add_field("agent", DataType.VARCHAR, max_length=64)
            for field, length in fields:
                schema.add_field(field, DataType.VARCHAR, max_length=length)
            if name == self.files:
                schema.add_field("chunk", DataType.INT64)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
            index = self.client.prepare_index_params()
            index.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
            self.client.create_collection(name, schema=schema, index_params=index)

    @staticmethod
    def _agent(agent: str) -> str:
        if not AGENT_ID_RE.fullmatch(agent):  # never build a filter from anything else
            raise AIOSError(f"agent id {agent!r} cannot be used in a vector filter")
        return agent

    # -- memory ----------------------------------------------------------------------------------------

    def put_memory(self, agent: str, items: Sequence[tuple[str, np.ndarray]]) -> None:
        rows = [{"id": row_id(agent, key), "agent": self._agent(agent), "key": key, "vector": _vec(v)}
                for key, v in items]
        if rows:
            with self._lock:
                self.client.upsert(self.memory, rows)
                self._wrote(self.memory, len(rows))

    def delete_memory(self, agent: str, key: str) -> None:
        with self._lock:
            self.client.delete(self.memory, ids=[row_id(agent, key)])

    def search_memory(self, agent: str, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        with self._lock:
            self._fresh(self.memory)
            hits = self.client.search(self.memory, data=[_vec(vector)], limit=k,
                                      filter=f'agent == "{self._agent(agent)}"', output_fields=["key"])
        return [(h["entity"]["key"], float(h["distance"])) for h in hits[0]]

    # -- files -----------------------------------------------------------------------------------------

    def put_file(self, agent: str, path: str, chunks: Sequence[np.ndarray]) -> None:
        """Replace the vectors of every chunk of ``path`` (no text is stored here: see the module doc)."""
        pid = row_id(agent, path)
        rows = [{"id": row_id(agent, f"{path}\x00{i}"), "agent": self._agent(agent), "pid": pid, "path": path,
                 "chunk": i, "vector": _vec(v)} for i, v in enumerate(chunks)]
        with self._lock:
            self.client.delete(self.files, filter=f'pid == "{pid}"')
            if rows:
                self.client.insert(self.files, rows)
            self._wrote(self.files, len(rows) + 1)

    def delete_file(self, agent: str, path: str) -> None:
        with self._lock:
            self.client.delete(self.files, filter=f'pid == "{row_id(agent, path)}"')

    def search_files(self, agent: str, vector: np.ndarray, k: int) -> list[dict[str, Any]]:
        """Best chunk per file, best files first: ``{"path", "chunk", "score"}``."""
        with self._lock:
            self._fresh(self.files)
            hits = self.client.search(self.files, data=[_vec(vector)], limit=min(16_384, k * 8),
                                      filter=f'agent == "{self._agent(agent)}"', output_fields=["path", "chunk"])
        best: dict[str, dict[str, Any]] = {}
        for h in hits[0]:
            path = h["entity"]["path"]
            if path not in best:
                best[path] = {"path": path, "chunk": int(h["entity"]["chunk"]), "score": float(h["distance"])}
        return list(best.values())[:k]

    def _wrote(self, collection: str, rows: int) -> None:  # with the lock held
        self._pending[collection] = self._pending.get(collection, 0) + rows
        if self._pending[collection] >= FLUSH_ROWS:
            self._flush(collection)

    def _fresh(self, collection: str) -> None:  # with the lock held
        if self._pending.get(collection, 0) >= FLUSH_BEFORE_SEARCH:
            self._flush(collection)

    def _flush(self, collection: str) -> None:
        self.client.flush(collection)
        self._pending[collection] = 0

    def flush(self) -> None:
        with self._lock:
            for collection in (self.memory, self.files):
                self._flush(collection)

    def close(self) -> None:
        with self._lock:
            self.client.close()
            if "://" not in self.uri:  # stop Milvus Lite's in-process server too, or it outlives the client
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(self.uri)


def _vec(v: np.ndarray) -> list[float]:
    out: list[float] = np.asarray(v, np.float32).tolist()
    return out
