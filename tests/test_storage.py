"""Unit tests of the storage worker's service: memory, files, path safety, concurrency, durability."""

from __future__ import annotations

import os
import stat
import threading
import time
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from aios.services.storage.service import TMP_PREFIX, StorageService
from aios.settings import Settings
from aios.wire.errors import AccessDenied, Conflict, InvalidSyscall, NotFound, QuotaExceeded
from aios.wire.syscalls import MemorySyscall, StorageSyscall
from tests.conftest import storage_service


@pytest.fixture
def svc(tmp_path: Path, vectors: Any) -> StorageService:
    # The FAKE embedder keeps these unit tests fast; the vector store is the real Milvus Lite (one for the
    # session, emptied per test), and tests/test_memory_storage.py runs the real embedding model.
    return storage_service(Settings(data_dir=tmp_path), vectors)


def mem(svc: StorageService, op: str, key: str | None = None, value: object = None, agent: str = "a1") -> object:
    return svc.handle(MemorySyscall(agent_id=agent, op=op, key=key, value=value))


def fs(svc: StorageService, op: str, path: str = "", content: str | None = None, agent: str = "a1") -> object:
    return svc.handle(StorageSyscall(agent_id=agent, op=op, path=path, content=content))


# -- memory ------------------------------------------------------------------------------------------------


def test_memory_round_trip_update_delete_list(svc: StorageService, tmp_path: Path) -> None:
    assert mem(svc, "list") == {"keys": []}
    assert mem(svc, "put", "k", {"x": 1}) == {"key": "k", "created": True}
    assert mem(svc, "get", "k") == {"key": "k", "value": {"x": 1}}
    assert mem(svc, "put", "k", [1, "two", None, 3.5, True]) == {"key": "k", "created": False}
    assert mem(svc, "get", "k") == {"key": "k", "value": [1, "two", None, 3.5, True]}
    mem(svc, "put", "b", "text")
    mem(svc, "put", "a", None)
    assert mem(svc, "get", "a") == {"key": "a", "value": None}
    assert mem(svc, "list") == {"keys": ["a", "b", "k"]}
    assert mem(svc, "delete", "k") == {"key": "k", "deleted": True}
    assert mem(svc, "delete", "k") == {"key": "k", "deleted": False}
    with pytest.raises(NotFound, match="memory key 'k' not found for agent 'a1'; list keys with op='list'"):
        mem(svc, "get", "k")
    assert mem(svc, "list") == {"keys": ["a", "b"]}
    assert (tmp_path / "agents" / "a1" / "memory.sqlite3").is_file()


def test_memory_on_unknown_agent_creates_nothing(svc: StorageService, tmp_path: Path) -> None:
    assert mem(svc, "list", agent="ghost") == {"keys": []}
    assert mem(svc, "delete", "k", agent="ghost") == {"key": "k", "deleted": False}
    with pytest.raises(NotFound):
        mem(svc, "get", "k", agent="ghost")
    assert not (tmp_path / "agents" / "ghost").exists()


def test_memory_is_wal_and_durable_settings(svc: StorageService, tmp_path: Path) -> None:
    import sqlite3

    mem(svc, "put", "k", 1)
    conn = sqlite3.connect(tmp_path / "agents" / "a1" / "memory.sqlite3")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_memory_refuses_non_json_values(svc: StorageService) -> None:
    with pytest.raises(InvalidSyscall, match="plain JSON"):
        mem(svc, "put", "k", float("nan"))


def test_memory_isolated_between_agents(svc: StorageService) -> None:
    mem(svc, "put", "shared-name", "mine", agent="alice")
    mem(svc, "put", "shared-name", "yours", agent="bob")
    mem(svc, "put", "only-alice", 1, agent="alice")
    assert mem(svc, "get", "shared-name", agent="alice")["value"] == "mine"  # type: ignore[index]
    assert mem(svc, "get", "shared-name", agent="bob")["value"] == "yours"  # type: ignore[index]
    assert mem(svc, "list", agent="bob") == {"keys": ["shared-name"]}
    with pytest.raises(NotFound, match="agent 'bob'"):
        mem(svc, "get", "only-alice", agent="bob")
    assert mem(svc, "delete", "only-alice", agent="bob")["deleted"] is False  # type: ignore[index]
    assert mem(svc, "get", "only-alice", agent="alice")["value"] == 1  # type: ignore[index]


