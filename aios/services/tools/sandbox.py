"""Run untrusted Python in a separate, locked-down process: the ``python`` tool's sandbox.

Four layers; ``tests/test_sandbox.py`` tries each escape with all of them and again without the audit hook:

1. **Own user.** When the worker is root, the child switches to a fresh unprivileged uid/gid picked per run
   (no supplementary groups, ``no_new_privs``), so it cannot read root-only files, cannot signal the worker or
   other sandboxes, and its processes can be found and killed by uid afterwards.
2. **rlimits.** Address space (memory), CPU seconds, file size, open files, no core dumps, and
   ``RLIMIT_NPROC = 1``: the process may not create a single thread or process, so a fork bomb ends at once.
3. **Namespaces.** A private network namespace (only a loopback that is down: no network at all) and a
   private mount namespace in which the scratch directory is a size-capped tmpfs, the world-writable
   ``/tmp``, ``/var/tmp``, ``/dev/shm`` and ``/run/lock`` are empty and read-only, and the standard library
   is bind-mounted read-only where the sandbox user can read it. Not root but user namespaces allowed: a
   network namespace only.
4. **Audit hook** (``sys.addaudithook``, which the code cannot remove): refuses opening files outside the
   scratch directory (the standard library excepted, read-only, but never a directory of it), listing or
   changing directories elsewhere, relative paths with ``..`` where a directory descriptor could be their base
   (so ``dir_fd`` reaches nothing outside the scratch directory), symlinks, sockets, ctypes, sqlite3 (its
   ``ATTACH`` opens files unaudited), fork/exec/subprocess, signals (``os.kill``, ``os.killpg``,
   ``pthread_kill``, pidfds, ``prlimit``), tracing and ``gc`` introspection. The hook is one function whose
   state is immutable, so its frames, which a refusal's traceback holds, offer nothing to rewrite. This is
   defence in depth on top of 1-3, not a jail: CPython was not designed to confine code by audit hooks.

The wall-clock limit kills the whole process group and every process of the sandbox uid. The scratch
directory is fresh for each run and removed afterwards. Without root, or without namespaces, only 2 and 4
(and a network namespace) remain: the sandbox then refuses to run, unless the operator allows that degraded
sandbox (``AIOS_SANDBOX_DEGRADED=true``, ``allow_degraded``), and then logs a warning naming what is missing.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aios.wire.errors import ToolError

log = logging.getLogger(__name__)

MEMORY_MB = 256  # address space: the interpreter needs ~30 MB, the rest is the code's
CPU_S = 10  # CPU seconds; the wall-clock limit is separate (a sleeping program uses no CPU)
TIMEOUT_S = 10.0  # default wall-clock limit
MAX_TIMEOUT_S = 30.0  # the python tool accepts at most this
DISK_MB = 64  # size of the scratch tmpfs (where there is one)
FILE_MB = 16  # RLIMIT_FSIZE: the largest file, stdout and stderr included
MAX_OUTPUT_BYTES = 64 * 1024  # returned per stream; the rest is cut
OPEN_FILES = 64
UID_BASE, UID_COUNT = 1_900_000_000, 100_000  # a range no distribution or systemd allocates (see UIDS-GIDS)
FALLBACK_UID = 65534  # nobody, where the range cannot be used (a user namespace that does not map it)

_uids_in_use: set[int] = set()
_uids_lock = threading.Lock()
_warned: set[str] = set()


@dataclass
class SandboxResult:
    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool
    isolation: dict[str, Any] = field(default_factory=dict)
    """What the child achieved: ``netns``, ``mountns``, ``uid``, ``audit`` (see the module docstring)."""

    def as_tool_result(self) -> dict[str, Any]:
        return {"stdout": self.stdout, "stderr": self.stderr, "exit_code": self.exit_code,
                "timed_out": self.timed_out}


def run_python(code: str, *, timeout_s: float = TIMEOUT_S, memory_mb: int = MEMORY_MB, cpu_s: int = CPU_S,
               scratch_dir: str | Path | None = None, allow_degraded: bool = False) -> dict[str, Any]:
    """Run ``code`` in the sandbox; ``{"stdout", "stderr", "exit_code", "timed_out"}``.

    ``scratch_dir`` is where the fresh per-run scratch directory is made (default: the system temp dir).
    Without its own uid and namespaces it refuses with a :class:`ToolError` saying what the worker needs, unless
    ``allow_degraded`` (the python tool passes ``AIOS_SANDBOX_DEGRADED``).
    """
    return run_sandboxed(code, timeout_s=timeout_s, memory_mb=memory_mb, cpu_s=cpu_s, scratch_dir=scratch_dir,
                         allow_degraded=allow_degraded).as_tool_result()


def can_switch_uid() -> bool:
    """Whether this process may run the code as a fresh uid of its own (it is root)."""
    return os.geteuid() == 0


def missing_layers(isolation: dict[str, Any]) -> list[str]:
    """The layers a run's isolation report lacks, in words (empty: all of them)."""
    missing = [] if isolation.get("uid") is not None else ["own uid"]
    return missing + [f"{k} namespace" for k, key in (("network", "netns"), ("mount", "mountns"))
                      if not isolation.get(key)]


