"""The storage worker's service: per-agent key-value memory (SQLite) and per-agent files.

An agent's data lives under ``data_dir/agents/<agent_id>/`` (``memory.sqlite3`` and ``files/``), located from
``syscall.agent_id``, or from ``syscall.owner`` once :mod:`aios.policy.access` allowed it. File paths are walked one
folder at a time through directory fds opened with ``O_NOFOLLOW``: a symlink anywhere on the way is refused, not
followed, and since no path string is checked and then reused, a symlink swapped in after a check cannot
redirect the operation.

A syscall whose ``owner`` is another agent needs that agent's grant, a shared group or a share of that one file,
and the decision is audited. Memory items also use the memory fast tier in the kernel's Redis
(:mod:`aios.services.storage.memory`); when Redis cannot be reached, memory goes on from the durable tier alone. Files never
touch Redis unless another agent's are reached.

Why this module is long: every file op and the fd-walking helpers it stands on live together, so that the one
safety argument (no path string is checked and then reused; every step is relative to a directory fd) can be
read, and reviewed, in one file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import stat
import threading
import time
import unicodedata
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal, overload

import redis

from aios.policy.access import KIND_RESOURCE, OP_NEED, AccessManager
from aios.services.base import BaseService
from aios.services.storage import quota
from aios.services.storage.memory import LocalFastTier, MemoryManager, RedisFastTier
from aios.services.storage.vectors import MilvusException
from aios.settings import Settings
from aios.state.connections import state_client
from aios.state.context import Snapshot
from aios.state.private_files import DIR_MODE, FILE_MODE, open_private, private_dir
from aios.wire.errors import AccessDenied, AIOSError, ConfigError, Conflict, InvalidSyscall, KernelUnavailable, NotFound
from aios.wire.syscalls import AGENT_ID_RE, MemorySyscall, StorageSyscall, Syscall

TMP_PREFIX = ".aios-tmp-"  # in-flight writes: hidden from list and reserved, so no agent sees or names one
CONNECTIONS_PER_THREAD = 8  # least recently used closed beyond this, so file handles stay bounded
BUSY_TIMEOUT_MS = 30_000  # how long a write waits on another thread or worker process holding the lock

_SHARE_OPS = ("read", "versions", "write", "rollback")  # what a per-file share can allow (read: the first two)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS memory (key TEXT PRIMARY KEY, value TEXT NOT NULL, created_at REAL NOT NULL, "
    "updated_at REAL NOT NULL)",
    # Every write of a file keeps a version: version 1, 2, ... per path, never reused while the file lives.
    "CREATE TABLE IF NOT EXISTS file_versions (path TEXT NOT NULL, version INTEGER NOT NULL, content TEXT NOT NULL, "
    "created_at REAL NOT NULL, note TEXT NOT NULL DEFAULT '', PRIMARY KEY (path, version))",
    "CREATE TABLE IF NOT EXISTS shares (path TEXT NOT NULL, grantee TEXT NOT NULL, mode TEXT NOT NULL, "
    "created_at REAL NOT NULL, PRIMARY KEY (path, grantee))",
    quota.SCHEMA,
)


class StorageService(BaseService):
    """Serves ``memory`` and ``storage`` syscalls; safe to share between threads and between processes."""

    def __init__(self, settings: Settings, access: AccessManager | None = None, *, index_files: bool = True,
                 embedder: Any = None) -> None:
        """``index_files=False``: files are versioned but not embedded (the tool worker, which must not open the
        storage worker's Milvus Lite)."""
        self.settings = settings
        self.index_files = index_files
        self.agents_dir = Path(settings.data_dir) / "agents"
        self._local = threading.local()
        self._access = access
        self._access_lock = threading.Lock()
        self._vectors: Any = None
        self._embedder: Any = embedder  # None: the one the settings name, loaded on first use
        self._lazy_lock = threading.Lock()
        self._private = False  # agents_dir made or tightened to 0700 by this service
        self.memory = MemoryManager(self._fast_tier(settings), settings.storage.memory_budget_bytes,
                                    settings.storage.memory_lru_k, db=self._db, vectors=self.vectors, embed=self.embed,
                                    quota_bytes=settings.storage.quota_bytes)

    @staticmethod
    def _fast_tier(settings: Settings) -> Any:
        """The kernel's Redis when there is one; else (a service used as a library, unit tests) this process."""
        try:
            return RedisFastTier(state_client(settings))
        except ConfigError:
            return LocalFastTier()

    def vectors(self) -> Any:
        """The vector store, opened on first use (Milvus Lite: by this process only)."""
        if self._vectors is None:
            with self._lazy_lock:
                if self._vectors is None:
                    from aios.services.storage.vectors import VectorStore

                    self._vectors = VectorStore(self.settings.vector_uri(), self.embedder().dim,
                                                token=self.settings.storage.milvus_token)
        return self._vectors

    def embedder(self) -> Any:
        if self._embedder is None:
            from aios.services.storage.embeddings import get_embedder

            self._embedder = get_embedder(self.settings)
        return self._embedder

    def embed(self, texts: list[str]) -> Any:
        return self.embedder().embed(texts)

    @property
    def access(self) -> AccessManager:
        """Made on the first cross-agent syscall, so a service that never sees one needs no Redis."""
        if self._access is None:
            with self._access_lock:
                if self._access is None:
                    self._access = AccessManager(self.settings)
        return self._access

    def irreversible(self, syscall: Syscall) -> str | None:
        owner = getattr(syscall, "owner", None) or syscall.agent_id
        if isinstance(syscall, MemorySyscall) and syscall.op == "delete":
            return f"deletes memory item {syscall.key!r} of agent {owner!r}"
        if isinstance(syscall, StorageSyscall):  # the path as it will be served, so the operator sees that file
            if syscall.op == "delete":
                return f"deletes {_normal(syscall.path)!r} of agent {owner!r}"
            if syscall.op == "share":
                return (f"gives agent {syscall.with_agent!r} {syscall.mode} access to {_normal(syscall.path)!r} of "
                        f"agent {owner!r}")
            # Overwriting a file is not irreversible: every write keeps a version (op='rollback').
        return None

    def handle(self, syscall: Syscall, snapshot: Snapshot | None = None) -> Any:
        # Whose data: the owner named, else the caller. agent_id was verified by the worker (HMAC signature).
        owner = getattr(syscall, "owner", None) or syscall.agent_id
        for agent in {syscall.agent_id, owner}:
            if agent in (".", "..") or not AGENT_ID_RE.fullmatch(agent):  # fullmatch: '$' lets a \n through
                raise AccessDenied(f"agent id {agent!r} cannot name a storage folder")
        agent = owner  # from here on, every path and message is about the owner's data
        try:
            if owner != syscall.agent_id:
                assert isinstance(syscall, (MemorySyscall, StorageSyscall))  # only they name an owner
                self._authorize(syscall, owner)
            if isinstance(syscall, MemorySyscall):
                return self._memory(agent, syscall)
            if isinstance(syscall, StorageSyscall):
                return self._storage(agent, syscall)
        except UnicodeEncodeError:
            raise InvalidSyscall("text must be valid Unicode (it holds a lone surrogate)") from None
        except redis.RedisError as exc:  # memory stats read the fast tier (other ops go on without it)
            raise KernelUnavailable(f"the memory fast tier (the kernel's Redis) failed: {exc}; retry the syscall"
                                    ) from None
        except MilvusException as exc:
            raise AIOSError(f"the vector store failed: {exc.message}; retry the syscall",
                            code="storage_error") from None
        except sqlite3.OperationalError as exc:  # locked past the busy timeout, disk full: worth a retry
            raise AIOSError(f"agent memory unavailable: {exc}; retry the syscall", code="storage_error") from None
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise InvalidSyscall("a path component is longer than the filesystem allows") from None
            raise AIOSError(f"storage failed: {exc.strerror or exc}", code="storage_error") from None
        raise InvalidSyscall(f"the storage worker serves memory and storage syscalls, not {syscall.kind!r}",
                             code="wrong_queue")

    def _authorize(self, syscall: MemorySyscall | StorageSyscall, owner: str) -> None:
        """Raise :class:`AccessDenied` unless the caller may do this op on ``owner``'s data (audited either way)."""
        resource = KIND_RESOURCE[syscall.kind]
        target = (syscall.key or "") if isinstance(syscall, MemorySyscall) else _normal(syscall.path)
        if isinstance(syscall, StorageSyscall) and syscall.op in _SHARE_OPS:
            mode = self._shared_mode(owner, syscall.path, syscall.agent_id)
            if mode is not None and (mode == "write" or OP_NEED[syscall.op] == "read"):
                try:
                    self.access.audit.record(actor=syscall.agent_id, owner=owner, resource=resource, op=syscall.op,
                                             target=target, decision="allow", syscall_id=syscall.id,
                                             reason=f"file shared with it ({mode})")
                except redis.RedisError as exc:
                    raise KernelUnavailable(f"cannot record access to '{owner}''s {resource}: the kernel's "
                                            f"Redis failed ({exc}); retry the syscall") from None
                return
        try:
            decision = self.access.check(syscall.agent_id, owner, resource, OP_NEED[syscall.op], op=syscall.op,
                                         target=target, syscall_id=syscall.id)
        except redis.RedisError as exc:  # no decision can be made nor recorded: fail closed
            raise KernelUnavailable(f"cannot check access to '{owner}''s {resource}: the kernel's Redis "
                                    f"failed ({exc}); retry the syscall") from None
        if not decision.allowed:
            raise AccessDenied(decision.reason)

    def _shared_mode(self, owner: str, path: str, grantee: str) -> str | None:
        try:
            key = "/".join(_split(path))
        except AIOSError:
            return None
        db = self._db(owner, create=False)
        row = None if db is None else db.execute("SELECT mode FROM shares WHERE path = ? AND grantee = ?",
                                                 (key, grantee)).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        """Close the calling thread's connections (a SQLite connection belongs to the thread that opened it)."""
        conns = self._connections()
        while conns:
            conns.popitem()[1].close()

    # -- memory ----------------------------------------------------------------------------------------

    def _memory(self, agent: str, sc: MemorySyscall) -> Any:
        m = self.memory
        if sc.op in ("put", "create", "update"):
            return m.write(agent, sc.key, sc.value, sc.op)
        if sc.op == "get":
            return m.get(agent, sc.key or "")
        if sc.op == "delete":
            return m.delete(agent, sc.key or "")
        if sc.op == "search":
            return m.search(agent, sc.query or "", sc.k)
        if sc.op == "stats":
            return m.stats(agent)
        return m.list(agent)

    def _connections(self) -> OrderedDict[str, sqlite3.Connection]:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # a forked child must not use its parent's connections
            local.pid, local.conns = os.getpid(), OrderedDict()
        conns: OrderedDict[str, sqlite3.Connection] = local.conns
        return conns

    @overload
    def _db(self, agent: str, create: Literal[True]) -> sqlite3.Connection: ...
    @overload
    def _db(self, agent: str, create: bool) -> sqlite3.Connection | None: ...

    def _db(self, agent: str, create: bool) -> sqlite3.Connection | None:
        """The agent's memory database; ``None`` only without ``create``, when the agent has no storage yet
        (``create`` makes the folders, so it always has one or raises)."""
        conns = self._connections()
        if agent in conns:
            conns.move_to_end(agent)
            return conns[agent]
        try:
            os.close(self._open(agent, None, create))  # the agent folder exists and is no symlink
        except NotFound:
            return None
        path = self.agents_dir / agent / "memory.sqlite3"
        try:
            if stat.S_ISLNK(os.lstat(path).st_mode):
                raise AccessDenied(f"agent '{agent}' memory database is a symlink; storage never follows symlinks")
        except FileNotFoundError:
            if not create:
                return None
        open_private(path, "ab").close()  # 0600 before SQLite opens it: its -wal and -shm files take its mode
        conns[agent] = conn = _connect(path)
        if len(conns) > CONNECTIONS_PER_THREAD:
            conns.popitem(last=False)[1].close()
        return conn

    # -- files -----------------------------------------------------------------------------------------

    def _open(self, agent: str, parts: list[str] | None, create: bool) -> int:
        """An fd on the agent's folder (``parts`` None) or on its ``files/<parts>``, never through a symlink."""
        if create and (not self._private or not self.agents_dir.is_dir()):
            private_dir(self.agents_dir)
            self._private = True
        try:  # data_dir is the operator's and may be a symlink; only what lies under agents/ is the agents'
            fd = os.open(self.agents_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"agent '{agent}' has no storage yet") from None
        return _walk(fd, [agent] if parts is None else [agent, "files", *parts], create, visible=2)

    def _storage(self, agent: str, sc: StorageSyscall) -> Any:
        if sc.op == "embed":
            return self._embed(list(sc.texts))
        parts = _split(sc.path)
        path, folder, name = "/".join(parts), parts[:-1], parts[-1] if parts else ""
        if sc.op not in ("list", "search", "mount") and not parts:
            raise InvalidSyscall(f"storage op {sc.op!r} needs a file path, not the agent's root folder")
        if sc.op in ("write", "create"):
            return self._write(agent, parts, sc.content or "", sc.if_version if sc.op == "write" else 0,
                               create_only=sc.op == "create")
        if sc.op == "mkdir":
            os.close(self._open(agent, parts, create=True))
            return {"path": path, "created": True}
        if sc.op == "mount":
            os.close(self._open(agent, [], create=True))
            return {"agent": agent, "root": "", "mounted": True}
        if sc.op == "search":
            return self._search_files(agent, sc.query or "", sc.k)
        if sc.op in ("rollback", "versions", "share"):
            return self._history(agent, parts, sc)
        try:
            d = self._open(agent, parts if sc.op == "list" else folder, create=False)
        except NotFound:
            if sc.op == "delete":
                return {"path": path, "deleted": False}
            if sc.op == "list" and not parts:
                return {"path": "", "entries": []}
            what = "folder" if sc.op == "list" else "file"
            raise NotFound(f"{what} '{path}' not found for agent '{agent}'; list files with op='list'") from None
        try:
            if sc.op == "list":
                return {"path": path, "entries": _entries(d)}
            try:
                mode = os.lstat(name, dir_fd=d).st_mode
            except FileNotFoundError:
                if sc.op == "delete":
                    return {"path": path, "deleted": False}
                raise NotFound(f"file '{path}' not found for agent '{agent}'; list files with op='list'") from None
            if sc.op == "read":
                if not sc.with_version:
                    return {"path": path, "content": _read_at(d, name, path)}
                db = self._db(agent, create=True)
                with db:  # under the write lock: no writer can replace the file between the two reads
                    db.execute("BEGIN IMMEDIATE")
                    content = _read_at(d, name, path)
                    version = _current_version(db, path) or _adopt(db, d, name, path)
                return {"path": path, "content": content, "version": version}
            if stat.S_ISLNK(mode):
                raise _refusal(d, name, path)
            with contextlib.suppress(FileNotFoundError):  # a concurrent delete got there first: same outcome
                if stat.S_ISDIR(mode):
                    try:
                        os.rmdir(name, dir_fd=d)
                    except OSError as exc:
                        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                            raise
                        raise InvalidSyscall(f"folder '{path}' is not empty; delete its entries first") from None
                else:  # unlink never follows: a symlink swapped in since lstat is removed, not its target
                    self._forget_file(agent, path, lambda: os.unlink(name, dir_fd=d))
                os.fsync(d)
                return {"path": path, "deleted": True}
            return {"path": path, "deleted": False}
        finally:
            os.close(d)


    # -- versions, sharing, retrieval ----------------------------------------------------------------

    def _write(self, agent: str, parts: list[str], content: str, if_version: int | None, *,
               create_only: bool, note: str = "") -> dict[str, Any]:
        """Write a file and keep it as a new version, atomically with respect to other writers of the agent.

        The SQLite write lock (BEGIN IMMEDIATE) is held from reading the current version to the commit, across
        the file's replacement: writers of one agent's files are serialised, across threads and processes, so
        version numbers are dense, ``if_version`` is an exact compare-and-set, and the file on disk is always
        the content of the newest version. Acknowledged only after the file, its folder and the version row
        are on disk (fsync, ``synchronous=FULL``)."""
        path, folder, name = "/".join(parts), parts[:-1], parts[-1]
        data = content.encode("utf-8")
        chunks = self._chunks(content)
        vectors = self.embed(chunks) if chunks and self.index_files else None
        db = self._db(agent, create=True)
        d = self._open(agent, folder, create=True)
        try:
            with db:
                db.execute("BEGIN IMMEDIATE")
                current = _current_version(db, path)
                try:
                    exists = stat.S_ISREG(os.lstat(name, dir_fd=d).st_mode)
                except FileNotFoundError:
                    exists = False
                if exists and current == 0:  # a file from before versioning: what it holds becomes version 1
                    current = _adopt(db, d, name, path)
                if create_only and exists:
                    raise Conflict(f"file '{path}' already exists for agent '{agent}'; write_file replaces it "
                                   "(keeping a version)")
                if if_version is not None and (current if exists else 0) != if_version:
                    raise Conflict(f"file '{path}' is at version {current if exists else 0}, not {if_version}: "
                                   "it changed since you read it; read it again and retry")
                version = current + 1
                oldest = version - self.settings.storage.max_versions  # this one and older are pruned
                pruned = db.execute("SELECT coalesce(sum(length(CAST(content AS BLOB))), 0) FROM file_versions "
                                    "WHERE path = ? AND version <= ?", (path, oldest)).fetchone()[0]
                quota.charge(db, agent, len(data) - pruned, self.settings.storage.quota_bytes,
                             f"writing '{path}' ({len(data)} bytes)")
                db.execute("DELETE FROM file_versions WHERE path = ? AND version <= ?", (path, oldest))
                db.execute("INSERT INTO file_versions VALUES (?, ?, ?, ?, ?)",
                           (path, version, content, time.time(), note))
                if vectors is not None:  # before the file: a failure here leaves file and versions as they were
                    self.vectors().put_file(agent, path, list(vectors))
                _write_at(d, name, data, path)
        finally:
            os.close(d)
        return {"path": path, "bytes": len(data), "version": version}

    def _chunks(self, content: str) -> list[str]:
        size = self.settings.storage.file_chunk_chars
        return [content[i:i + size] for i in range(0, len(content), size)][:self.settings.storage.file_max_chunks]

    def _forget_file(self, agent: str, path: str, unlink: Any) -> None:
        """Delete a file with its versions, shares and vectors: deleting is the irreversible operation."""
        db = self._db(agent, create=True)
        with db:
            db.execute("BEGIN IMMEDIATE")
            unlink()
            freed = db.execute("SELECT coalesce(sum(length(CAST(content AS BLOB))), 0) FROM file_versions "
                               "WHERE path = ?", (path,)).fetchone()[0]
            quota.charge(db, agent, -freed, None, f"deleting '{path}'")
            db.execute("DELETE FROM file_versions WHERE path = ?", (path,))
            db.execute("DELETE FROM shares WHERE path = ?", (path,))
        if self.index_files:
            self.vectors().delete_file(agent, path)

    def _history(self, agent: str, parts: list[str], sc: StorageSyscall) -> dict[str, Any]:
        path = "/".join(parts)
        d = self._open(agent, parts[:-1], create=False)  # refuses symlinked folders; NotFound if absent
        try:
            if not stat.S_ISREG(os.lstat(parts[-1], dir_fd=d).st_mode):
                raise _refusal(d, parts[-1], path)
        except FileNotFoundError:
            raise NotFound(f"file '{path}' not found for agent '{agent}'; list files with op='list'") from None
        finally:
            os.close(d)
        db = self._db(agent, create=True)
        if sc.op == "versions":
            rows = db.execute("SELECT version, created_at, length(CAST(content AS BLOB)), note FROM file_versions "
                              "WHERE path = ? ORDER BY version", (path,)).fetchall()
            return {"path": path, "versions": [{"version": v, "created_at": t, "bytes": b, "note": n}
                                               for v, t, b, n in rows]}
        if sc.op == "share":
            if sc.with_agent == agent:
                raise InvalidSyscall(f"file '{path}' already belongs to agent '{agent}'")
            with db:
                db.execute("INSERT INTO shares VALUES (?, ?, ?, ?) ON CONFLICT(path, grantee) DO UPDATE SET "
                           "mode = excluded.mode", (path, sc.with_agent, sc.mode, time.time()))
            return {"path": path, "shared_with": sc.with_agent, "mode": sc.mode}
        if sc.version is not None:
            row = db.execute("SELECT version, content FROM file_versions WHERE path = ? AND version = ?",
                             (path, sc.version)).fetchone()
        else:
            row = db.execute("SELECT version, content FROM file_versions WHERE path = ? AND created_at <= ? "
                             "ORDER BY version DESC LIMIT 1", (path, sc.at)).fetchone()
        if row is None:
            known = [r[0] for r in db.execute("SELECT version FROM file_versions WHERE path = ? ORDER BY version",
                                              (path,))]
            wanted = f"version {sc.version}" if sc.version is not None else f"version written at or before {sc.at}"
            pruned = ""
            if known and known[0] > 1 and (sc.version is None or sc.version < known[0]):
                pruned = (f" (versions before {known[0]} were pruned: at most {self.settings.storage.max_versions} "
                          "are kept, AIOS_STORAGE_MAX_VERSIONS)")
            raise NotFound(f"file '{path}' has no {wanted}{pruned}; its versions are {known or 'none'} "
                           "(see op='versions')")
        result = self._write(agent, parts, row[1], None, create_only=False, note=f"rollback to {row[0]}")
        return {**result, "restored": row[0]}

    def _embed(self, texts: list[str]) -> dict[str, Any]:
        """The kernel's embedding model on ``texts`` (the gateway's ``/v1/embeddings``): vectors and token count."""
        embedder = self.embedder()
        tok = getattr(embedder, "tok", None)  # the local model's tokenizer; a remote model's count is not known
        tokens = sum(len(e.ids) for e in tok.encode_batch(texts)) if tok is not None else 0
        return {"model": embedder.name, "dim": embedder.dim, "vectors": self.embed(texts).tolist(), "tokens": tokens}

    def _search_files(self, agent: str, query: str, k: int) -> dict[str, Any]:
        if not self.index_files:
            raise InvalidSyscall("file search runs on the storage worker only", code="wrong_queue")
        results = []
        for hit in self.vectors().search_files(agent, self.embed([query])[0], k):
            parts = hit["path"].split("/")
            try:  # the snippet from the file as it is now (the index holds no text)
                d = self._open(agent, parts[:-1], create=False)
                try:
                    content = _read_at(d, parts[-1], hit["path"])
                finally:
                    os.close(d)
            except AIOSError:  # gone or unreadable since it was indexed: not a result
                continue
            size = self.settings.storage.file_chunk_chars
            results.append({"path": hit["path"], "score": round(hit["score"], 6),
                            "snippet": content[hit["chunk"] * size:(hit["chunk"] + 1) * size]})
        return {"query": query, "results": results}


def _adopt(db: sqlite3.Connection, d: int, name: str, path: str) -> int:
    """A file written before versioning (or behind the kernel's back) gets its content as version 1 (counted in
    the quota, never refused by it: it is there already)."""
    content = _read_at(d, name, path)
    quota.charge(db, "", len(content.encode("utf-8")), None, f"adopting '{path}'")
    db.execute("INSERT INTO file_versions VALUES (?, 1, ?, ?, 'found')", (path, content, time.time()))
    return 1


def _current_version(db: sqlite3.Connection, path: str) -> int:
    return int(db.execute("SELECT coalesce(max(version), 0) FROM file_versions WHERE path = ?", (path,)).fetchone()[0])


def _split(path: str) -> list[str]:
    """A path as its folder names: in Unicode NFC, so that a name typed composed or decomposed is one file (the
    disk compares bytes); '.', empty parts and a trailing '/' dropped; everything that could leave the agent's
    folder, hide in a listing or is reserved refused. Case is kept: 'A' and 'a' are two files, as on Linux."""
    if "\x00" in path:
        raise AccessDenied("path contains a NUL byte")
    path = unicodedata.normalize("NFC", path)
    hidden = next((c for c in path if unicodedata.category(c) in ("Cc", "Cf")), None)
    if hidden is not None:  # newlines, escapes, bidi overrides, zero-width characters: names that mislead
        raise InvalidSyscall(f"path {path!r} holds the control or invisible character U+{ord(hidden):04X}; "
                             "file names must be visible text")
    if "\\" in path:
        raise AccessDenied(f"path {path!r} contains a backslash; separate folders with '/'")
    if path.startswith("/"):
        raise AccessDenied(f"path {path!r} is absolute; paths are relative to the agent's folder")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise AccessDenied(f"path {path!r} has a '..' component; paths must stay inside the agent's folder")
    if any(p.startswith(TMP_PREFIX) for p in parts):
        raise InvalidSyscall(f"path {path!r}: names starting with {TMP_PREFIX!r} are reserved")
    return parts


def _normal(path: str) -> str:
    """``path`` as storage serves it (see :func:`_split`), or as given if it would be refused."""
    try:
        return "/".join(_split(path))
    except AIOSError:
        return path


def _refusal(dir_fd: int, name: str, shown: str) -> AIOSError:
    """Why ``name`` could not be opened as asked: a symlink is refused; anything else is the wrong kind."""
    try:
        mode = os.lstat(name, dir_fd=dir_fd).st_mode
    except FileNotFoundError:  # gone since the caller looked
        return NotFound(f"'{shown}' does not exist")
    if stat.S_ISLNK(mode):
        return AccessDenied(f"'{shown}' is a symlink; agent storage never follows symlinks, wherever they point")
    if stat.S_ISDIR(mode):
        return InvalidSyscall(f"'{shown}' is a folder; use op='list'")
    if stat.S_ISREG(mode):
        return InvalidSyscall(f"'{shown}' is a file, not a folder")
    return AccessDenied(f"'{shown}' is not a file: only files and folders are served")


def _walk(fd: int, parts: list[str], create: bool, visible: int) -> int:
    """Descend from ``fd`` (consumed) one folder at a time, making missing ones if ``create``."""
    try:
        for i, name in enumerate(parts):
            shown = "/".join(parts[visible:i + 1]) or "the agent's folder"
            for attempt in (0, 1):
                try:
                    nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                        raise
                    if exc.errno != errno.ENOENT or not create or attempt:
                        raise _refusal(fd, name, shown) from None
                with contextlib.suppress(FileExistsError):  # another thread or worker made it first
                    os.mkdir(name, DIR_MODE, dir_fd=fd)
                os.fsync(fd)  # the new folder must survive a crash as surely as the file written into it
            if attempt:  # made just now: 0700 whatever the umask
                os.fchmod(nxt, DIR_MODE)
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def _entries(d: int) -> list[dict[str, Any]]:
    entries = []
    with os.scandir(d) as it:
        for e in it:
            with contextlib.suppress(FileNotFoundError):  # deleted while listing
                st = e.stat(follow_symlinks=False)
                # Temp files, symlinks and special files are left out: no op would serve them.
                if stat.S_ISDIR(st.st_mode) and not e.name.startswith(TMP_PREFIX):
                    entries.append({"name": e.name, "type": "dir", "bytes": 0})
                elif stat.S_ISREG(st.st_mode) and not e.name.startswith(TMP_PREFIX):
                    entries.append({"name": e.name, "type": "file", "bytes": st.st_size})
    return sorted(entries, key=lambda e: e["name"])


def _read_at(d: int, name: str, shown: str) -> str:
    try:  # O_NONBLOCK: a planted FIFO must not hang the worker thread in open()
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=d)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP):
            raise _refusal(d, name, shown) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _refusal(d, name, shown)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read()
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidSyscall(f"'{shown}' is not UTF-8 text") from None


def _write_at(d: int, name: str, data: bytes, shown: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISREG(os.lstat(name, dir_fd=d).st_mode):
            raise _refusal(d, name, shown)
    # Readers see the old content or the new, never a torn file; and rename replaces a symlink swapped in
    # since the check above instead of writing through it.
    tmp = TMP_PREFIX + uuid.uuid4().hex
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE, dir_fd=d)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE)  # 0600 whatever the umask
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=d, dst_dir_fd=d)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=d)
        raise
    os.fsync(d)  # the rename must be durable before the write is acknowledged


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: transactions are explicit, so a lone statement has committed when it returns.
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        for attempt in range(100):  # switching to WAL takes a lock SQLite does not always wait for
            try:
                conn.execute("PRAGMA journal_mode = WAL").fetchone()
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 99:
                    raise
                time.sleep(0.05)
        conn.execute("PRAGMA synchronous = FULL")  # an acknowledged put survives kill -9 and power loss
        for statement in _SCHEMA:
            conn.execute(statement)
    except BaseException:
        conn.close()
        raise
    return conn
