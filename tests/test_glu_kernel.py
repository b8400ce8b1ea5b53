"""The fused GELU -> Dense -> GLU kernels against the stage as flax computes it, in float64 through
Pallas' interpreter, and their config switch."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_lra.errors import ConfigError
from ssm_lra.glu_kernel import gelu_dense_glu, gelu_dense_glu_reference
from ssm_lra.model import OutputActivation, resolve_glu_kernel


def flax_stage(y, w, b):
    """GELU, dense layer, GLU written with flax's own functions (what glu_kernel=xla runs)."""
    return nn.glu(nn.gelu(y) @ w + b, axis=-1)


def random_stage(seed, lead, width):
    rng = np.random.default_rng(seed)
    y = jnp.asarray(rng.normal(size=lead + (width,)) * 2.0)
    w = jnp.asarray(rng.normal(size=(width, 2 * width)) / np.sqrt(width))
    b = jnp.asarray(rng.normal(size=(2 * width,)))
    cotangent = jnp.asarray(rng.normal(size=lead + (width,)))
    return y, w, b, cotangent


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def test_reference_is_flax_stage(x64):
    y, w, b, _ = random_stage(0, (3, 11), 16)
    np.testing.assert_allclose(gelu_dense_glu_reference(y, w, b), flax_stage(y, w, b), rtol=1e-13, atol=1e-13)


# Rows that do not fill a block, several row and column blocks, k steps, extra leading axes.
CASES = [
    ((3, 37), 32, dict(block_rows=16, block_cols=16, block_k=16)),
    ((2, 5, 7), 16, {}),
    ((130,), 64, dict(block_rows=64, block_cols=32, block_k=32)),
]


@pytest.mark.parametrize("lead,width,tiles", CASES)
def test_fused_kernels_match_flax_float64(x64, lead, width, tiles):
    y, w, b, cotangent = random_stage(len(lead) + width, lead, width)
    fused = jax.jit(lambda y, w, b: gelu_dense_glu(y, w, b, interpret=True, **tiles))
    out, pull = jax.vjp(fused, y, w, b)
    ref, pull_ref = jax.vjp(flax_stage, y, w, b)
    assert out.shape == y.shape and out.dtype == jnp.float64
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(pull(cotangent), pull_ref(cotangent)):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11 * float(jnp.abs(want).max()))


def test_output_activation_fused_has_dense_parameters_and_output():
    """glu_kernel switches the computation only: same parameter tree, initial values and output."""
    y = jax.random.normal(jax.random.PRNGKey(1), (2, 9, 32))
    xla = OutputActivation("glu", 32, 0.0)
    fused = OutputActivation("glu", 32, 0.0, glu_kernel="fused_interpret")
    variables = xla.init(jax.random.PRNGKey(0), y, False)
    assert jax.tree.structure(variables) == jax.tree.structure(fused.init(jax.random.PRNGKey(0), y, False))
    for a, c in zip(jax.tree.leaves(variables), jax.tree.leaves(fused.init(jax.random.PRNGKey(0), y, False))):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_allclose(fused.apply(variables, y, True), xla.apply(variables, y, True), rtol=1e-5, atol=1e-5)


def test_resolve_glu_kernel():
    assert resolve_glu_kernel("auto", "half_glu1", 256, 0.0, "float32") == "xla"
    assert resolve_glu_kernel("fused", "gelu", 256, 0.0, "float32") == "xla"  # no GLU stage
    assert resolve_glu_kernel("fused_interpret", "glu", 64, 0.0, "float32") == "fused_interpret"
    expected_auto = "fused" if jax.default_backend() == "gpu" else "xla"
    assert resolve_glu_kernel("auto", "glu", 256, 0.0, "float32") == expected_auto
    # Where the kernels do not apply, auto quietly keeps XLA's stage and fused says why not.
    for d_model, dropout, precision, reason in [
        (96, 0.0, "float32", "power of two"),
        (256, 0.1, "float32", "dropout"),
        (256, 0.0, "bfloat16", "precision"),
    ]:
        assert resolve_glu_kernel("auto", "glu", d_model, dropout, precision) == "xla"
        with pytest.raises(ConfigError, match=reason):
            resolve_glu_kernel("fused_interpret", "glu", d_model, dropout, precision)
    with pytest.raises(ConfigError, match="not one of"):
        resolve_glu_kernel("triton", "glu", 256, 0.0, "float32")


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="the check is for machines without a GPU")
def test_fused_without_a_gpu_is_a_clear_error():
    with pytest.raises(ConfigError, match="GPU"):
        resolve_glu_kernel("fused", "glu", 256, 0.0, "float32")


def test_fused_kernels_lower_to_triton_for_cuda():
    # Lowering for CUDA runs Pallas' Triton lowering of both kernels without a GPU.
    from jax import export

    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    loss = lambda y, w, b: jnp.sum(gelu_dense_glu(y, w, b) ** 2)
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    triton = export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
    module = export.export(grad, platforms=["cuda"], disabled_checks=[triton])(f32(4, 50, 256), f32(256, 512), f32(512))
    text = module.mlir_module()
    assert "gelu_dense_glu_forward" in text and "gelu_dense_glu_backward" in text