def test_memory_persists_across_instances(tmp_path: Path, vectors: Any) -> None:
    first = storage_service(Settings(data_dir=tmp_path), vectors)
    mem(first, "put", "k", {"deep": {"list": [1, 2]}})
    fs(first, "write", "notes/a.txt", "hello")
    first.close()
    second = storage_service(Settings(data_dir=tmp_path), vectors)
    assert mem(second, "get", "k") == {"key": "k", "value": {"deep": {"list": [1, 2]}}}
    assert fs(second, "read", "notes/a.txt") == {"path": "notes/a.txt", "content": "hello"}
    second.close()


def test_concurrent_writers_lose_nothing(svc: StorageService) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def writer(t: int) -> None:
        try:
            start.wait()
            for i in range(50):
                assert mem(svc, "put", f"t{t}-k{i:02d}", {"t": t, "i": i})["created"] is True  # type: ignore[index]
        except BaseException as exc:  # surfaced below; a thread's exception would otherwise vanish
            errors.append(exc)
        finally:
            svc.close()

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    keys = mem(svc, "list")["keys"]  # type: ignore[index]
    assert len(keys) == 400
    assert keys == sorted(f"t{t}-k{i:02d}" for t in range(8) for i in range(50))
    assert mem(svc, "get", "t7-k49")["value"] == {"t": 7, "i": 49}  # type: ignore[index]
    _used(svc)  # the quota's running total is the recount, after 8 threads wrote at once


def test_connections_per_thread_stay_bounded(svc: StorageService) -> None:
    from aios.services.storage.service import CONNECTIONS_PER_THREAD

    for n in range(CONNECTIONS_PER_THREAD * 3):
        mem(svc, "put", "k", n, agent=f"agent{n}")
    assert len(svc._connections()) == CONNECTIONS_PER_THREAD
    assert mem(svc, "get", "k", agent="agent0")["value"] == 0  # type: ignore[index]
    svc.close()
    assert len(svc._connections()) == 0


# -- files -------------------------------------------------------------------------------------------------


def test_nested_write_read_list_delete(svc: StorageService, tmp_path: Path) -> None:
    assert fs(svc, "list") == {"path": "", "entries": []}
    assert fs(svc, "write", "docs/2024/report.md", "# héllo\n") == {"path": "docs/2024/report.md", "bytes": 9,
                                                                    "version": 1}
    assert fs(svc, "write", "top.txt", "") == {"path": "top.txt", "bytes": 0, "version": 1}
    assert fs(svc, "read", "docs/2024/report.md") == {"path": "docs/2024/report.md", "content": "# héllo\n"}
    assert fs(svc, "write", "docs/2024/report.md", "v2") == {"path": "docs/2024/report.md", "bytes": 2,
                                                                "version": 2}
    assert fs(svc, "read", "./docs//2024/report.md")["content"] == "v2"  # type: ignore[index]
    assert (tmp_path / "agents" / "a1" / "files" / "docs" / "2024" / "report.md").read_text() == "v2"

    assert fs(svc, "list") == {"path": "", "entries": [
        {"name": "docs", "type": "dir", "bytes": 0}, {"name": "top.txt", "type": "file", "bytes": 0}]}
    assert fs(svc, "list", "docs/2024") == {"path": "docs/2024", "entries": [
        {"name": "report.md", "type": "file", "bytes": 2}]}

    with pytest.raises(InvalidSyscall, match="is a folder"):
        fs(svc, "read", "docs")
    with pytest.raises(InvalidSyscall, match="is a file, not a folder"):
        fs(svc, "list", "top.txt")
    with pytest.raises(InvalidSyscall, match="not empty"):
        fs(svc, "delete", "docs/2024")

    assert fs(svc, "delete", "docs/2024/report.md") == {"path": "docs/2024/report.md", "deleted": True}
    assert fs(svc, "delete", "docs/2024/report.md") == {"path": "docs/2024/report.md", "deleted": False}
    assert fs(svc, "delete", "nowhere/x.txt") == {"path": "nowhere/x.txt", "deleted": False}
    with pytest.raises(NotFound, match="file 'docs/2024/report.md' not found"):
        fs(svc, "read", "docs/2024/report.md")
    with pytest.raises(NotFound):
        fs(svc, "read", "nowhere/x.txt")
    with pytest.raises(NotFound, match="folder 'nowhere'"):
        fs(svc, "list", "nowhere")
    assert fs(svc, "delete", "docs/2024") == {"path": "docs/2024", "deleted": True}
    assert fs(svc, "list", "docs") == {"path": "docs", "entries": []}


