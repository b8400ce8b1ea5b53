"""The Pallas kernels lower to Triton for a CUDA GPU, checked on a machine without one.

Everywhere else the kernels run through Pallas' interpreter, which accepts operations and shapes
that the Triton lowering rejects (a kernel that only fails on a lent GPU costs device time to
find out). `jax.export` lowers for another platform: it runs Pallas' Triton lowering of the
forward and backward kernels at the presets' shapes, without compiling them to GPU code (register
use and speed stay for the GPU: scripts/check_fused_scan.py)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest
from jax import export

from ssm_lra.ssm.diagonal_scan import GRADS, diagonal_scan_conv
from ssm_lra.ssm.lti_kernel import lti_scan_fused
from ssm_lra.ssm.mamba_kernel import selective_scan_fused

TRITON = "__gpu$xla.gpu.triton"


def triton_kernels(fn, *shapes) -> set[str]:
    """Names of the Triton kernels in fn's forward + backward pass, lowered for CUDA."""

    def forward_and_backward(*args):
        y, pullback = jax.vjp(fn, *args)
        return y, pullback(y)

    exported = export.export(
        jax.jit(forward_and_backward), platforms=["cuda"],
        disabled_checks=[export.DisabledSafetyCheck.custom_call(TRITON)],  # lowered, not serialized for later
    )(*shapes)
    text = exported.mlir_module()
    assert TRITON in text
    return set(re.findall(r'name = "([a-z_]+)"', text))


def spec(*shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


@pytest.mark.parametrize("grads", GRADS)
@pytest.mark.parametrize("L,H,N2", [(2048, 256, 2), (1024, 256, 32)], ids=["listops-reference", "pathfinder"])
def test_diagonal_scan_kernels_lower_for_cuda(L, H, N2, grads):
    c64 = jnp.complex64
    names = triton_kernels(
        lambda u, la, w0, w1: diagonal_scan_conv(u, la, w0, w1, grads=grads),
        spec(2, L, H), spec(H, N2, dtype=c64), spec(H, N2, dtype=c64), spec(H, N2, dtype=c64),
    )
    assert "diagonal_scan" in names
    assert ("diagonal_scan_grad" in names) == (grads == "kernel")


@pytest.mark.parametrize("tiles", [{"block_h": 8}, {"block_h": 32}, {"chunk": 16}], ids=str)
def test_diagonal_scan_kernels_lower_with_the_tiles_the_lever_table_tries(tiles):
    c64 = jnp.complex64
    H, N2 = 256, 32
    names = triton_kernels(
        lambda u, la, w0, w1: diagonal_scan_conv(u, la, w0, w1, **tiles),
        spec(2, 1024, H), spec(H, N2, dtype=c64), spec(H, N2, dtype=c64), spec(H, N2, dtype=c64),
    )
    assert {"diagonal_scan", "diagonal_scan_grad"} <= names


def test_mamba_and_s5_kernels_lower_for_cuda():
    B, L, E, N = 2, 1024, 224, 16
    mamba = triton_kernels(selective_scan_fused, spec(B, L, E), spec(B, L, E), spec(E, N), spec(B, L, N), spec(B, L, N), spec(E))
    assert {"selective_scan_forward", "selective_scan_backward"} <= mamba
    P = 128
    lti = triton_kernels(lambda *a: lti_scan_fused(*a, reverse=True), spec(P), spec(P), spec(B, L, P), spec(B, L, P))
    assert {"lti_scan_forward", "lti_scan_backward"} <= lti
