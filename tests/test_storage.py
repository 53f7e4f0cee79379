"""Unit tests of the storage worker's service: memory, files, path safety, concurrency, durability."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from aios.services.storage.service import TMP_PREFIX, StorageService
from aios.settings import Settings
from aios.wire.errors import AccessDenied, Conflict, InvalidSyscall, NotFound
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
    assert [v["version"] for v in versions] == list(range(1, 62))


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