def test_files_isolated_between_agents(svc: StorageService) -> None:
    fs(svc, "write", "secret.txt", "alice only", agent="alice")
    with pytest.raises(NotFound):
        fs(svc, "read", "secret.txt", agent="bob")
    assert fs(svc, "list", agent="bob") == {"path": "", "entries": []}
    assert fs(svc, "delete", "secret.txt", agent="bob")["deleted"] is False  # type: ignore[index]
    assert fs(svc, "read", "secret.txt", agent="alice")["content"] == "alice only"  # type: ignore[index]


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/../../x", "a/..", "..", "a\\..\\x", "a\x00b",
                                  "../a1/files/x", "../../agents/b/files/x"])
@pytest.mark.parametrize("op", ["read", "write", "delete", "list"])
def test_path_escapes_refused(svc: StorageService, tmp_path: Path, path: str, op: str) -> None:
    with pytest.raises(AccessDenied):
        fs(svc, op, path, "pwned" if op == "write" else None)
    assert not (tmp_path / "x").exists() and not (tmp_path / "agents" / "x").exists()


def test_escape_messages_say_why(svc: StorageService) -> None:
    with pytest.raises(AccessDenied, match="'..' component"):
        fs(svc, "read", "a/../../x")
    with pytest.raises(AccessDenied, match="absolute"):
        fs(svc, "read", "/etc/passwd")
    with pytest.raises(AccessDenied, match="backslash"):
        fs(svc, "read", "a\\b")


