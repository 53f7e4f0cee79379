"""The python tool's sandbox: escapes are tried and fail, each layer holds on its own, the worker keeps serving."""

from __future__ import annotations

import http.server
import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from aios.ops.embedded import LocalKernel
from aios.services.tools import sandbox
from aios.services.tools.sandbox import UID_BASE, UID_COUNT, processes_of, run_python, run_sandboxed
from aios.services.tools.service import ToolContext, builtin_registry
from aios.settings import Settings
from aios.wire.errors import ToolError
from tests.conftest import authorized, base_settings

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="the uid switch and the namespaces need a worker running as root")


def sandbox_processes() -> list[int]:
    """Every live process whose uid is in the sandbox range."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                uid = os.stat(f"/proc/{entry}").st_uid
            except FileNotFoundError:
                continue
            if UID_BASE <= uid < UID_BASE + UID_COUNT and processes_of(uid):
                found.append(int(entry))
    return found


@pytest.fixture(scope="module")
def http_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_ordinary_code_runs_and_may_use_its_scratch_folder(tmp_path: Path) -> None:
    code = ("print(sum(range(10)))\nimport json, pathlib\npathlib.Path('d').mkdir()\n"
            "open('d/f.txt', 'w').write('kept')\nprint(open('d/f.txt').read(), json.dumps(sorted(__import__('os').listdir('.'))))")
    assert run_python(code, scratch_dir=tmp_path) == {"stdout": "45\nkept [\"d\"]\n", "stderr": "", "exit_code": 0,
                                                      "timed_out": False}
    assert list(tmp_path.iterdir()) == []  # the scratch folder is gone


def test_errors_come_back_with_the_codes_traceback() -> None:
    got = run_python("def f():\n    return 1 / 0\nf()")
    assert got["exit_code"] == 1 and 'File "<sandbox>", line 2, in f' in got["stderr"]
    assert "return 1 / 0" in got["stderr"] and "ZeroDivisionError" in got["stderr"]
    assert run_python("import sys; sys.exit(3)")["exit_code"] == 3


def test_ordinary_file_work_still_runs() -> None:
    """Directory descriptors inside the scratch folder, fd-based walks and removals, temporary folders."""
    code = """
import os, pathlib, shutil, tempfile
os.makedirs('t/u/v'); pathlib.Path('t/u/v/f').touch(); open('t/g', 'w').write('g')
top = os.open('t', os.O_RDONLY)
print(sorted(os.listdir(top)), open(os.open('g', os.O_RDONLY, dir_fd=top)).read())
print([sorted(files) for _, _, files, _ in os.fwalk('t')])
with tempfile.TemporaryDirectory() as d:
    open(os.path.join(d, 'x'), 'w').write('x')
shutil.rmtree('t'); print(os.listdir('.'), os.path.exists(d))
"""
    got = run_python(code)
    assert got["stdout"] == "['g', 'u'] g\n[['g'], [], ['f']]\n[] False\n", got


# A directory descriptor inside the scratch folder and a current directory five levels below it: a relative path
# that stays inside the scratch folder from the current directory climbs to / from the descriptor.
CLIMB = "import os; os.makedirs('a/b/c/d/e'); top = os.open('.', os.O_RDONLY); os.chdir('a/b/c/d/e'); "
TAMPER = """
try:
    open('/etc/passwd')
except PermissionError as e:
    tb = e.__traceback__
while tb is not None:  # the hook's frames: a set found there would be the hook's own
    for v in list(tb.tb_frame.f_locals.values()):
        for x in [v] + [c.cell_contents for c in (getattr(v, '__closure__', None) or ())]:
            if isinstance(x, set):
                x.add('/etc/passwd')
    tb = tb.tb_next
