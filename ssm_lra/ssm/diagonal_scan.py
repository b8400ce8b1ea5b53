"""A diagonal LTI SSM (S4D, S4-PTD) run as its recurrence in one GPU kernel, instead of a long
convolution: `conv="scan"`.

The FFT convolution pads every sequence to twice its length and moves it through transforms,
a product with the kernel's spectrum and the inverse, several passes of (B, 2L, H) complex
numbers per layer and direction. The layer's output is also the recurrence, per channel h and
kept state n (one of each conjugate pair):

    causal:       s_t = Abar s_{t-1} + u_t,   y_t = 2 Re(sum_n W_n s_t)
    anti-causal:  r_t = Abar r_{t+1} + u_t,   y_t = 2 Re(sum_n W'_n r_t)

with W = C Bbar, whose kernel 2 Re(sum_n W_n Abar_n^l) is exactly the convolution's. Here one
program per (sequence, block of channels) runs it in time order with its (block_h, N2) states
on chip: the layer reads u once and writes y once per direction.

The backward pass stores no states. du is the transposed convolution: a causal kernel becomes
anti-causal and the other way round, so du is dy scanned in the opposite time order. The
system's gradients come one of two ways (`grads`):
- "kernel": a second kernel recomputes each direction's states in its own time order, with
  their derivative with respect to Abar, and sums them against dy; the transposed scan of dy
  (du) runs in the same program the other way in time. Its arithmetic grows with the states.
- "fft": du by the forward kernel with the directions swapped; the kernel's gradient
  dK[l] = sum over the batch and time of dy_t u_{t-l} (causal) or dy_t u_{t+l} (anti-causal),
  one cross-correlation per channel by FFT, summed over the batch; the parameters' gradients
  from dK through the Vandermonde kernel's own backward pass. Its cost does not depend on N.
`interpret=True` runs the same kernels through Pallas' interpreter on any backend (the tests).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from ssm_lra.ssm.conv import fft_length, vandermonde_kernel
from ssm_lra.ssm.pallas_common import compiler_params, next_power_of_two, pad_axis, round_up
from ssm_lra.ssm.sharding import batch_parallel

__all__ = ["GRADS", "batch_cross_correlation", "diagonal_scan_conv"]

CHUNK = 8  # steps whose loads are issued together, before their arithmetic
BLOCK_H = 16  # channels per program


def _rotate(ar, ai, xr, xi, add=0.0):
    """Abar x + add, complex numbers as (re, im) parts."""
    return ar * xr - ai * xi + add, ar * xi + ai * xr


def _scan_kernel(u_ref, ar_ref, ai_ref, wr_ref, wi_ref, y_ref, *, chunk, n_chunks, reverse):
    """One sequence, one channel block: u (L, bH); Abar as (re, im) (bH, N2); W as (re, im)
    (D, bH, N2), one row per direction; y (D, L, bH). reverse[d]: direction d runs backwards.

    The directions advance together, one chunk each per iteration: their recurrences are
    independent, so each step has twice the work to overlap its latencies with."""
    ar, ai = ar_ref[...], ai_ref[...]
    weights = [(wr_ref[d], wi_ref[d]) for d in range(len(reverse))]

    def body(k, states):
        loads = []
        for backwards in reverse:
            t0 = (n_chunks - 1 - k if backwards else k) * chunk
            steps = range(chunk - 1, -1, -1) if backwards else range(chunk)
            loads.append((t0, [(i, u_ref[t0 + i]) for i in steps]))  # the chunks' loads first
        out = []
        for d, ((t0, rows), (sr, si), (wr, wi)) in enumerate(zip(loads, states, weights)):
            for i, u in rows:
                sr, si = _rotate(ar, ai, sr, si, u[:, None])
                y_ref[d, t0 + i] = 2.0 * jnp.sum(wr * sr - wi * si, axis=1)
            out.append((sr, si))
        return tuple(out)

    zeros = jnp.zeros(ar.shape, ar.dtype)
    lax.fori_loop(0, n_chunks, body, tuple((zeros, zeros) for _ in reverse))


def _grad_kernel(u_ref, g_ref, ar_ref, ai_ref, wr_ref, wi_ref, du_ref, xwr_ref, xwi_ref, xar_ref, xai_ref, *,
                 chunk, n_chunks, reverse):
    """The backward pass of `_scan_kernel` for one sequence and channel block, states recomputed
    on the way. Per direction d, two chains run:
    - in d's own time order, its states s_t = Abar s_{t-1} + u_t and their derivative with
      respect to Abar, p_t = Abar p_{t-1} + s_{t-1}, summed against dy: X_W = sum_t dy_t s_t
      and X_A = sum_t dy_t p_t (y = 2 Re(W s) makes 2 X_W the gradient of W, 2 W X_A that of
      Abar, in JAX's convention for complex parameters);
    - in the opposite order, the transposed scan of dy, z_t = Abar z_{t+1} + dy_t: du_t gets
      2 Re(W z_t) (row d of du).
    Outputs: du (D, L, bH); X_W (D, bH, N2) and 2 sum_d W_d X_A,d (bH, N2) as (re, im)."""
    ar, ai = ar_ref[...], ai_ref[...]
    weights = [(wr_ref[d], wi_ref[d]) for d in range(len(reverse))]
    rotate = functools.partial(_rotate, ar, ai)

    def body(k, carry):
        loads = []
        for backwards in reverse:
            own = (n_chunks - 1 - k if backwards else k) * chunk
            other = (k if backwards else n_chunks - 1 - k) * chunk
            own_steps = range(chunk - 1, -1, -1) if backwards else range(chunk)
            other_steps = range(chunk) if backwards else range(chunk - 1, -1, -1)
            loads.append((
                own, [(i, u_ref[own + i], g_ref[own + i]) for i in own_steps],
                other, [(i, g_ref[other + i]) for i in other_steps],
            ))  # the chunks' loads first
        out = []
        for d, ((own, own_rows, other, other_rows), state, (wr, wi)) in enumerate(zip(loads, carry, weights)):
            sr, si, pr, pi, zr, zi, xwr, xwi, xar, xai = state
            for _, u, g in own_rows:
                pr, pi = rotate(pr, pi)
                pr, pi = pr + sr, pi + si  # p_t = Abar p_{t-1} + s_{t-1}: before s moves on
                sr, si = rotate(sr, si, u[:, None])
                xwr, xwi = xwr + g[:, None] * sr, xwi + g[:, None] * si
                xar, xai = xar + g[:, None] * pr, xai + g[:, None] * pi
            for i, g in other_rows:
                zr, zi = rotate(zr, zi, g[:, None])
                du_ref[d, other + i] = 2.0 * jnp.sum(wr * zr - wi * zi, axis=1)
            out.append((sr, si, pr, pi, zr, zi, xwr, xwi, xar, xai))
        return tuple(out)

    zeros = jnp.zeros(ar.shape, ar.dtype)
    final = lax.fori_loop(0, n_chunks, body, tuple((zeros,) * 10 for _ in reverse))
    g_ar, g_ai = zeros, zeros
    for d, (state, (wr, wi)) in enumerate(zip(final, weights)):
        *_, xwr, xwi, xar, xai = state
        xwr_ref[d] = xwr
        xwi_ref[d] = xwi
        g_ar, g_ai = g_ar + 2.0 * (wr * xar - wi * xai), g_ai + 2.0 * (wr * xai + wi * xar)
    xar_ref[...] = g_ar
    xai_ref[...] = g_ai


def _padded(u, Abar, W, chunk, block_h):
    """The kernels' operands, padded to their blocks: u (Bz, Lp, Hp); Abar as (re, im) (Hp, Np);
    W as (re, im) (D, Hp, Np). Padded steps come after the real ones and hold u = 0 (and dy = 0):
    a backwards scan starts on them with a zero state, which they leave at zero. Padded channels
    and states have Abar = W = 0."""
    Bz, L, H = u.shape
    N2 = Abar.shape[-1]
    Lp, Hp, Np = round_up(L, chunk), round_up(H, block_h), next_power_of_two(N2)
    parts = lambda z: (z.real.astype(u.dtype), z.imag.astype(u.dtype))  # noqa: E731
    a = tuple(pad_axis(pad_axis(x, 0, Hp), 1, Np) for x in parts(Abar))
    w = tuple(pad_axis(pad_axis(x, 1, Hp), 2, Np) for x in parts(W))
    return pad_axis(pad_axis(u, 1, Lp), 2, Hp), a, w


def _specs(Lp, block_h, Np, n_dir):
    """Blocks of one (sequence, channel block) program: a sequence's (Lp, bH) rows; Abar's
    (bH, Np) parts; W's (D, bH, Np) parts; the (D, Lp, bH) rows written per direction."""
    from jax.experimental import pallas as pl

    per_seq = pl.BlockSpec((None, Lp, block_h), lambda b, h: (b, 0, h))
    per_state = pl.BlockSpec((block_h, Np), lambda b, h: (h, 0))
    per_dir = pl.BlockSpec((n_dir, block_h, Np), lambda b, h: (0, h, 0))
    rows = pl.BlockSpec((None, n_dir, Lp, block_h), lambda b, h: (b, 0, 0, h))
    return per_seq, per_state, per_dir, rows


def _run_scans(u, Abar, W, reverse, *, chunk, block_h, interpret):
    """Per direction d, the scan of u (Bz, L, H) with Abar (H, N2) and W[d] (H, N2), both
    complex, backwards in time where reverse[d]: (Bz, D, L, H)."""
    from jax.experimental import pallas as pl

    Bz, L, H = u.shape
    n_dir = len(reverse)
    block_h = min(block_h, next_power_of_two(H))
    u_p, (ar, ai), (wr, wi) = _padded(u, Abar, W, chunk, block_h)
    Lp, Hp, Np = u_p.shape[1], u_p.shape[2], ar.shape[1]

    def call(u, ar, ai, wr, wi):  # on one device's share of the batch
        n = u.shape[0]
        per_seq, per_state, per_dir, rows = _specs(Lp, block_h, Np, n_dir)
        return pl.pallas_call(
            functools.partial(_scan_kernel, chunk=chunk, n_chunks=Lp // chunk, reverse=tuple(reverse)),
            out_shape=jax.ShapeDtypeStruct((n, n_dir, Lp, Hp), u.dtype),
            grid=(n, Hp // block_h),
            in_specs=[per_seq, per_state, per_state, per_dir, per_dir],
            out_specs=rows,
            interpret=interpret,
            compiler_params=compiler_params(interpret, num_warps=4),
            name="diagonal_scan",
        )(u, ar, ai, wr, wi)

    y = batch_parallel(call, "b l h, h n, h n, d h n, d h n -> b d l h")(u_p, ar, ai, wr, wi)
    return y[:, :, :L, :H]


def _run_grads(u, g, Abar, W, reverse, *, chunk, block_h, interpret):
    """(du, dAbar, dW) of sum(y * g), y = the scans of u summed over the directions, in JAX's
    convention for the complex Abar (H, N2) and W (D, H, N2)."""
    from jax.experimental import pallas as pl

    Bz, L, H = u.shape
    n_dir, N2 = len(reverse), Abar.shape[-1]
    block_h = min(block_h, next_power_of_two(H))
    u_p, (ar, ai), (wr, wi) = _padded(u, Abar, W, chunk, block_h)
    g_p = pad_axis(pad_axis(g, 1, u_p.shape[1]), 2, u_p.shape[2])
    Lp, Hp, Np = u_p.shape[1], u_p.shape[2], ar.shape[1]

    def call(u, g, ar, ai, wr, wi):  # on one device's share of the batch
        n = u.shape[0]
        per_seq, per_state, per_dir, rows = _specs(Lp, block_h, Np, n_dir)
        seq_dir = pl.BlockSpec((None, n_dir, block_h, Np), lambda b, h: (b, 0, h, 0))
        seq_state = pl.BlockSpec((None, block_h, Np), lambda b, h: (b, h, 0))
        dtype = u.dtype
        return pl.pallas_call(
            functools.partial(_grad_kernel, chunk=chunk, n_chunks=Lp // chunk, reverse=tuple(reverse)),
            out_shape=(
                jax.ShapeDtypeStruct((n, n_dir, Lp, Hp), dtype),
                jax.ShapeDtypeStruct((n, n_dir, Hp, Np), dtype),
                jax.ShapeDtypeStruct((n, n_dir, Hp, Np), dtype),
                jax.ShapeDtypeStruct((n, Hp, Np), dtype),
                jax.ShapeDtypeStruct((n, Hp, Np), dtype),
            ),
            grid=(n, Hp // block_h),
            in_specs=[per_seq, per_seq, per_state, per_state, per_dir, per_dir],
            out_specs=(rows, seq_dir, seq_dir, seq_state, seq_state),
            interpret=interpret,
            compiler_params=compiler_params(interpret, num_warps=4),
            name="diagonal_scan_grad",
        )(u, g, ar, ai, wr, wi)

    rule = "b l h, b l h, h n, h n, d h n, d h n -> b d l h, b d h n, b d h n, b h n, b h n"
    du, xwr, xwi, xar, xai = batch_parallel(call, rule)(u_p, g_p, ar, ai, wr, wi)
    dW = 2.0 * lax.complex(xwr.sum(0), xwi.sum(0))[:, :H, :N2]
    dAbar = lax.complex(xar.sum(0), xai.sum(0))[:H, :N2]
    return du.sum(axis=1)[:, :L, :H], dAbar, dW


def _apply(u, Abar, W, reverse, chunk, block_h, interpret):
    return _run_scans(u, Abar, W, reverse, chunk=chunk, block_h=block_h, interpret=interpret).sum(axis=1)


def batch_cross_correlation(u, g):
    """c (n, H) with c[l mod n] = sum_b sum_t g[b, t] u[b, t - l] for lags -L < l < L, n =
    fft_length(L): what a convolution kernel's gradient is, one correlation per channel."""
    n = fft_length(u.shape[1])

    def spectra(u, g):  # per sequence: G conj(U), (b, n // 2 + 1, H)
        return jnp.fft.rfft(g, n=n, axis=1) * jnp.conj(jnp.fft.rfft(u, n=n, axis=1))

    if jax.device_count() > 1:
        # Each device transforms its own rows (XLA would gather a batch-sharded FFT input onto
        # every device); the sum over the batch is then a reduction across devices.
        spectra = batch_parallel(spectra, "b l h, b l h -> b f h")
    return jnp.fft.irfft(jnp.sum(spectra(u, g), axis=0), n=n, axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def _scan_conv(u, log_Abar, W, reverse, chunk, block_h, interpret, grads):
    return _apply(u, jnp.exp(log_Abar), W, reverse, chunk, block_h, interpret)


def _scan_conv_fwd(u, log_Abar, W, reverse, chunk, block_h, interpret, grads):
    return _scan_conv(u, log_Abar, W, reverse, chunk, block_h, interpret, grads), (u, log_Abar, W)


def _scan_conv_bwd(reverse, chunk, block_h, interpret, grads, residuals, g):
    u, log_Abar, W = residuals
    Abar = jnp.exp(log_Abar)
    if grads == "kernel":
        du, dAbar, dW = _run_grads(u, g, Abar, W, reverse, chunk=chunk, block_h=block_h, interpret=interpret)
        return du, dAbar * Abar, dW  # Abar = exp(log Abar) is analytic: the chain rule multiplies
    L = u.shape[1]
    # The transpose of a causal convolution is the anti-causal one with the same kernel.
    du = _apply(g, Abar, W, tuple(not r for r in reverse), chunk, block_h, interpret)
    c = batch_cross_correlation(u, g).T  # (H, n)
    lags = jnp.arange(L)
    dK = jnp.stack([c[:, (-lags) % c.shape[1]] if backwards else c[:, :L] for backwards in reverse])
    _, kernel_vjp = jax.vjp(lambda la, w: vandermonde_kernel(None, w, L, log_Abar=la), log_Abar, W)
    d_log_Abar, dW = kernel_vjp(dK.astype(u.dtype))
    return du, d_log_Abar, dW


_scan_conv.defvjp(_scan_conv_fwd, _scan_conv_bwd)

# How the backward pass gets the system's gradients: "kernel" (`_grad_kernel`: states and their
# derivative recomputed in time order, about 3x the forward's arithmetic per state, no FFT) or
# "fft" (du by the forward kernel, the kernel's gradient by a batch-summed FFT cross-correlation,
# arithmetic independent of the state size).
GRADS = ("kernel", "fft")


def diagonal_scan_conv(u, log_Abar, W_fwd, W_bwd=None, *, chunk: int = CHUNK, block_h: int = BLOCK_H,
                       interpret: bool = False, grads: str = "kernel"):
    """causal_conv(u, K_fwd) (+ the anti-causal conv with K_bwd), K = 2 Re(sum_n W_n Abar_n^l),
    computed by the recurrence: the output of `conv.causal_fft_conv` / `bidirectional_fft_conv`
    with `vandermonde_kernel(None, W, L, log_Abar)`.

    u (B, L, H) real; log_Abar (H, N2) complex (log of the discrete eigenvalues); W_fwd, W_bwd
    (H, N2) complex. Differentiable in u, log_Abar and the W's; `grads` picks how (see GRADS).
    """
    if u.ndim != 3:
        raise ValueError(f"expected (batch, length, channels), got shape {u.shape}")
    if grads not in GRADS:
        raise ValueError(f"unknown grads {grads!r}; valid ones are {', '.join(map(repr, GRADS))}")
    W = jnp.stack([W_fwd] if W_bwd is None else [W_fwd, W_bwd])
    reverse = (False,) if W_bwd is None else (False, True)
    return _scan_conv(u, log_Abar, W, reverse, chunk, block_h, interpret, grads)