def refusal(missing: list[str]) -> ToolError:
    return ToolError(
        f"the python sandbox does not run without its own uid and namespaces (missing here: "
        f"{', '.join(missing)}). Run the tool worker as root with CAP_SYS_ADMIN, as compose.yaml does (it drops "
        f"to a fresh uid for each run, in private network and mount namespaces), or, knowing that the audit hook "
        f"and rlimits alone do not stop a determined attacker, set AIOS_SANDBOX_DEGRADED=true (docs/security.md)")


def run_sandboxed(code: str, *, timeout_s: float = TIMEOUT_S, memory_mb: int = MEMORY_MB, cpu_s: int = CPU_S,
                  scratch_dir: str | Path | None = None, allow_degraded: bool = False, audit_hook: bool = True,
                  namespaces: bool = True) -> SandboxResult:
    """:func:`run_python` with the isolation report. ``audit_hook=False`` and ``namespaces=False`` only let tests
    try the other layers alone, and the refusal of a sandbox that lacks some."""
    if not allow_degraded and not can_switch_uid():
        raise refusal(["own uid", "mount namespace"])  # both need root; nothing is started
    base = tempfile.mkdtemp(prefix="aios-sandbox-", dir=scratch_dir)
    os.chmod(base, 0o711)  # the sandbox user must be able to pass through to its work folder
    uid = _take_uid() if can_switch_uid() else None
    work = os.path.join(base, "work")
    config = {"code": code, "base": base, "uid": uid, "fallback_uid": FALLBACK_UID, "memory_mb": memory_mb,
              "cpu_s": max(1, int(cpu_s)), "file_mb": FILE_MB, "disk_mb": DISK_MB, "open_files": OPEN_FILES,
              "ppid": os.getpid(), "audit": audit_hook, "namespaces": namespaces, "require_all": not allow_degraded}
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": work, "TMPDIR": work}
    status_r, status_w = os.pipe()
    timed_out, isolation, proc = False, {}, None
    try:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                # No preexec_fn: the worker is multi-threaded, so everything privileged happens in the child's own
                # interpreter (the bootstrap), after exec. -I: no environment, no user site; -S: no site-packages.
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-B", "-X", "utf8", "-c", _BOOTSTRAP, str(status_w)],
                    stdin=subprocess.PIPE, stdout=out, stderr=err, env=env, cwd=base,
                    start_new_session=True, pass_fds=(status_w,))
            finally:
                os.close(status_w)
            try:  # on stdin, not argv: no size limit, and the code stays out of `ps` for other users
                assert proc.stdin is not None
                proc.stdin.write(json.dumps(config).encode())
                proc.stdin.close()
            except BrokenPipeError:  # the child died first; its exit status says why
                pass
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc.pid)  # before reaping, so the group id cannot have been reused
                proc.wait()
            isolation = _read_status(status_r)
            if uid is not None and isolation.get("uid") == uid:  # the uid is this run's alone: kill what it left
                _kill_uid(uid)
            stdout, stderr = _read_capped(out), _read_capped(err)
    finally:
        if proc is not None and proc.poll() is None:  # interrupted: never leave the child running
            _kill_group(proc.pid)
            proc.wait()
        os.close(status_r)
        if uid is not None:
            _release_uid(uid)
        shutil.rmtree(base, ignore_errors=True)
    code_ = proc.returncode
    if code_ == 74 and not allow_degraded and missing_layers(isolation):
        raise refusal(missing_layers(isolation))  # the child stopped before running the code
    if timed_out:
        stderr += f"\n[sandbox: killed after the wall-clock limit of {timeout_s:g} s]"
    elif code_ == -signal.SIGXCPU:
        stderr += f"\n[sandbox: killed after the CPU limit of {config['cpu_s']} s]"
    elif code_ == -signal.SIGKILL:
        stderr += "\n[sandbox: killed by SIGKILL (the hard CPU limit, or out of memory)]"
    _warn_if_degraded(isolation)
    return SandboxResult(stdout, stderr, None if timed_out else code_, timed_out, isolation)


