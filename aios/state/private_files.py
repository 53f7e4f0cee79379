"""Files only the kernel's own user may read: folders 0700, files 0600, whatever the process umask.

The kernel keeps what agents must not read of each other (memory, files, their versions, vectors), and what no
agent may read at all (the embedded Redis's data, logs), in its data directory. A process umask of 022 (the usual
one) would make new folders 0755 and new files 0644: readable by every local user. The functions here set the
mode explicitly after creating (``chmod``), so it is the same under any umask, and tighten what already exists:

* :func:`private_dir` a folder (and the parents it makes), 0700;
* :func:`open_private` a file opened for writing, 0600 (never through a symlink);
* :func:`write_private` a whole file replaced atomically, 0600;
* :func:`private_tree` everything under a folder that a library wrote with its own modes, tightened.
"""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from pathlib import Path
from typing import IO, Any

DIR_MODE = 0o700
FILE_MODE = 0o600

_FLAGS = {"w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
          "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL}


def private_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` as a folder only its owner may enter: made if missing, with its missing parents (each 0700), and
    chmod 0700 if it existed. Parents that existed are left as they are. Returns it as a :class:`Path`."""
    path = Path(path)
    missing = []
    p = path
    while not p.is_dir() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:  # made meanwhile by another thread or process; or a file, which is an error
            if not d.is_dir():
                raise
        os.chmod(d, DIR_MODE)
    if not missing:
        os.chmod(path, DIR_MODE)
    return path


def open_private(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> IO[Any]:
    """``open(path, mode)`` for writing (``w``, ``a`` or ``x``, with ``b`` and ``+`` as usual), the file 0600:
    created so, or tightened if it existed. A symlink at ``path`` is refused (``OSError`` ELOOP), never followed.
    ``kwargs`` go to :func:`os.fdopen` (``encoding``, ``buffering``...)."""
    base = mode.replace("b", "").replace("+", "").replace("t", "")
    if base not in _FLAGS:
        raise ValueError(f"open_private opens files for writing ('w', 'a' or 'x'), not {mode!r}")
    flags = _FLAGS[base] | os.O_NOFOLLOW | os.O_CLOEXEC
    if "+" in mode:
        flags = (flags & ~os.O_WRONLY) | os.O_RDWR
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


def write_private(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Replace ``path`` with ``data`` (``str`` as UTF-8), 0600, atomically: readers see the old content or the
    new, and the new is on disk (fsync) when this returns. The folder must exist."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open_private(tmp, "xb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def private_tree(path: str | os.PathLike[str]) -> Path:
    """Tighten a folder and everything under it that another library made (folders 0700, files 0600); symlinks
    are neither followed nor changed, and entries removed meanwhile are skipped."""
    path = private_dir(path)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(os.path.join(root, name))
                if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
                    want = DIR_MODE if stat.S_ISDIR(st.st_mode) else FILE_MODE
                    if stat.S_IMODE(st.st_mode) != want:
                        os.chmod(os.path.join(root, name), want)
    return path
