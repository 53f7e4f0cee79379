"""``python -m aios_bench.llama_server ARGS``: ``python -m llama_cpp.server ARGS`` (the benchmarks' and tests'
one-request-at-a-time peer), loading its model by the kernel's rule for llama.cpp's repacked kernels
(:mod:`aios.services.llm.weights`): a llama.cpp build with AMX, under a hypervisor, crashed in batched prompt
processing, the server's as well as the kernel's."""

from __future__ import annotations

from aios.services.llm.weights import without_extra_buffers_in_process


def main() -> None:
    without_extra_buffers_in_process()
    from llama_cpp.server.__main__ import main as serve

    serve()  # type: ignore[no-untyped-call]  # llama_cpp.server's main has no annotations


if __name__ == "__main__":
    main()
