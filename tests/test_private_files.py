"""aios.state.private_files: folders 0700 and files 0600 whatever the umask, existing ones tightened."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from aios.state.private_files import open_private, private_dir, private_tree, write_private


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture(params=[0o000, 0o022, 0o277], ids=["umask000", "umask022", "umask277"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_private_dir_makes_parents_and_tightens_the_leaf(tmp_path: Path, umask: int) -> None:
    assert private_dir(tmp_path / "a" / "b" / "c") == tmp_path / "a" / "b" / "c"
    assert [mode(tmp_path / p) for p in ("a", "a/b", "a/b/c")] == [0o700] * 3
    os.chmod(tmp_path / "a" / "b" / "c", 0o755)
    private_dir(str(tmp_path / "a" / "b" / "c"))
    assert mode(tmp_path / "a" / "b" / "c") == 0o700
    os.chmod(tmp_path / "a", 0o755)
    private_dir(tmp_path / "a" / "b")  # an existing parent is the caller's: left alone
    assert mode(tmp_path / "a") == 0o755
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError):
        private_dir(tmp_path / "file")


def test_open_private_creates_and_tightens(tmp_path: Path, umask: int) -> None:
    with open_private(tmp_path / "log", "a", encoding="utf-8") as f:
        f.write("one\n")
    assert mode(tmp_path / "log") == 0o600
    os.chmod(tmp_path / "log", 0o644)
    with open_private(tmp_path / "log", "ab") as f:
        f.write(b"two\n")
    assert mode(tmp_path / "log") == 0o600 and (tmp_path / "log").read_text() == "one\ntwo\n"
    with open_private(tmp_path / "log", "w+") as f:
        f.write("new")
        f.seek(0)
        assert f.read() == "new"
    with pytest.raises(FileExistsError):
        open_private(tmp_path / "log", "x")
    with pytest.raises(ValueError, match="for writing"):
        open_private(tmp_path / "log", "r")


def test_open_private_never_follows_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "target").write_text("keep")
    os.chmod(tmp_path / "target", 0o644)
    os.symlink(tmp_path / "target", tmp_path / "link")
    with pytest.raises(OSError):
        open_private(tmp_path / "link", "w")
    assert (tmp_path / "target").read_text() == "keep" and mode(tmp_path / "target") == 0o644


def test_write_private_replaces_atomically(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "kernel.json"
    target.write_text("old")
    os.chmod(target, 0o644)
    write_private(target, '{"new": true}')
    assert target.read_text() == '{"new": true}' and mode(target) == 0o600
    write_private(target, b"bytes")
    assert target.read_bytes() == b"bytes" and os.listdir(tmp_path) == ["kernel.json"]


def test_private_tree_tightens_what_a_library_wrote(tmp_path: Path) -> None:
    (tmp_path / "db" / "seg").mkdir(parents=True, mode=0o755)
    (tmp_path / "db" / "seg" / "data").write_text("x")
    os.chmod(tmp_path / "db" / "seg" / "data", 0o644)
    (tmp_path / "outside").write_text("not the store's")
    os.chmod(tmp_path / "outside", 0o644)
    os.symlink(tmp_path / "outside", tmp_path / "db" / "link")
    private_tree(tmp_path / "db")
    assert [mode(tmp_path / "db" / p) for p in ("", "seg", "seg/data")] == [0o700, 0o700, 0o600]
    assert mode(tmp_path / "outside") == 0o644  # a symlink's target is not touched
