"""Loading GGUF weights into llama.cpp, with the one CPU quirk the kernel works around.

llama.cpp built for the machine (``-march=native``) on a CPU that reports AMX (Intel Sapphire Rapids and later)
repacks the weights for AMX tile instructions. Under a hypervisor that does not keep the tile state (seen on the
development VMs: ``tilezero`` raised SIGILL inside ``llama_decode`` as soon as a batch had more than a few tokens)
that kills the worker. When llama.cpp was built with AMX (its system info lists ``AMX_INT8``) and the CPU reports
``hypervisor``, the weights are loaded without llama.cpp's extra buffer types (``use_extra_bufts=False``): plain
CPU kernels, correct everywhere, and a warning in the log. A build without AMX (``.ci/run`` makes one on such
machines) keeps the other repacked kernels, which batch much better (measured by ``aios bench agents``: 1.46x
against ``llama_cpp.server`` without them, where the same run had given 2.2x). ``AIOS_LLM_CPU_REPACK=on`` forces
the repacked kernels anyway, ``off`` never uses them.

Weights that batch: how much continuous batching gains on a CPU depends on whether llama.cpp has a batched matrix
kernel for the weights' type. The bundled SmolLM2 file is Q4_1, which batches about 2x at 16-32 sequences where
Q8_0 batches about 3x (``aios bench engine``, docs/benchmarks.md). So by default (``AIOS_LLM_REQUANTIZE=auto``)
the bundled model is served as Q8_0, converted once with ``llama_model_quantize`` (seconds) and cached in
``AIOS_LLM_WEIGHTS_DIR``: Q8_0 holds each Q4_1 weight to within 1/254 of its block's largest, so answers change
only as much as that rounding does (measured there). A GGUF named by ``AIOS_LLM_MODEL`` is served as it is,
unless ``AIOS_LLM_REQUANTIZE`` names a type.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("aios.llm")

_LOAD_LOCK = threading.Lock()
Repack = Literal["auto", "on", "off"]
Requantize = Literal["auto", "off", "q8_0", "q4_0"]
FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
          "f16": "LLAMA_FTYPE_MOSTLY_F16"}
WEIGHTS_DIR = Path.home() / ".cache" / "aios" / "models"
"""Where converted weights are cached unless ``AIOS_LLM_WEIGHTS_DIR`` says otherwise."""
AUTO_TYPE = "q8_0"
"""What ``auto`` serves the bundled model as: measured in docs/benchmarks.md (engine), nearly lossless from Q4_1."""


def quantized(src: Path, kind: str, out_dir: Path) -> Path:
    """``src`` converted to ``kind`` by llama.cpp, once: cached in ``out_dir`` (a name per source file, its size
    and modification time), written under a temporary name and renamed, so that workers starting together never
    read half a file."""
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    from aios.wire.errors import ConfigError

    if kind not in FTYPES:
        raise ConfigError(f"unknown weight type {kind!r}; known: {', '.join(FTYPES)}")
    stat = src.stat()
    stem = re.sub(r"\.(q\d_\w+|f16|f32|bf16)$", "", src.stem, flags=re.IGNORECASE)
    out = out_dir / f"{stem}-{stat.st_size:x}-{int(stat.st_mtime):x}" / f"{stem}.{kind.upper()}.gguf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[kind])
    params.allow_requantize = True
    tmp = out.with_suffix(f".part{os.getpid()}")
    log.info("converting %s to %s, once (cached as %s)", src.name, kind, out)
    with suppress_stdout_stderr(disable=False):  # llama.cpp logs every tensor it converts
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"llama.cpp could not convert {src} to {kind}; set AIOS_LLM_REQUANTIZE=off")
    tmp.replace(out)
    return out


def serving_path(src: Path, requantize: Requantize, *, bundled: bool, cache_dir: Path) -> Path:
    """The GGUF file to load for ``src``: itself, or its conversion (``auto``: the bundled model as
    :data:`AUTO_TYPE`)."""
    kind = AUTO_TYPE if requantize == "auto" and bundled else None if requantize in ("auto", "off") else requantize
    return src if kind is None else quantized(src, kind, cache_dir)


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _llama_has_amx() -> bool:
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    return b"AMX" in (info if isinstance(info, bytes) else str(info).encode())


def extra_buffers_safe(flags: set[str] | None = None, llama_amx: bool | None = None) -> bool:
    """False where AMX repacking is known to crash: a llama.cpp built with AMX, on a CPU seen through a
    hypervisor."""
    flags = _cpu_flags() if flags is None else flags
    if "hypervisor" not in flags or "amx_tile" not in flags:
        return True
    return not (_llama_has_amx() if llama_amx is None else llama_amx)


def _uses_extra_buffers(repack: Repack) -> bool:
    return repack == "on" or (repack == "auto" and extra_buffers_safe())


def without_extra_buffers_in_process(repack: Repack = "auto") -> bool:
    """For a process that loads one model through code of its own (``llama_cpp.server``): make every later load
    in this process skip the repacked kernels where :func:`extra_buffers_safe` says so. True if it did."""
    if _uses_extra_buffers(repack):
        return False
    import llama_cpp.llama_cpp as bindings

    bindings.llama_model_default_params = _without_extra_buffers(bindings.llama_model_default_params)
    return True


def _without_extra_buffers(default: Any) -> Any:
    def params() -> Any:
        p = default()
        p.use_extra_bufts = False
        return p

    return params


def load_llama(path: Path, *, repack: Repack = "auto", **kwargs: Any) -> Any:
    """``llama_cpp.Llama(model_path=path, **kwargs)``, with llama.cpp's weight repacking as ``repack`` says."""
    import llama_cpp
    import llama_cpp.llama_cpp as bindings  # the module llama_cpp.llama calls the C functions through

    if _uses_extra_buffers(repack):
        return llama_cpp.Llama(model_path=str(path), **kwargs)
    if repack == "auto":
        log.warning("llama.cpp was built with AMX, and this CPU runs under a hypervisor: loading %s without "
                    "llama.cpp's repacked kernels, whose AMX tiles crash there (AIOS_LLM_CPU_REPACK=on to use them "
                    "anyway; or build llama-cpp-python with CMAKE_ARGS as .ci/run does)", path.name)
    default = bindings.llama_model_default_params
    without_extra_buffers = _without_extra_buffers(default)
    # Llama() takes no such argument: its model parameters start from llama_model_default_params(), swapped for
    # the duration of this one load (under a lock, so another load in this process is not affected).
    with _LOAD_LOCK:
        bindings.llama_model_default_params = without_extra_buffers
        try:
            return llama_cpp.Llama(model_path=str(path), **kwargs)
        finally:
            bindings.llama_model_default_params = default
