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
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("aios.llm")

_LOAD_LOCK = threading.Lock()
Repack = Literal["auto", "on", "off"]


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
