"""The AMX-under-a-hypervisor rule of aios.services.llm.weights (a pure check on CPU flags)."""

from aios.services.llm.weights import extra_buffers_safe


def test_amx_under_a_hypervisor_loads_without_repacked_kernels() -> None:
    assert not extra_buffers_safe({"avx2", "amx_tile", "amx_int8", "hypervisor"})


def test_amx_on_bare_metal_and_no_amx_keep_them() -> None:
    assert extra_buffers_safe({"avx2", "amx_tile", "amx_int8"})
    assert extra_buffers_safe({"avx2", "hypervisor"})