print(open('/etc/passwd').read())
"""
SECRET = "/etc/shadow"
ESCAPES = {
    "read /etc/shadow": (f"print(open({SECRET!r}).read())", "opening of '/etc/shadow' is outside the scratch"),
    "list /root": ("import os; print(os.listdir('/root'))", "os.listdir of '/root' is outside the scratch"),
    "climb out with ..": ("print(open('../../../etc/passwd').read())", "a relative path may not contain '..'"),
    "climb out with absolute ..": ("import os; print(open(os.getcwd() + '/../../../etc/passwd').read())",
                                   "is outside the scratch directory"),
    "dir_fd climb": (CLIMB + "print(os.read(os.open('../../../../../etc/passwd', os.O_RDONLY, dir_fd=top), 99))",
                     "a relative path may not contain '..'"),
    "dir_fd unlink climb": (CLIMB + "os.unlink('../../../../../tmp/x', dir_fd=top)",
                            "a relative path may not contain '..'"),
    "open a directory": ("import os, sys; print(os.listdir(os.open(sys.path[0], os.O_RDONLY)))",
                         "opening the directory .* is not allowed outside the scratch"),
    "open / for a dir_fd": ("import os; print(os.open('etc/passwd', os.O_RDONLY, dir_fd=os.open('/', os.O_RDONLY)))",
                            "opening of '/' is outside the scratch"),
    "hook tamper": (TAMPER, "opening of '/etc/passwd' is outside the scratch"),
    "kill the worker": ("import os; os.kill(os.getppid(), 0)", "os.kill is not allowed"),
    "killpg the worker": ("import os; os.killpg(os.getpgid(os.getppid()), 0)", "os.killpg is not allowed"),
    "pthread_kill": ("import signal, threading; signal.pthread_kill(threading.get_ident(), 0)",
                     "signal.pthread_kill is not allowed"),
    "pidfd signal": ("import os, signal; signal.pidfd_send_signal(os.pidfd_open(os.getppid()), 0)",
                     "signalling processes is not allowed"),
    "prlimit the worker": ("import os, resource; resource.prlimit(os.getppid(), resource.RLIMIT_NOFILE, (0, 0))",
                           "resource.prlimit is not allowed"),
    "re-import posix": ("import sys; del sys.modules['posix']; import posix", "module posix is not available"),
    "sqlite attach": ("import sqlite3; sqlite3.connect(':memory:').execute(\"attach '/tmp/x.db' as x\")",
                      "module _sqlite3 is not available"),
    "symlink out": ("import os; os.symlink('/etc/shadow', 'x'); print(open('x').read())", "os.symlink is not allowed"),
    "write outside": ("open('/tmp/aios-escape-{tag}', 'w').write('x')", "opening for writing of '/tmp/aios-escape"),
    "chdir out": ("import os; os.chdir('/'); print(open('etc/shadow').read())", "os.chdir of '/' is outside"),
    "redis socket": ("import socket; socket.create_connection(('127.0.0.1', 6379), timeout=2)",
                     "socket.getaddrinfo is not allowed"),
    "http socket": ("import socket; s = socket.socket(); s.connect(('127.0.0.1', {port}))",
                    "socket.__new__ is not allowed"),
    "unix socket": ("import socket; s = socket.socket(socket.AF_UNIX); s.connect('/run/x.sock')",
                    "socket.connect is not allowed"),
    "subprocess": ("import subprocess; subprocess.run(['cat', '/etc/shadow'])", "subprocess.Popen is not allowed"),
    "os.system": ("import os; os.system('cat /etc/shadow')", "os.system is not allowed"),
    "fork bomb": ("import os\nwhile True: os.fork()", "os.fork is not allowed"),
    "threads": ("import threading; threading.Thread(target=print).start()", "can't start new thread"),
    "ctypes": ("import ctypes; ctypes.memmove(0, 0, 0)", "module ctypes is not available"),
    "gc introspection": ("import gc; gc.get_objects()", "gc.get_objects is not allowed"),
    "memory": ("x = bytearray(10**10)", "MemoryError"),
    "big file": ("open('f', 'wb').write(b'x' * (64 << 20))", "File too large"),
}


@pytest.mark.parametrize("name", list(ESCAPES))
def test_escapes_fail(name: str, http_port: int) -> None:
    tag = uuid.uuid4().hex
    code, expected = ESCAPES[name]
    got = run_python(code.replace("{tag}", tag).replace("{port}", str(http_port)), timeout_s=10)
    assert got["exit_code"] not in (0, None) and not got["timed_out"], got
    assert __import__("re").search(expected, got["stderr"]), got["stderr"]
    assert "root:" not in got["stdout"]
    assert not Path(f"/tmp/aios-escape-{tag}").exists()
    assert sandbox_processes() == []


def test_an_infinite_loop_is_killed_at_the_wall_clock_limit() -> None:
    started = time.monotonic()
    got = run_python("while True: pass", timeout_s=1.5)
    assert got["timed_out"] and got["exit_code"] is None and "wall-clock limit of 1.5 s" in got["stderr"]
    assert time.monotonic() - started < 3.5
    assert sandbox_processes() == []


def test_cpu_time_is_limited_apart_from_the_wall_clock() -> None:
    got = run_python("while True: pass", timeout_s=10, cpu_s=1)
    assert not got["timed_out"] and got["exit_code"] < 0 and "CPU limit of 1 s" in got["stderr"]


def test_output_is_cut() -> None:
    got = run_python("print('x' * 1_000_000)")
    assert len(got["stdout"]) < sandbox.MAX_OUTPUT_BYTES + 200 and "output cut at 65536 of 1000001 bytes" in got["stdout"]


@needs_root
def test_full_isolation_here() -> None:
    got = run_sandboxed("import os; print(os.getuid(), os.getgid(), os.getgroups())")
    assert got.isolation == {"netns": True, "mountns": True, "uid": got.isolation["uid"], "audit": True}
    uid = got.isolation["uid"]
    assert UID_BASE <= uid < UID_BASE + UID_COUNT and got.stdout == f"{uid} {uid} []\n"


@needs_root
@pytest.mark.parametrize(("code", "expected"), [
    (f"print(open({SECRET!r}).read())", "[Errno 13] Permission denied: '/etc/shadow'"),  # the uid
    ("import os; print(os.listdir('/root'))", "[Errno 13] Permission denied: '/root'"),
    ("import socket; socket.create_connection(('127.0.0.1', 6379), timeout=2)", "[Errno 101] Network is unreachable"),
    ("open('/tmp/aios-escape', 'w')", "[Errno 30] Read-only file system"),  # /tmp hidden in the mount namespace
    ("open('/var/tmp/aios-escape', 'w')", "[Errno 30] Read-only file system"),
    ("open('/dev/shm/aios-escape', 'w')", "[Errno 30] Read-only file system"),
    ("import os\nwhile True: os.fork()", "BlockingIOError: [Errno 11]"),  # RLIMIT_NPROC = 1
    ("import os; os.setuid(0)", "PermissionError: [Errno 1] Operation not permitted"),
    ("import os; os.kill(1, 9)", "PermissionError: [Errno 1] Operation not permitted"),
    ("import os; os.kill(os.getppid(), 0)", "PermissionError: [Errno 1] Operation not permitted"),  # the worker
    ("import os; os.killpg(os.getpgid(os.getppid()), 0)", "PermissionError: [Errno 1] Operation not permitted"),
])
def test_each_escape_also_fails_without_the_audit_hook(code: str, expected: str) -> None:
    got = run_sandboxed(code, audit_hook=False, timeout_s=10)
    assert got.exit_code == 1 and expected in got.stderr, got
    assert not got.isolation["audit"] and got.isolation["netns"] and got.isolation["mountns"]
    assert processes_of(got.isolation["uid"]) == []
    assert not Path("/tmp/aios-escape").exists()


def test_parallel_runs_are_apart() -> None:
    code = "import os; open('mine', 'w').write(str(os.getpid())); print(os.listdir('.'))"
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: run_sandboxed(code), range(3)))
    assert [r.stdout for r in results] == ["['mine']\n"] * 3
    if ROOT:
        assert len({r.isolation["uid"] for r in results}) == 3  # one uid each: no run can touch another


def test_without_its_own_uid_the_sandbox_refuses_unless_degraded_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "can_switch_uid", lambda: False)  # as in a worker that is not root
    with pytest.raises(ToolError, match=r"missing here: own uid.*as root with CAP_SYS_ADMIN.*AIOS_SANDBOX_DEGRADED=true"):
        run_python("print(1)")
    got = run_sandboxed("print(1)", allow_degraded=True)
    assert got.stdout == "1\n" and got.isolation["uid"] is None


@needs_root
def test_without_namespaces_the_sandbox_refuses_before_running_the_code(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w')"  # the audit hook would refuse it anyway: this shows nothing ran at all
    with pytest.raises(ToolError, match="missing here: network namespace, mount namespace"):
        run_sandboxed(code, namespaces=False, audit_hook=False)
    assert not marker.exists()
    # Allowed degraded: the code runs. (Not as a sandbox uid: without the mount namespace that uid may not be able
    # to read this interpreter's standard library, e.g. under /root.)
    monkeypatch.setattr(sandbox, "can_switch_uid", lambda: False)
    got = run_sandboxed("print(1)", namespaces=False, allow_degraded=True)
    assert got.stdout == "1\n" and got.isolation == {"netns": False, "mountns": False, "uid": None, "audit": True}


def tool_ctx(**settings: Any) -> ToolContext:
    return ToolContext(agent_id="tester", syscall_id="t1", settings=Settings(**settings))


def test_the_python_tool_runs_in_the_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = builtin_registry()
    assert reg.call("python", {"code": "print(6 * 7)"}, tool_ctx())["stdout"] == "42\n"
    got = reg.call("python", {"code": "import time; time.sleep(5)", "timeout_s": 0.5}, tool_ctx())
    assert got["timed_out"]
    monkeypatch.setattr(sandbox, "can_switch_uid", lambda: False)
    with pytest.raises(ToolError, match="AIOS_SANDBOX_DEGRADED"):
        reg.call("python", {"code": "print(1)"}, tool_ctx())
    assert reg.call("python", {"code": "print(1)"}, tool_ctx(sandbox_degraded=True))["stdout"] == "1\n"
    tool = reg.get("python")
    assert tool.timeout_s > sandbox.MAX_TIMEOUT_S and tool.max_concurrency and not tool.irreversible


@pytest.mark.integration
def test_through_a_real_kernel_the_worker_keeps_serving_after_escapes(tmp_path: Path) -> None:
    with LocalKernel(base_settings(tmp_path), resources=["tool", "storage"]) as lk:
        with authorized(lk.settings, "sandboxed") as k:
            assert k.call_tool("python", code="print(1)")["stdout"] == "1\n"
            escapes: list[dict[str, Any]] = [
                k.call_tool("python", code=f"print(open({SECRET!r}).read())"),
                k.call_tool("python", code="import os\nwhile True: os.fork()"),
                k.call_tool("python", code="x = bytearray(10**10)"),
                k.call_tool("python", {"code": "while True: pass", "timeout_s": 1}),
            ]
            assert [e["exit_code"] for e in escapes[:3]] == [1, 1, 1] and escapes[3]["timed_out"]
            assert k.call_tool("calculator", expression="1+1")["value"] == 2
            # The file tools and the storage worker share the data directory.
            k.call_tool("write_file", path="from-tool.txt", content="shared")
            assert k.read_file("from-tool.txt") == "shared"
        assert sandbox_processes() == []