def _take_uid() -> int:
    with _uids_lock:
        while True:
            uid = UID_BASE + secrets.randbelow(UID_COUNT)  # random: other worker processes pick from the range too
            if uid not in _uids_in_use:
                _uids_in_use.add(uid)
                return uid


def _release_uid(uid: int) -> None:
    with _uids_lock:
        _uids_in_use.discard(uid)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def processes_of(uid: int) -> list[int]:
    """Live (non-zombie) processes whose real uid is ``uid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:  # exited while we looked
            continue
        if int(fields.get("Uid", "-1").split()[0]) == uid and not fields.get("State", "").strip().startswith("Z"):
            pids.append(int(entry))
    return pids


def _kill_uid(uid: int) -> None:
    # RLIMIT_NPROC=1 means there should be none; this catches anything that got out of the process group.
    for _ in range(50):
        pids = processes_of(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)
    log.error("sandbox uid %d still has processes after 50 rounds of SIGKILL", uid)


def _read_status(fd: int) -> dict[str, Any]:
    try:
        data = os.read(fd, 65536)
        return dict(json.loads(data)) if data else {}
    except (OSError, ValueError):
        return {}


def _read_capped(f: Any) -> str:
    f.seek(0)
    data = f.read(MAX_OUTPUT_BYTES + 1)
    text: str = data[:MAX_OUTPUT_BYTES].decode("utf-8", errors="replace")
    if len(data) > MAX_OUTPUT_BYTES:
        f.seek(0, os.SEEK_END)
        text += f"\n[sandbox: output cut at {MAX_OUTPUT_BYTES} of {f.tell()} bytes]"
    return text


def _warn_if_degraded(isolation: dict[str, Any]) -> None:
    missing = missing_layers(isolation)
    key = ", ".join(missing)
    if missing and isolation and key not in _warned:
        _warned.add(key)
        log.warning("python sandbox runs degraded (AIOS_SANDBOX_DEGRADED), without: %s (all layers need a worker "
                    "running as root with CAP_SYS_ADMIN); the audit hook and rlimits still apply", key)


# The child's first code, run as root (when the worker is) in a fresh interpreter: namespaces, mounts, rlimits,
# then the switch to the sandbox user, the audit hook, and only then the untrusted code.
_BOOTSTRAP = r'''
import builtins, ctypes, json, linecache, os, resource, signal, sys, traceback
cfg = json.loads(sys.stdin.buffer.read()); status_fd = int(sys.argv[1]); sys.argv = ["<sandbox>"]
null = os.open("/dev/null", os.O_RDONLY); os.dup2(null, 0); os.close(null)  # the code reads an empty stdin
st = {"netns": False, "mountns": False, "uid": None, "audit": False}
libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
def mount(src, dst, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    if libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)) != 0:
        raise OSError(ctypes.get_errno(), "mount " + dst)
base = cfg["base"]; work = os.path.join(base, "work")
ro = [os.path.realpath(p) for p in sys.path if os.path.isdir(p)]
root = os.geteuid() == 0
if root and cfg["namespaces"] and libc.unshare(0x20000 | 0x40000000) == 0:  # CLONE_NEWNS | CLONE_NEWNET
    st["netns"] = True
    try:
        mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing mounted here propagates to the host
        for d in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock"):  # world-writable: hidden, read-only and empty
            if os.path.isdir(d) and not os.path.islink(d):
                mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
                if (base + "/").startswith(d + "/"):
                    os.makedirs(base, 0o711)
                mount(None, d, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
        mount("tmpfs", base, "tmpfs", MS_NOSUID | MS_NODEV, "size=%dm,mode=0711" % cfg["disk_mb"])
        moved = {}
        for i, d in enumerate(ro):  # the standard library, where the sandbox user can read it
            t = os.path.join(base, "lib%d" % i); os.mkdir(t, 0o755)
            mount(d, t, None, MS_BIND | MS_REC)
            mount(None, t, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
            moved[d] = t
        sys.path[:] = [moved[d] for d in ro]
        for m in list(sys.modules.values()):  # packages already imported look for submodules on the new paths
            p = getattr(m, "__path__", None)
            if isinstance(p, list):
                p[:] = [next((moved[d] + q[len(d):] for d in ro if q == d or q.startswith(d + "/")), q) for q in p]
        sys.path_importer_cache.clear()
        ro += list(moved.values())
        st["mountns"] = True
    except OSError as exc:
        sys.stderr.write("[sandbox: mount namespace unusable: %s]\n" % exc)
        os._exit(71)
elif not root and cfg["namespaces"] and libc.unshare(0x10000000 | 0x40000000) == 0:  # CLONE_NEWUSER | NEWNET
    st["netns"] = True
os.mkdir(work, 0o700)
uid = cfg["uid"]
if uid is not None:
    os.chown(work, uid, uid)
os.chdir(work)
MB = 1 << 20
for lim, val in ((resource.RLIMIT_AS, cfg["memory_mb"] * MB), (resource.RLIMIT_CPU, (cfg["cpu_s"], cfg["cpu_s"] + 1)),
                 (resource.RLIMIT_FSIZE, cfg["file_mb"] * MB), (resource.RLIMIT_NOFILE, cfg["open_files"]),
                 (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, 1)):
    resource.setrlimit(lim, val if isinstance(val, tuple) else (val, val))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write fails with EFBIG instead of killing
libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: no set-uid binary can hand privileges back
if uid is not None:
    os.setgroups([])
    try:
        os.setgid(uid); os.setuid(uid)
    except OSError:  # a user namespace that does not map the range: nobody, and no sweep by uid afterwards
        uid = cfg["fallback_uid"]; os.chown(work, uid, uid); os.setgid(uid); os.setuid(uid)
    try:
        os.setuid(0)
        os._exit(72)  # privileges came back: refuse to run anything
    except PermissionError:
        pass
    st["uid"] = uid
libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG after the uid change (which clears it)
if os.getppid() != cfg["ppid"]:
    os._exit(73)
if cfg["require_all"] and not (st["netns"] and st["mountns"] and st["uid"] is not None):
    os.write(status_fd, json.dumps(st).encode())
    os._exit(74)  # layers missing and no degraded sandbox allowed: the parent says which, and what to do
RW = os.path.realpath(work)
del libc, mount, ctypes
for name in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
    del sys.modules[name]  # ctypes.memmove raises no audit event; re-importing ctypes is refused below
import _posixsubprocess  # its fork_exec raises no audit event: replace it (re-importing it is refused below)
def _no_fork_exec(*args, **kwargs):
    raise PermissionError("sandbox: starting processes is not allowed")
_posixsubprocess.fork_exec = _no_fork_exec

import _signal, posix  # pidfd_open and pidfd_send_signal raise no audit event: replace them too
def _no_signals(*args, **kwargs):
    raise PermissionError("sandbox: signalling processes is not allowed")
for _mod, _name in ((os, "pidfd_open"), (posix, "pidfd_open"), (signal, "pidfd_send_signal"),
                    (_signal, "pidfd_send_signal")):
    if hasattr(_mod, _name):
        setattr(_mod, _name, _no_signals)

def _make_hook(rw, ro):
    # One function, no closure: everything it uses is a default argument, bound now, and immutable (frozensets,
    # tuples, str, builtins). A refusal's traceback holds the hook's frame, and the code can read that frame's
    # locals; it must find nothing there to change (a set to add a path to, a helper whose closure to rebind).
    # Neither can it rebind module attributes or builtins the hook would look up: it looks up none.
    def hook(event, args, rw=rw, ro=ro, cwd=os.getcwd, lstat=os.lstat, readlink=os.readlink, str_=str,
             bytes_=bytes, int_=int, type_=type, Denied=PermissionError, OSError_=OSError,
             deny=frozenset({"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
                             "subprocess.Popen", "os.symlink", "os.link", "sys.settrace", "sys.setprofile",
                             "gc.get_objects", "gc.get_referrers", "gc.get_referents", "os.chroot",
                             "sys._current_frames", "os.kill", "os.killpg", "signal.pthread_kill",
                             "resource.prlimit"}),
             deny_imports=frozenset({"ctypes", "_ctypes", "_posixsubprocess", "posix", "_signal", "_sqlite3"}),
             path_events=frozenset({"os.listdir", "os.scandir", "os.mkdir", "os.rmdir", "os.remove", "os.rename",
                                    "os.chmod", "os.chown", "os.truncate", "os.utime", "os.mkfifo", "os.mknod",
                                    "os.setxattr", "os.removexattr", "os.getxattr", "os.listxattr", "os.chflags",
                                    "os.lchflags", "os.chdir", "shutil.rmtree"}),
             readers=frozenset({"os.listdir", "os.scandir", "os.getxattr", "os.listxattr"}),
             no_dir_fd=frozenset({"os.listdir", "os.scandir", "os.chdir"}),
             devices=frozenset({"/dev/null", "/dev/urandom"})):
        if event == "socket.__new__" and args[1] == 1:  # AF_UNIX: socketpair() for asyncio; connect/bind refused
            return
        if event in deny or event.startswith("socket.") or event.startswith("ctypes."):
            raise Denied("sandbox: %s is not allowed (no processes, signals, network or native calls)" % event)
        if event == "import":
            if args[0] in deny_imports:
                raise Denied("sandbox: module %s is not available" % args[0])
            return
        if event == "open":
            path, mode, flags = (args + (None, None))[:3]
            write = (type_(mode) is str_ and ("w" in mode or "a" in mode or "x" in mode or "+" in mode)) or \
                    (type_(flags) is int_ and flags & 0o3103 != 0)  # O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND
            paths, what = (path,), "opening" + (" for writing" if write else "")
        elif event in path_events:
            paths, write, what = (args[:2] if event == "os.rename" else args[:1]), event not in readers, event
        else:
            return
        for path in paths:
            if path is None:
                path = "."
            if type_(path) is int_:
                # A descriptor: opened through this hook, so a directory's is inside the scratch directory.
                if event == "os.chdir":
                    raise Denied("sandbox: fchdir is not allowed")
                continue
            p = path.decode("utf-8", "surrogateescape") if type_(path) is bytes_ else path
            if type_(p) is not str_:
                raise Denied("sandbox: pass file paths as str")
            if not p.startswith("/"):
                # The "open" event does not say whether a dir_fd was given, so a relative path is resolved here
                # against the current directory. That is right for every directory descriptor the code can hold
                # (all inside the scratch directory, see below) as long as the path cannot climb out of one.
                if event not in no_dir_fd and ".." in p.split("/"):
                    raise Denied("sandbox: %s of %r: a relative path may not contain '..' (it could climb out "
                                 "of a directory descriptor); give an absolute path" % (what, path))
                p = cwd() + "/" + p
            todo, out, hops = p.split("/")[::-1], [], 0  # resolve '..' and every symlink, as the kernel will
            while todo:
                name = todo.pop()
                if name == "" or name == ".":
                    continue
                if name == "..":
                    if out:
                        out.pop()
                    continue
                cur = "/" + "/".join(out + [name])
                try:
                    st_mode = lstat(cur).st_mode
                except OSError_:
                    out.append(name)
                    continue
                if st_mode & 0o170000 == 0o120000:
                    hops += 1
                    if hops > 40:
                        raise Denied("sandbox: too many symlinks")
                    target = readlink(cur)
                    if target.startswith("/"):
                        out = []
                    todo.extend(target.split("/")[::-1])
                else:
                    out.append(name)
            real = "/" + "/".join(out)
            if real == rw or real.startswith(rw + "/"):
                continue
            allowed = not write and real in devices
            if not write and "/site-packages" not in real and "/dist-packages" not in real:
                for r in ro:
                    if real == r or real.startswith(r + "/"):
                        allowed = True
            if allowed and event == "open":
                try:
                    is_dir = lstat(real).st_mode & 0o170000 == 0o040000
                except OSError_:
                    is_dir = False
                if is_dir:  # no directory descriptor outside the scratch directory: nothing to climb from
                    raise Denied("sandbox: opening the directory %r is not allowed outside the scratch "
                                 "directory %s" % (path, rw))
            if not allowed:
                raise Denied("sandbox: %s of %r is outside the scratch directory %s" % (what, path, rw))
    return hook

if cfg["audit"]:
    sys.addaudithook(_make_hook(RW, tuple(ro)))
    st["audit"] = True
code = cfg["code"]; del cfg
os.write(status_fd, json.dumps(st).encode()); os.close(status_fd)
linecache.cache["<sandbox>"] = (len(code), None, code.splitlines(True), "<sandbox>")  # source lines in tracebacks
main = type(sys)("__main__"); sys.modules["__main__"] = main  # the code's own module, not this bootstrap's
try:
    exec(compile(code, "<sandbox>", "exec"), main.__dict__)
except SystemExit:
    raise
except BaseException as exc:
    traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)  # tb_next: not this bootstrap's frame
    sys.exit(1)
'''
