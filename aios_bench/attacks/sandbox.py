"""Attacks on the tool worker through its tools: the ``python`` sandbox, the calculator and tool results.

Mallory runs whatever code it likes in the ``python`` tool and picks every tool argument. Each attack checks
what it really got: the secret content (``root:`` of ``/etc/passwd``, a listing of ``/``), a signal the worker
accepted (signal 0: the permission check of a real signal, harmless if it passes), a result the worker stored.
``/etc/passwd`` is world-readable, so the sandbox's own uid does not protect it: only keeping the code inside its
scratch directory does. Signals to the worker are refused twice (the audit hook, and the uid where the worker is
root), so those attacks succeed only where both are gone.

The oversized-result attack needs ``AIOS_MAX_RESULT_BYTES`` below what the built-ins can return (the python tool's
two streams, 64 KB each, escaped as JSON: about 790 KB); ``tests/test_attacks.py`` gives its kernel
:data:`ARENA_MAX_RESULT_BYTES`.
"""

from __future__ import annotations

import time
from typing import Any

from aios.wire.errors import AIOSError, SyscallTimeout, ToolError
from aios_bench.attacks import Arena, Outcome, attack

ARENA_MAX_RESULT_BYTES = 256_000
"""The result limit the attack kernel is given, so that one built-in call can pass it."""
LARGEST_RESULT_BYTES = 700_000
"""About what one python call can return at most (both streams of control characters, each escaped to 6 bytes)."""

# A directory descriptor inside the scratch folder, and a current directory five levels below it: a relative
# path that stays inside the scratch folder from the current directory climbs to / from the descriptor.
_CLIMB = """
import os
os.makedirs('a/b/c/d/e', exist_ok=True)
top = os.open('.', os.O_RDONLY)
os.chdir('a/b/c/d/e')
"""


def _python(arena: Arena, code: str, timeout_s: float = 10) -> dict[str, Any]:
    result: dict[str, Any] = arena.attacker.call_tool("python", {"code": code, "timeout_s": timeout_s})
    return result


def _seen(result: dict[str, Any]) -> str:
    out = (result.get("stdout") or "").strip()
    err = (result.get("stderr") or "").strip().splitlines()
    return f"stdout {out[:160]!r}, stderr {err[-1][:200] if err else ''!r}"


@attack("sandbox-dir-fd-read", area="sandbox",
        claim="code in the python tool reads no file outside its scratch folder, through a directory "
              "descriptor (dir_fd) either")
def dir_fd_read(arena: Arena) -> Outcome:
    got = _python(arena, _CLIMB + "f = os.open('../../../../../etc/passwd', os.O_RDONLY, dir_fd=top)\n"
                                  "print(os.read(f, 4096).decode())")
    return Outcome(refused="root:" not in got["stdout"], saw=_seen(got))


@attack("sandbox-dir-fd-listdir", area="sandbox",
        claim="code in the python tool opens and lists no directory outside its scratch folder (os.open of a "
              "directory, os.listdir / os.scandir of its descriptor)")
def dir_fd_listdir(arena: Arena) -> Outcome:
    got = _python(arena, _CLIMB + "root = os.open('../../../../..', os.O_RDONLY, dir_fd=top)\n"
                                  "print(sorted(os.listdir(root)), [e.name for e in os.scandir(root)][:3])")
    listed = "'etc'" in got["stdout"] and "'proc'" in got["stdout"]
    return Outcome(refused=not listed, saw=_seen(got))


def _signal(arena: Arena, call: str) -> Outcome:
    """Signal 0 to the tool worker (the sandbox's parent) by ``call``; ``signalled`` if the kernel let it."""
    got = _python(arena, f"import os, signal\nworker = os.getppid()\n{call}\nprint('signalled', worker)")
    return Outcome(refused="signalled" not in got["stdout"], saw=_seen(got))


@attack("sandbox-kill-worker", area="sandbox", claim="code in the python tool cannot signal the tool worker (os.kill)")
def kill_worker(arena: Arena) -> Outcome:
    return _signal(arena, "os.kill(worker, 0)")


@attack("sandbox-killpg-worker", area="sandbox",
        claim="code in the python tool cannot signal the tool worker's process group (os.killpg)")
def killpg_worker(arena: Arena) -> Outcome:
    return _signal(arena, "os.killpg(os.getpgid(worker), 0)")


