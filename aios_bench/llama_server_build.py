"""llama.cpp's own ``llama-server``, the peer ``aios bench agents`` measures the kernel against: found or built once.

``llama-server --parallel N`` is what a user would run for many agents on one local model: continuous batching
over N slots, each slot keeping its KV cache between requests. It is built from the llama.cpp tree vendored in the
installed ``llama-cpp-python``'s sdist (same llama.cpp, same model code as the kernel's engine), with the cmake line
of ``/work/shared/docs/platform-facts.md``, and cached per llama-cpp-python version::

    ~/.cache/aios/llama-server/<version>/
        src/            the sdist's vendor/llama.cpp
        build/bin/llama-server
        build.json      {"seconds": ..., "cmake_args": [...]}: what the build cost, shown in the benchmark's JSON
        build.log

The sdist comes from ``~/.cache/aios/llama-server/llama_cpp_python-<version>.tar.gz`` if it is there, else from
``pip download`` (pip's cache first, then the registry). A build takes about 15 minutes on 2 cores; the benchmark says so before it starts.
Where a build cannot happen (no cmake or C++ compiler, no sdist), :func:`find_or_build` raises :class:`Unavailable`
with the reason, and the benchmark skips the contender with that message.

On a CPU that reports AMX under a hypervisor the build leaves AMX out (``-DGGML_AMX_*=OFF -mno-amx-*``), as ``.ci/run``
does for llama-cpp-python: llama.cpp's AMX tiles crashed there in batched decoding
(:mod:`aios.services.llm.weights`).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from aios.services.llm.weights import _cpu_flags

CACHE = Path(os.path.expanduser("~/.cache/aios/llama-server"))
CMAKE_ARGS = ("-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON",
              "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DGGML_NATIVE=ON")
NO_AMX_FLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
VENDOR = "vendor/llama.cpp/"


class Unavailable(Exception):
    """llama-server is not built and cannot be built here; the message says why and what to do."""


def llama_cpp_version() -> str:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        raise Unavailable("llama-cpp-python is not installed: its sdist is where llama-server is built from") from None


def cache_dir(version: str | None = None, root: Path = CACHE) -> Path:
    return root / (version or llama_cpp_version())


def binary_path(version: str | None = None, root: Path = CACHE) -> Path:
    return cache_dir(version, root) / "build" / "bin" / "llama-server"


def cmake_args(flags: set[str] | None = None) -> list[str]:
    """The cmake configure arguments for this CPU: the documented line, AMX left out under a hypervisor."""
    flags = _cpu_flags() if flags is None else flags
    args = list(CMAKE_ARGS)
    if "amx_tile" in flags and "hypervisor" in flags:
        args += ["-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF",
                 f"-DCMAKE_C_FLAGS={NO_AMX_FLAGS}", f"-DCMAKE_CXX_FLAGS={NO_AMX_FLAGS}"]
    return args


def build_info(version: str | None = None, root: Path = CACHE) -> dict[str, object] | None:
    """What the cached build recorded (its duration and cmake arguments), or None if there is none."""
    try:
        info: dict[str, object] = json.loads((cache_dir(version, root) / "build.json").read_text())
        return info
    except (OSError, ValueError):
        return None


def _sdist(version: str, home: Path, log: Callable[[str], None]) -> Path:
    name = f"llama_cpp_python-{version}.tar.gz"
    if (home / name).is_file():
        return home / name
    log(f"fetching the llama-cpp-python {version} sdist with pip download (pip's cache first)")
    done = subprocess.run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}", "--no-deps",
                           "--no-binary", ":all:", "-d", str(home)],
                          capture_output=True, text=True)
    if done.returncode != 0 or not (home / name).is_file():
        raise Unavailable(f"could not get the llama-cpp-python {version} sdist (pip download: "
                          f"{done.stderr.strip().splitlines()[-1:] or done.returncode}); put {name} in {home}")
    return home / name


def _unpack_vendor(sdist: Path, dest: Path) -> None:
    """The sdist's ``vendor/llama.cpp`` tree into ``dest`` (members outside it skipped, links checked by tarfile)."""
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix="src-"))
    with tarfile.open(sdist) as tar:
        top = f"llama_cpp_python-{sdist.name.removeprefix('llama_cpp_python-').removesuffix('.tar.gz')}/{VENDOR}"
        members = [m for m in tar.getmembers() if m.name.startswith(top)]
        if not members:
            raise Unavailable(f"{sdist} has no {VENDOR} tree")
        for m in members:
            m.name = m.name[len(top):]
        tar.extractall(tmp, members=[m for m in members if m.name], filter="data")
    tmp.rename(dest)


def find_or_build(log: Callable[[str], None], *, root: Path = CACHE, build: bool = True) -> Path:
    """The cached llama-server binary for the installed llama-cpp-python, building it first if needed (and
    ``build``); raises :class:`Unavailable` with the reason where there is none and none can be made."""
    version = llama_cpp_version()
    home = cache_dir(version, root)
    binary = binary_path(version, root)
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    if not build:
        raise Unavailable(f"llama-server is not built yet ({binary} is missing)")
    missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    if missing:
        raise Unavailable(f"cannot build llama-server: {' and '.join(missing)} not found (install cmake and g++)")
    home.mkdir(parents=True, exist_ok=True)
    src = home / "src"
    if not (src / "CMakeLists.txt").is_file():
        shutil.rmtree(src, ignore_errors=True)
        _unpack_vendor(_sdist(version, root, log), src)
    args = cmake_args()
    jobs = str(os.cpu_count() or 2)
    log(f"building llama-server from llama-cpp-python {version}'s llama.cpp, once (about 15 minutes on 2 cores; "
        f"log: {home / 'build.log'})")
    t0 = time.monotonic()
    with open(home / "build.log", "ab") as out:
        for argv in (["cmake", "-S", str(src), "-B", str(home / "build"), *args],
                     ["cmake", "--build", str(home / "build"), "--target", "llama-server", "-j", jobs]):
            if subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                raise Unavailable(f"the llama-server build failed: see {home / 'build.log'}")
    seconds = time.monotonic() - t0
    (home / "build.json").write_text(json.dumps({"seconds": round(seconds, 1), "cmake_args": args,
                                                 "cpus": os.cpu_count()}) + "\n")
    log(f"built {binary} in {seconds / 60:.1f} minutes")
    return binary
