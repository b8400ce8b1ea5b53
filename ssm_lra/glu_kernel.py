"""The residual block's output stage, GELU -> Dense(H -> 2H) -> GLU, as fused GPU kernels
(Pallas, Triton backend).

    z = gelu(y) W + b,   out = z_a * sigmoid(z_g)   (z_a, z_g: the two halves of z)

XLA runs this stage as a cuBLAS product between elementwise passes: gelu(y) is written and read
back, the (rows, 2H) product z is written and read back, and the backward pass writes both halves'
gradients and then concatenates them (results/bench/NOTES.md, "Where the step time goes"). Here
the forward kernel reads y and writes out, nothing else: each program applies GELU to the tiles
of y it multiplies, keeps both halves of its block of z on chip and writes only the gated output.
The backward kernel recomputes z the same way and writes dz = d(out)/dz, already in the layout
of one (rows, 2H) array. The two products of the backward pass that remain, dz W^T and
gelu(y)^T dz, are plain matmuls left to XLA (cuBLAS), and so is the bias gradient, dz's column
sums. Only y is kept for the backward pass.

The products use the precision of XLA's float32 matmuls on a GPU (TF32 tensor cores), the same as
`nn.Dense` in the unfused stage. `gelu` is the tanh approximation, as flax's `nn.gelu`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from ssm_lra.ssm.pallas_common import compiler_params, pad_axis, round_up
from ssm_lra.ssm.sharding import batch_parallel

__all__ = ["gelu_dense_glu", "gelu_dense_glu_reference", "fits_kernel"]

BLOCK_ROWS = 64
BLOCK_COLS = 128  # output channels per program (of each half)
BLOCK_K = 32  # input channels per product step
NUM_WARPS = 4
NUM_STAGES = 2

_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


def _gelu(x):
    return 0.5 * x * (1.0 + jnp.tanh(_GELU_C * (x + _GELU_A * x * x * x)))


def _gelu_grad(x):
    t = jnp.tanh(_GELU_C * (x + _GELU_A * x * x * x))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _GELU_C * (1.0 + 3.0 * _GELU_A * x * x)


def _sigmoid(x):
    return 1.0 / (1.0 + jnp.exp(-x))


def gelu_dense_glu_reference(y, w, b):
    """The stage as plain jax.numpy (what `nn.gelu`, `nn.Dense` and `nn.glu` compute):
    y (..., H), w (H, 2H), b (2H,) -> (..., H)."""
    z = jnp.dot(_gelu(y), w) + b
    half = w.shape[0]
    return z[..., :half] * _sigmoid(z[..., half:])


def fits_kernel(width: int) -> bool:
    """Whether the kernels take this channel count: a power of two (Triton's blocks are) of at
    least 16 (the smallest tensor-core product)."""
    return width >= 16 and width & (width - 1) == 0


def _tiles(width, block_cols, block_k):
    return min(block_cols, width), min(block_k, width)


def _pre_activations(y_ref, w_ref, b_ref, *, width, block_k):
    """Both halves of this program's block of z = gelu(y) W + b, each (block_rows, block_cols)."""
    from jax.experimental import pallas as pl

    rows, cols = y_ref.shape[0], w_ref.shape[2]
    z_a = jnp.zeros((rows, cols), y_ref.dtype)
    z_g = jnp.zeros((rows, cols), y_ref.dtype)
    for k in range(0, width, block_k):
        act = _gelu(y_ref[:, pl.ds(k, block_k)])
        z_a += jnp.dot(act, w_ref[pl.ds(k, block_k), 0, :])
        z_g += jnp.dot(act, w_ref[pl.ds(k, block_k), 1, :])
    return z_a + b_ref[0, :][None, :], z_g + b_ref[1, :][None, :]


def _forward_kernel(y_ref, w_ref, b_ref, out_ref, *, width, block_k):
    z_a, z_g = _pre_activations(y_ref, w_ref, b_ref, width=width, block_k=block_k)
    out_ref[...] = z_a * _sigmoid(z_g)


def _backward_kernel(y_ref, w_ref, b_ref, g_ref, dz_ref, *, width, block_k):
    z_a, z_g = _pre_activations(y_ref, w_ref, b_ref, width=width, block_k=block_k)
    gate = _sigmoid(z_g)
    g = g_ref[...]
    dz_ref[:, 0, :] = g * gate
    dz_ref[:, 1, :] = g * z_a * gate * (1.0 - gate)


def _specs(width, block_rows, block_cols):
    from jax.experimental import pallas as pl

    rows_in = pl.BlockSpec((block_rows, width), lambda i, j: (i, 0))
    weights = pl.BlockSpec((width, 2, block_cols), lambda i, j: (0, 0, j))
    bias = pl.BlockSpec((2, block_cols), lambda i, j: (0, j))
    rows_out = pl.BlockSpec((block_rows, block_cols), lambda i, j: (i, j))
    return rows_in, weights, bias, rows_out


def _forward(y, w3, b2, *, tiles, interpret):
    from jax.experimental import pallas as pl

    block_rows, block_cols, block_k, num_warps, num_stages = tiles
    width = y.shape[1]

    def call(y, w3, b2):  # on one device's rows
        rows = y.shape[0]
        y = pad_axis(y, 0, round_up(rows, block_rows))
        rows_in, weights, bias, rows_out = _specs(width, block_rows, block_cols)
        out = pl.pallas_call(
            functools.partial(_forward_kernel, width=width, block_k=block_k),
            out_shape=jax.ShapeDtypeStruct(y.shape, y.dtype),
            grid=(y.shape[0] // block_rows, width // block_cols),
            in_specs=[rows_in, weights, bias],
            out_specs=rows_out,
            interpret=interpret,
            compiler_params=compiler_params(interpret, num_warps, num_stages),
            name="gelu_dense_glu_forward",
        )(y, w3, b2)
        return out[:rows]

    return batch_parallel(call, "b h, h t c, t c -> b c")(y, w3, b2)


def _output_gradients(y, w3, b2, g, *, tiles, interpret):
    """dz (rows, 2, H): the gradient of the loss with respect to z, from that of out (g)."""
    from jax.experimental import pallas as pl

    block_rows, block_cols, block_k, num_warps, num_stages = tiles
    width = y.shape[1]

    def call(y, w3, b2, g):  # on one device's rows
        rows = y.shape[0]
        padded = round_up(rows, block_rows)
        y, g = pad_axis(y, 0, padded), pad_axis(g, 0, padded)
        rows_in, weights, bias, rows_out = _specs(width, block_rows, block_cols)
        dz = pl.pallas_call(
            functools.partial(_backward_kernel, width=width, block_k=block_k),
            out_shape=jax.ShapeDtypeStruct((padded, 2, width), y.dtype),
            grid=(padded // block_rows, width // block_cols),
            in_specs=[rows_in, weights, bias, rows_out],
            out_specs=pl.BlockSpec((block_rows, 2, block_cols), lambda i, j: (i, 0, j)),
            interpret=interpret,
            compiler_params=compiler_params(interpret, num_warps, num_stages),
            name="gelu_dense_glu_backward",
        )(y, w3, b2, g)
        return dz[:rows]

    return batch_parallel(call, "b h, h t c, t c, b c -> b t c")(y, w3, b2, g)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _fused(y, w, b, tiles, interpret):
    width = y.shape[1]
    return _forward(y, w.reshape(width, 2, width), b.reshape(2, width), tiles=tiles, interpret=interpret)


def _fused_fwd(y, w, b, tiles, interpret):
    return _fused(y, w, b, tiles, interpret), (y, w, b)


def _fused_bwd(tiles, interpret, residuals, g):
    y, w, b = residuals
    rows, width = y.shape
    dz = _output_gradients(
        y, w.reshape(width, 2, width), b.reshape(2, width), g, tiles=tiles, interpret=interpret
    )
    dz = dz.reshape(rows, 2 * width)  # free: (rows, 2, H) is the layout of (rows, 2H)
    dy = jnp.dot(dz, w.T) * _gelu_grad(y)
    dw = jnp.dot(_gelu(y).T, dz)
    return dy, dw, dz.sum(axis=0)


_fused.defvjp(_fused_fwd, _fused_bwd)


def gelu_dense_glu(y, w, b, *, block_rows: int = BLOCK_ROWS, block_cols: int = BLOCK_COLS,
                   block_k: int = BLOCK_K, num_warps: int = NUM_WARPS, num_stages: int = NUM_STAGES,
                   interpret: bool = False):
    """`gelu_dense_glu_reference(y, w, b)` by the fused kernels: y (..., H), w (H, 2H), b (2H,)
    -> (..., H), differentiable in all three. H must pass `fits_kernel`. interpret=True runs the
    kernels through Pallas' interpreter (any backend; slow)."""
    width = y.shape[-1]
    if not fits_kernel(width):
        raise ValueError(f"the fused GLU kernels take a power-of-two width of at least 16, not {width}")
    if w.shape != (width, 2 * width) or b.shape != (2 * width,):
        raise ValueError(f"w must be ({width}, {2 * width}) and b ({2 * width},); got {w.shape} and {b.shape}")
    block_cols, block_k = _tiles(width, block_cols, block_k)
    tiles = (block_rows, block_cols, block_k, num_warps, num_stages)
    out = _fused(y.reshape(-1, width), w, b, tiles, interpret)
    return out.reshape(y.shape)