def _plant(tmp_path: Path, agent: str = "a1") -> tuple[Path, Path]:
    """A folder outside the agent's, with a secret, and the agent's files folder."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret")
    files = tmp_path / "agents" / agent / "files"
    files.mkdir(parents=True)
    return outside, files


def test_symlinked_file_refused_for_read_write_delete(svc: StorageService, tmp_path: Path) -> None:
    outside, files = _plant(tmp_path)
    os.symlink(outside / "secret.txt", files / "link.txt")
    with pytest.raises(AccessDenied, match="symlink"):
        fs(svc, "read", "link.txt")
    with pytest.raises(AccessDenied, match="symlink"):
        fs(svc, "write", "link.txt", "overwritten")
    with pytest.raises(AccessDenied, match="symlink"):
        fs(svc, "delete", "link.txt")
    assert (outside / "secret.txt").read_text() == "top secret"
    assert os.path.islink(files / "link.txt")
    assert fs(svc, "list") == {"path": "", "entries": []}  # never shown, so never offered


def test_symlinked_folder_refused_for_read_write_list(svc: StorageService, tmp_path: Path) -> None:
    outside, files = _plant(tmp_path)
    os.symlink(outside, files / "dir")
    with pytest.raises(AccessDenied, match="'dir' is a symlink"):
        fs(svc, "read", "dir/secret.txt")
    with pytest.raises(AccessDenied, match="symlink"):
        fs(svc, "write", "dir/new.txt", "x")
    with pytest.raises(AccessDenied, match="symlink"):
        fs(svc, "write", "dir/deeper/new.txt", "x")
    with pytest.raises(AccessDenied, match="symlink"):
        fs(svc, "list", "dir")
    with pytest.raises(AccessDenied, match="symlink"):
        fs(svc, "delete", "dir/secret.txt")
    assert sorted(os.listdir(outside)) == ["secret.txt"]


def test_symlink_inside_the_folder_is_refused_too(svc: StorageService, tmp_path: Path) -> None:
    _, files = _plant(tmp_path)
    fs(svc, "write", "real/a.txt", "inside")
    os.symlink(files / "real", files / "alias")
    with pytest.raises(AccessDenied, match="symlink"):
        fs(svc, "read", "alias/a.txt")


def test_symlinked_agent_folder_refused(svc: StorageService, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "files").mkdir(parents=True)
    (tmp_path / "agents").mkdir()
    os.symlink(outside, tmp_path / "agents" / "a1")
    with pytest.raises(AccessDenied, match="symlink"):
        fs(svc, "write", "x.txt", "x")
    with pytest.raises(AccessDenied, match="symlink"):
        mem(svc, "put", "k", 1)
    assert list(outside.rglob("*")) == [outside / "files"]


def test_bad_agent_ids_refused(svc: StorageService) -> None:
    for agent in (".", "..", "a1\n"):  # the wire regex uses re.match, which lets a trailing newline through
        sc = MemorySyscall.model_construct(agent_id=agent, op="list", kind="memory", key=None, value=None)
        with pytest.raises(AccessDenied):
            svc.handle(sc)


def test_write_is_atomic_and_leaves_no_temp_file(svc: StorageService, tmp_path: Path) -> None:
    for n in range(20):
        fs(svc, "write", "d/f.txt", "x" * n)
    fs(svc, "write", "top.txt", "y")
    files = tmp_path / "agents" / "a1" / "files"
    leftovers = [p for p in files.rglob("*") if p.name.startswith(TMP_PREFIX)]
    assert leftovers == []
    assert sorted(p.name for p in files.rglob("*")) == ["d", "f.txt", "top.txt"]
    assert fs(svc, "read", "d/f.txt")["content"] == "x" * 19  # type: ignore[index]


def test_failed_write_leaves_old_content_and_no_temp_file(svc: StorageService, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    fs(svc, "write", "f.txt", "old")

    def broken_replace(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(Exception, match="No space left"):
        fs(svc, "write", "f.txt", "new")
    monkeypatch.undo()
    files = tmp_path / "agents" / "a1" / "files"
    assert os.listdir(files) == ["f.txt"]
    assert fs(svc, "read", "f.txt")["content"] == "old"  # type: ignore[index]


def test_reserved_temp_names_refused(svc: StorageService) -> None:
    with pytest.raises(InvalidSyscall, match="reserved"):
        fs(svc, "write", TMP_PREFIX + "x", "x")


def test_root_is_not_a_file(svc: StorageService) -> None:
    with pytest.raises(InvalidSyscall, match="root folder"):
        fs(svc, "read", ".")


def test_fifo_does_not_hang_read(svc: StorageService, tmp_path: Path) -> None:
    _, files = _plant(tmp_path)
    os.mkfifo(files / "pipe")
    with pytest.raises(AccessDenied, match="not a file"):
        fs(svc, "read", "pipe")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_no_file_handles_leak(svc: StorageService, tmp_path: Path) -> None:
    _, files = _plant(tmp_path)
    os.symlink("/etc", files / "link")
    mem(svc, "put", "k", 1)  # the thread's cached connection is opened here, before counting

    def open_here() -> int:  # only handles into this test's folder: other tests' threads open sockets meanwhile
        count = 0  # the vector store (Milvus Lite) is one long-lived store whose own files are not counted
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
                count += target.startswith(str(tmp_path)) and not target.startswith(str(tmp_path / "vectors"))
            except OSError:
                pass
        return count

    before = open_here()
    for n in range(50):
        fs(svc, "write", f"d/e/f{n % 5}.txt", "x")
        fs(svc, "read", "d/e/f0.txt")
        fs(svc, "list", "d/e")
        fs(svc, "delete", f"d/e/f{(n + 1) % 5}.txt")
        mem(svc, "put", "k", n)
        for op, path in (("read", "link/passwd"), ("read", "missing"), ("list", "d/e/f0.txt"), ("read", "d")):
            with pytest.raises((AccessDenied, NotFound, InvalidSyscall)):
                fs(svc, op, path)
    assert open_here() == before


# -- versions ----------------------------------------------------------------------------------------------


def test_a_file_from_before_versioning_becomes_version_1(svc: StorageService, tmp_path: Path) -> None:
    folder = tmp_path / "agents" / "a1" / "files"
    folder.mkdir(parents=True)
    (folder / "old.txt").write_text("legacy")
    read = svc.handle(StorageSyscall(agent_id="a1", op="read", path="old.txt", with_version=True))
    assert read == {"path": "old.txt", "content": "legacy", "version": 1}
    with pytest.raises(Conflict, match="is at version 1, not 0"):
        svc.handle(StorageSyscall(agent_id="a1", op="write", path="old.txt", content="x", if_version=0))
    assert svc.handle(StorageSyscall(agent_id="a1", op="write", path="old.txt", content="new", if_version=1)
                      )["version"] == 2
    (folder / "older.txt").write_text("kept")
    assert fs(svc, "write", "older.txt", "replaced")["version"] == 2  # type: ignore[index]
    rolled = svc.handle(StorageSyscall(agent_id="a1", op="rollback", path="older.txt", version=1))
    assert rolled["restored"] == 1 and fs(svc, "read", "older.txt")["content"] == "kept"  # type: ignore[index]


def test_cas_writers_in_threads_lose_nothing(svc: StorageService) -> None:
    fs(svc, "write", "counter", "0")
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            for _ in range(10):
                while True:
                    r = svc.handle(StorageSyscall(agent_id="a1", op="read", path="counter", with_version=True))
                    try:
                        svc.handle(StorageSyscall(agent_id="a1", op="write", path="counter",
                                                  content=str(int(r["content"]) + 1), if_version=r["version"]))
                        break
                    except Conflict:
                        continue
        except BaseException as exc:
            errors.append(exc)
        finally:
            svc.close()

    threads = [threading.Thread(target=bump) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert fs(svc, "read", "counter")["content"] == "60"  # type: ignore[index]
    versions = svc.handle(StorageSyscall(agent_id="a1", op="versions", path="counter"))["versions"]
    assert [v["version"] for v in versions] == list(range(42, 62))  # dense; the oldest pruned (20 kept)
    assert _used(svc) == sum(len(str(n)) for n in range(41, 61))


def test_delete_removes_versions_and_rollback_names_what_exists(svc: StorageService) -> None:
    fs(svc, "write", "f.txt", "one")
    fs(svc, "write", "f.txt", "two")
    with pytest.raises(NotFound, match=r"has no version 7; its versions are \[1, 2\]"):
        svc.handle(StorageSyscall(agent_id="a1", op="rollback", path="f.txt", version=7))
    with pytest.raises(NotFound, match="has no version written at or before 0.0"):
        svc.handle(StorageSyscall(agent_id="a1", op="rollback", path="f.txt", at=0.0))
    fs(svc, "delete", "f.txt")
    assert fs(svc, "write", "f.txt", "again")["version"] == 1  # type: ignore[index]
    with pytest.raises(NotFound):
        svc.handle(StorageSyscall(agent_id="a1", op="versions", path="missing.txt"))


# -- one name per file (Unicode NFC), names that mislead -----------------------------------------------------

CAFE_NFC, CAFE_NFD = unicodedata.normalize("NFC", "café.txt"), unicodedata.normalize("NFD", "café.txt")


def test_nfc_and_nfd_spellings_are_one_file(svc: StorageService, tmp_path: Path) -> None:
    assert CAFE_NFC != CAFE_NFD
    assert fs(svc, "write", f"notes/{CAFE_NFC}", "one")["path"] == f"notes/{CAFE_NFC}"  # type: ignore[index]
    assert fs(svc, "write", f"notes/{CAFE_NFD}", "two") == {"path": f"notes/{CAFE_NFC}", "bytes": 3, "version": 2}
    assert fs(svc, "list", "notes")["entries"] == [{"name": CAFE_NFC, "type": "file", "bytes": 3}]  # type: ignore[index]
    assert os.listdir(tmp_path / "agents" / "a1" / "files" / "notes") == [CAFE_NFC]
    assert fs(svc, "read", f"notes/{CAFE_NFC}")["content"] == fs(svc, "read", f"notes/{CAFE_NFD}")["content"] == "two"  # type: ignore[index]
    decomposed_folder = unicodedata.normalize("NFD", "résumés")
    fs(svc, "write", f"{decomposed_folder}/{CAFE_NFD}", "x")
    assert fs(svc, "read", f"résumés/{CAFE_NFC}")["content"] == "x"  # type: ignore[index]
    versions = svc.handle(StorageSyscall(agent_id="a1", op="versions", path=f"notes/{CAFE_NFD}"))
    assert [v["version"] for v in versions["versions"]] == [1, 2]
    delete = StorageSyscall(agent_id="a1", op="delete", path=f"notes/{CAFE_NFD}")
    assert svc.irreversible(delete) == f"deletes 'notes/{CAFE_NFC}' of agent 'a1'"  # what the operator approves
    assert svc.handle(delete) == {"path": f"notes/{CAFE_NFC}", "deleted": True}
    assert fs(svc, "list", "notes")["entries"] == []  # type: ignore[index]


def test_a_share_names_the_file_in_either_spelling(svc: StorageService) -> None:
    from aios.services.storage.service import _normal

    fs(svc, "write", CAFE_NFD, "shared", agent="alice")
    svc.handle(StorageSyscall(agent_id="alice", op="share", path=CAFE_NFD, with_agent="bob"))
    assert svc._shared_mode("alice", CAFE_NFC, "bob") == "read"
    assert _normal(f"./{CAFE_NFD}/") == CAFE_NFC


@pytest.mark.parametrize("path", ["a\nb.txt", "report\u202etxt.exe", "zero\u200bwidth", "\x1b[31mred", "tab\there",
                                  "bom\ufeff"])
def test_control_and_invisible_characters_refused(svc: StorageService, path: str) -> None:
    with pytest.raises(InvalidSyscall, match="control or invisible character U\\+"):
        fs(svc, "write", path, "x")
    assert fs(svc, "list") == {"path": "", "entries": []}


def test_trailing_slashes_and_dots_normalise_and_case_is_kept(svc: StorageService) -> None:
    fs(svc, "write", "d/f.txt/", "one")
    assert fs(svc, "read", "./d//f.txt")["content"] == "one"  # type: ignore[index]
    fs(svc, "write", "d/F.txt", "two")  # as on Linux: two files, and both are listed, so neither hides
    assert [e["name"] for e in fs(svc, "list", "d")["entries"]] == ["F.txt", "f.txt"]  # type: ignore[index]


# -- the storage quota -------------------------------------------------------------------------------------


def _used(svc: StorageService, agent: str = "a1") -> int:
    from aios.services.storage import quota

    db = svc._db(agent, create=True)
    counted = db.execute("SELECT (SELECT coalesce(sum(length(CAST(content AS BLOB))), 0) FROM file_versions) + "
                         "(SELECT coalesce(sum(length(CAST(value AS BLOB))), 0) FROM memory)").fetchone()[0]
    assert quota.used(db) == counted  # the running total is the truth
    return int(counted)


def test_a_write_past_the_quota_is_refused_and_loses_nothing(tmp_path: Path, vectors: Any) -> None:
    svc = storage_service(Settings(data_dir=tmp_path, storage_quota_bytes=100), vectors)
    fs(svc, "write", "keep.txt", "k" * 60)
    with pytest.raises(QuotaExceeded, match=r"writing 'big.txt' \(50 bytes\) needs 50 more bytes, and 60 of its "
                                            r"100 bytes are used \(AIOS_STORAGE_QUOTA_BYTES"):
        fs(svc, "write", "big.txt", "b" * 50)
    assert fs(svc, "read", "keep.txt")["content"] == "k" * 60  # type: ignore[index]
    with pytest.raises(NotFound):
        fs(svc, "read", "big.txt")
    with pytest.raises(QuotaExceeded):  # every kept version counts: overwriting does not free
        fs(svc, "write", "keep.txt", "k" * 50)
    with pytest.raises(QuotaExceeded):  # memory values count too
        mem(svc, "put", "m", "v" * 50)
    assert mem(svc, "list") == {"keys": []}
    assert _used(svc) == 60
    fs(svc, "write", "small.txt", "s" * 40)  # up to the limit exactly
    assert _used(svc) == 100
    fs(svc, "delete", "small.txt")  # a delete frees its versions
    mem(svc, "put", "m", "v" * 20)  # '"vvv..."': 22 bytes of JSON
    mem(svc, "put", "m", "v" * 2)  # a smaller value frees the difference
    assert _used(svc) == 64
    mem(svc, "delete", "m")
    assert _used(svc) == 60


def test_pruned_versions_leave_the_quota(tmp_path: Path, vectors: Any) -> None:
    svc = storage_service(Settings(data_dir=tmp_path, storage_quota_bytes=100, storage_max_versions=2), vectors)
    for _ in range(10):  # 2 versions of 40 kept: always within 100
        fs(svc, "write", "f.txt", "x" * 40)
    assert _used(svc) == 80
    with pytest.raises(QuotaExceeded):  # 80 - 40 pruned + 61
        fs(svc, "write", "f.txt", "x" * 61)
    fs(svc, "write", "f.txt", "")
    assert _used(svc) == 40


def test_a_database_from_before_the_quota_is_counted_once(tmp_path: Path, vectors: Any) -> None:
    svc = storage_service(Settings(data_dir=tmp_path, storage_quota_bytes=100), vectors)
    fs(svc, "write", "f.txt", "x" * 30)
    mem(svc, "put", "k", "y" * 28)  # 30 bytes of JSON
    db = svc._db("a1", create=True)
    db.execute("DROP TABLE usage")  # as a database made before the quota has it
    svc.close()
    svc = storage_service(Settings(data_dir=tmp_path, storage_quota_bytes=100), vectors)
    with pytest.raises(QuotaExceeded, match="60 of its 100 bytes"):
        fs(svc, "write", "g.txt", "z" * 41)
    assert _used(svc) == 60


def test_a_file_found_on_disk_counts_but_is_never_refused(tmp_path: Path, vectors: Any) -> None:
    svc = storage_service(Settings(data_dir=tmp_path, storage_quota_bytes=10), vectors)
    folder = tmp_path / "agents" / "a1" / "files"
    folder.mkdir(parents=True)
    (folder / "found.txt").write_text("f" * 20)
    read = svc.handle(StorageSyscall(agent_id="a1", op="read", path="found.txt", with_version=True))
    assert read["version"] == 1 and _used(svc) == 20
    with pytest.raises(QuotaExceeded):
        fs(svc, "write", "more.txt", "m")
    fs(svc, "delete", "found.txt")
    assert _used(svc) == 0


# -- the version cap ---------------------------------------------------------------------------------------


def test_only_the_newest_versions_are_kept_and_a_pruned_one_says_so(tmp_path: Path, vectors: Any) -> None:
    svc = storage_service(Settings(data_dir=tmp_path, storage_max_versions=3), vectors)
    times = []
    for i in range(1, 6):
        fs(svc, "write", "f.txt", f"v{i}")
        times.append(time.time())
        time.sleep(0.01)
    versions = svc.handle(StorageSyscall(agent_id="a1", op="versions", path="f.txt"))["versions"]
    assert [v["version"] for v in versions] == [3, 4, 5]
    with pytest.raises(NotFound, match=r"has no version 1 \(versions before 3 were pruned: at most 3 are kept, "
                                       r"AIOS_STORAGE_MAX_VERSIONS\); its versions are \[3, 4, 5\]"):
        svc.handle(StorageSyscall(agent_id="a1", op="rollback", path="f.txt", version=1))
    with pytest.raises(NotFound, match="were pruned"):  # the version current then is gone
        svc.handle(StorageSyscall(agent_id="a1", op="rollback", path="f.txt", at=times[0]))
    with pytest.raises(NotFound, match=r"has no version 9; its versions"):  # never written: not "pruned"
        svc.handle(StorageSyscall(agent_id="a1", op="rollback", path="f.txt", version=9))
    assert svc.handle(StorageSyscall(agent_id="a1", op="rollback", path="f.txt", version=4))["restored"] == 4
    assert fs(svc, "read", "f.txt")["content"] == "v4"  # type: ignore[index]
    # Version 3 was pruned by that rollback (itself a version); the version current after the 4th write is kept.
    assert svc.handle(StorageSyscall(agent_id="a1", op="rollback", path="f.txt", at=times[3]))["restored"] == 4
    assert fs(svc, "read", "f.txt")["content"] == "v4"  # type: ignore[index]
    versions = svc.handle(StorageSyscall(agent_id="a1", op="versions", path="f.txt"))["versions"]
    assert [v["version"] for v in versions] == [5, 6, 7]


# -- data at rest ------------------------------------------------------------------------------------------


def _loose(top: Path) -> list[str]:
    out = []
    for path in (top, *top.rglob("*")):
        mode = path.lstat().st_mode
        want = 0o700 if stat.S_ISDIR(mode) else 0o600
        if stat.S_IMODE(mode) != want:
            out.append(f"{path.relative_to(top)} {oct(stat.S_IMODE(mode))}")
    return out


def test_storage_files_are_private_whatever_the_umask(tmp_path: Path, vectors: Any) -> None:
    old = os.umask(0o022)
    try:
        svc = storage_service(Settings(data_dir=tmp_path / "data"), vectors)
        fs(svc, "write", "deep/er/f.txt", "x")
        mem(svc, "put", "k", "v")
        svc.handle(StorageSyscall(agent_id="a1", op="read", path="deep/er/f.txt", with_version=True))
    finally:
        os.umask(old)
    assert _loose(tmp_path / "data" / "agents") == []


def test_existing_storage_is_tightened(tmp_path: Path, vectors: Any) -> None:
    agents = tmp_path / "agents"
    (agents / "a1").mkdir(parents=True, mode=0o755)
    os.chmod(agents, 0o755)
    os.chmod(agents / "a1", 0o755)
    db = agents / "a1" / "memory.sqlite3"
    db.touch(mode=0o644)
    svc = storage_service(Settings(data_dir=tmp_path), vectors)
    mem(svc, "put", "k", "v")
    assert stat.S_IMODE(agents.stat().st_mode) == 0o700 and stat.S_IMODE(db.stat().st_mode) == 0o600


def test_the_vector_store_folder_is_private(tmp_path: Path) -> None:
    from aios.services.storage.vectors import VectorStore

    old = os.umask(0o022)
    try:
        store = VectorStore(str(tmp_path / "vectors" / "milvus.db"), 8)
    finally:
        os.umask(old)
    try:
        assert _loose(tmp_path / "vectors") == []
    finally:
        store.close()