@attack("sandbox-pidfd-worker", area="sandbox",
        claim="code in the python tool cannot signal the tool worker through a process descriptor "
              "(os.pidfd_open, signal.pidfd_send_signal: no audit event of their own)")
def pidfd_worker(arena: Arena) -> Outcome:
    return _signal(arena, "signal.pidfd_send_signal(os.pidfd_open(worker), 0)")


@attack("sandbox-pidfd-fresh-module", area="sandbox",
        claim="code in the python tool cannot signal the tool worker through fresh copies of posix and _signal "
              "(_imp.create_builtin gets round the hook's replacements; the sandbox's own uid must refuse)")
def pidfd_fresh_module(arena: Arena) -> Outcome:
    return _signal(arena, "import _imp, importlib.machinery as m\n"
                          "p, s = (_imp.create_builtin(m.ModuleSpec(n, None)) for n in ('posix', '_signal'))\n"
                          "_imp.exec_builtin(p); _imp.exec_builtin(s)\n"
                          "s.pidfd_send_signal(p.pidfd_open(worker), 0)")


@attack("sandbox-hook-tamper", area="sandbox",
        claim="code in the python tool cannot change the audit hook's rules (reached through the frames of "
              "a refusal's traceback)")
def hook_tamper(arena: Arena) -> Outcome:
    """A refusal's traceback holds the hook's frames; their locals are the hook's sets and helper functions.
    Add /etc/passwd to every set and to every set in their closures, then read it."""
    code = """
import os
try:
    open('/etc/passwd')
except PermissionError as e:
    tb = e.__traceback__
changed = 0
while tb is not None:
    for value in list(tb.tb_frame.f_locals.values()):
        found = [value] + [c.cell_contents for c in (getattr(value, '__closure__', None) or ())]
        for v in found:
            if isinstance(v, set):
                v.add('/etc/passwd'); changed += 1
    tb = tb.tb_next
print(changed, open('/etc/passwd').read())
"""
    got = _python(arena, code)
    return Outcome(refused="root:" not in got["stdout"], saw=_seen(got))


@attack("sandbox-calculator-big-int", area="sandbox",
        claim="the calculator refuses numbers too large to compute quickly (it froze the tool worker's "
              "threads for 5 s, and turning the result into JSON for 90 s)")
def calculator_big_int(arena: Arena) -> Outcome:
    started = time.monotonic()
    try:
        got = arena.attacker.call_tool("calculator", {"expression": "9**4000000*9**4000000"}, timeout_s=20)
    except SyscallTimeout as exc:
        return Outcome(refused=False, saw=f"no answer in 20 s: the tool worker was busy computing ({exc.code})")
    except ToolError as exc:
        took = time.monotonic() - started
        return Outcome(refused=took < 2, saw=f"{exc.code} after {took:.2f} s: {exc.message[:200]}")
    return Outcome(refused=False, saw=f"a value came back after {time.monotonic() - started:.1f} s: "
                                      f"{str(got)[:80]}...")


@attack("sandbox-oversized-result", area="sandbox",
        claim="a tool result larger than AIOS_MAX_RESULT_BYTES is refused, never stored or replied")
def oversized_result(arena: Arena) -> Outcome:
    limit = arena.operator.tools.max_result_bytes
    if limit >= LARGEST_RESULT_BYTES:
        raise RuntimeError(f"AIOS_MAX_RESULT_BYTES is {limit}: no built-in returns that much; give the arena's "
                           f"kernel less (tests/test_attacks.py: {ARENA_MAX_RESULT_BYTES})")
    code = "import sys\nsys.stdout.write('\\x01' * 65536)\nsys.stderr.write('\\x02' * 65536)"
    try:
        got = _python(arena, code)
    except ToolError as exc:  # the refusal names the limit; a time-out or another failure proves nothing
        return Outcome(refused="AIOS_MAX_RESULT_BYTES" in exc.message, saw=f"{exc.code}: {exc.message[:200]}")
    except AIOSError as exc:
        return Outcome(refused=False, saw=f"no result and no refusal: {exc.code}: {exc.message[:200]}")
    size = len(str(got["stdout"])) + len(str(got["stderr"]))
    return Outcome(refused=False, saw=f"a result of {size} characters (about {6 * size} bytes of JSON) came back; "
                                      f"the limit is {limit}")
