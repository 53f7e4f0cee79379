"""The AMX-under-a-hypervisor rule of aios.services.llm.weights (a pure check on CPU flags and the build)."""

from aios.services.llm.weights import extra_buffers_safe

VM_AMX = {"avx2", "amx_tile", "amx_int8", "hypervisor"}


def test_an_amx_build_under_a_hypervisor_loads_without_repacked_kernels() -> None:
    assert not extra_buffers_safe(VM_AMX, llama_amx=True)


def test_a_build_without_amx_keeps_them_under_a_hypervisor() -> None:
    assert extra_buffers_safe(VM_AMX, llama_amx=False)


def test_amx_on_bare_metal_and_no_amx_keep_them() -> None:
    assert extra_buffers_safe({"avx2", "amx_tile", "amx_int8"}, llama_amx=True)
    assert extra_buffers_safe({"avx2", "hypervisor"}, llama_amx=True)
