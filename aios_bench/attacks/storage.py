"""Attacks on the storage worker (files and memory), as agent ``mallory`` can make them through the SDK.

Each tests one claim of docs/security.md ("Storage"). The quota attack fills mallory's quota, so it reads the
kernel's ``AIOS_STORAGE_QUOTA_BYTES`` and ``AIOS_MAX_PAYLOAD_BYTES``: it needs a quota of at most
:data:`MAX_FILL_WRITES` syscalls' worth (the tests' kernels have 4 MB, tests/conftest.py ``base_settings``), and
it gives the space back afterwards (it overwrites its fill with empty versions until the big ones are pruned:
no delete, so no approval needed), so that attacks after it still have room.
"""

from __future__ import annotations

import stat
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aios.wire.errors import AccessDenied, AIOSError, NotFound, QuotaExceeded
from aios_bench.attacks import Arena, Outcome, attack

MAX_FILL_WRITES = 64
"""The most fill writes the quota attack makes before it gives up (a quota that large cannot be tested here)."""
PAYLOAD_SLACK = 4096
"""Bytes of a syscall's JSON that are not the content (fields, signature)."""

NFC_NAME = unicodedata.normalize("NFC", "notes/café.txt")
NFD_NAME = unicodedata.normalize("NFD", "notes/café.txt")


@attack("storage-nfd-duplicate", area="storage",
        claim="a path names one file however its Unicode is composed (paths are normalised to NFC)")
def nfd_duplicate(arena: Arena) -> Outcome:
    """Write 'café' composed (NFC), then decomposed (NFD): two files that look alike would let mallory show one
    in a listing (or an approval) and keep another."""
    k = arena.attacker
    assert NFC_NAME != NFD_NAME
    k.write_file(NFC_NAME, "what the operator approved")
    k.write_file(NFD_NAME, "what mallory keeps")
    entries = [e["name"] for e in k.list_files("notes")["entries"]
               if unicodedata.normalize("NFC", e["name"]) == "café.txt"]
    seen = {k.read_file(NFC_NAME), k.read_file(NFD_NAME)}
    versions = len(k.file_versions(NFC_NAME))
    saw = f"listing {[ascii(n) for n in entries]}, contents {sorted(seen)}, {versions} version(s)"
    return Outcome(refused=len(entries) == 1 and seen == {"what mallory keeps"} and versions == 2, saw=saw)


@attack("storage-path-traversal", area="storage",
        claim="a path never leaves the agent's own folder ('..', absolute paths, NUL, backslashes refused)")
def path_traversal(arena: Arena) -> Outcome:
    """Reach alice's folder (``agents/alice/files``) from mallory's through the path itself."""
    secret = "alice's diary: the launch is on Tuesday"
    arena.victim.write_file("private/diary.txt", secret)
    k = arena.attacker
    tries = ["../../alice/files/private/diary.txt", "../alice/files/private/diary.txt",
             "notes/../../../alice/files/private/diary.txt", "/etc/passwd", "..\\..\\alice\\files\\private\\diary.txt",
             "private\x00/../../../alice/files/private/diary.txt"]
    leaked, answers = [], []
    for path in tries:
        for op in ("read", "write", "list"):
            try:
                if op == "read":
                    got: Any = k.read_file(path)
                elif op == "write":
                    got = k.write_file(path.replace("diary.txt", "planted.txt"), "planted by mallory")
                else:
                    got = k.list_files(path.rsplit("/", 1)[0])
                leaked.append(f"{op} {path!r}: {str(got)[:80]}")
            except AccessDenied as exc:
                answers.append(exc.message)
            except AIOSError as exc:  # refused, but not as an escape: still no access
                answers.append(f"{exc.code}: {exc.message}")
    planted = [e["name"] for e in arena.victim.list_files("private")["entries"] if e["name"] != "diary.txt"]
    intact = arena.victim.read_file("private/diary.txt") == secret
    refused = not leaked and not planted and intact and not any(secret in a for a in answers)
    saw = "; ".join(leaked) if leaked else f"{len(answers)} refusals, e.g. {answers[0]!r}"
    return Outcome(refused=refused, saw=saw + (f"; planted in alice's folder: {planted}" if planted else ""))


@attack("storage-read-without-grant", area="storage",
        claim="another agent's files and memory need its grant (read, list, versions, search, memory get)")
def read_without_grant(arena: Arena) -> Outcome:
    secret = "alice's password is hunter2"
    arena.victim.write_file("grantless/secret.txt", secret)
    arena.victim.memory_put("grantless-secret", secret)
    k = arena.attacker
    probes: dict[str, Callable[[], Any]] = {
        "read_file": lambda: k.read_file("grantless/secret.txt", owner="alice"),
        "list_files": lambda: k.list_files("grantless", owner="alice"),
        "file_versions": lambda: k.file_versions("grantless/secret.txt", owner="alice"),
        "retrieve_file": lambda: k.retrieve_file("password", owner="alice"),
        "memory_get": lambda: k.memory_get("grantless-secret", owner="alice"),
        "memory_list": lambda: k.memory_list(owner="alice"),
    }
    got, refusals = [], []
    for name, probe in probes.items():
        try:
            got.append(f"{name}: {str(probe())[:80]}")
        except AccessDenied as exc:
            refusals.append(f"{name}: {exc.message}")
    return Outcome(refused=not got, saw="; ".join(got) if got else refusals[0])


@attack("storage-unbounded-versions", area="storage",
        claim="a file keeps at most AIOS_STORAGE_MAX_VERSIONS versions; a pruned one is refused by name")
def unbounded_versions(arena: Arena) -> Outcome:
    """Write N + 5 versions of one file: every one kept would grow the agent's data without bound."""
    cap = arena.operator.storage.max_versions
    k = arena.attacker
    for i in range(cap + 5):
        k.write_file("history/log.txt", f"entry {i}")
    kept = [v["version"] for v in k.file_versions("history/log.txt")]
    try:
        k.rollback_file("history/log.txt", 1)
        oldest = "rollback to version 1 succeeded"
        pruned_refused = False
    except NotFound as exc:
        oldest, pruned_refused = exc.message, "pruned" in exc.message
    newest_ok = k.read_file("history/log.txt") == f"entry {cap + 4}"
    refused = len(kept) <= cap and kept[-1] == cap + 5 and pruned_refused and newest_ok
    return Outcome(refused=refused, saw=f"{len(kept)} versions kept of {cap + 5} written (cap {cap}); "
                                        f"version 1: {oldest}")


@attack("storage-quota-overrun", area="storage",
        claim="an agent's files (every kept version) and memory values stay within AIOS_STORAGE_QUOTA_BYTES; "
              "a write past it is refused and loses nothing stored")
def quota_overrun(arena: Arena) -> Outcome:
    quota = arena.operator.storage.quota_bytes
    chunk = min(arena.attacker_settings.syscalls.max_payload_bytes - PAYLOAD_SLACK, quota)
    cap = arena.operator.storage.max_versions
    k = arena.attacker
    kept = "mallory's earlier work"
    k.write_file("quota/kept.txt", kept)
    written, files, refusal = len(kept), set(), None
    try:
        for i in range(MAX_FILL_WRITES):
            if written > quota:
                break
            path = f"quota/fill-{i // cap}.txt"  # a new file every `cap` versions: pruning never frees the fill
            files.add(path)
            k.write_file(path, str(i % 10) * chunk)
            written += chunk
    except QuotaExceeded as exc:
        refusal = exc.message
    memory_refused = False
    if refusal is not None:  # full: memory values count against the same quota
        try:
            k.memory_put("quota-fill", "m" * chunk)
        except QuotaExceeded:
            memory_refused = True
    intact = k.read_file("quota/kept.txt") == kept
    for path in sorted(files):  # give the space back: empty versions push the big ones out
        for _ in range(cap):
            k.write_file(path, "")
    if refusal is None:
        saw = (f"wrote {written} bytes past a quota of {quota}" if written > quota
               else f"the quota ({quota} bytes) is too large to fill in {MAX_FILL_WRITES} writes of {chunk}")
        return Outcome(refused=False, saw=saw)
    return Outcome(refused=intact and memory_refused and written <= quota + chunk,
                   saw=f"refused after {written} bytes: {refusal}" + ("" if memory_refused else
                                                                     "; a memory value past it was stored")
                   + ("" if intact else "; earlier data was lost"))


@attack("storage-readable-at-rest", area="storage",
        claim="the storage worker's files (agents' folders, SQLite, Milvus Lite) are 0700 folders and 0600 files")
def readable_at_rest(arena: Arena) -> Outcome:
    """Another local user reading the data directory: checked by looking at the modes (the operator's view)."""
    arena.attacker.write_file("at-rest/x.txt", "on disk")
    arena.attacker.memory_put("at-rest", "on disk")
    vectors = Path(arena.operator.vector_uri())
    loose = []
    for top in (arena.workdir / "agents", vectors.parent if vectors.exists() else None):
        for path in () if top is None else (top, *top.rglob("*")):
            try:
                mode = path.lstat().st_mode
            except FileNotFoundError:  # Milvus Lite replaced a segment meanwhile
                continue
            if not stat.S_ISLNK(mode) and stat.S_IMODE(mode) & 0o077:
                loose.append(f"{path.relative_to(arena.workdir)} {oct(stat.S_IMODE(mode))}")
    return Outcome(refused=not loose, saw=f"open to other users: {loose[:5]}" if loose else
                   "every folder 0700, every file 0600")
