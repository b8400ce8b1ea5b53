"""Micro-benchmarks of single levers for the speed issue: alternative implementations of one piece,
timed forward + backward at the presets' shapes, and checked to give the same result.

    python scripts/bench_levers.py conv-layout [--out results/bench/levers] [--steps 20]
    python scripts/bench_levers.py scan

conv-layout: the bidirectional FFT convolution of S4/S4D (vjp with respect to the input and both
  kernels) at the S4D presets' shapes. The layers hold activations as (B, L, H); XLA's FFT
  transforms the minor-most axis, so an FFT along L makes XLA transpose around it.
  `batch-paired complex` (ssm.conv.bidirectional_fft_conv, the default since lever 13): two
  neighbouring sequences of the batch as one complex signal, forward complex FFTs only (measured
  on the H200 in a first form that paired row b with row b + B/2: the same operations);
  `time-axis rfft` (`rfft_circular_conv`, the default before it): rfft along axis -2 and irfft
  on (B, L, H), the layout left to XLA;
  `channels-first rfft`: an explicit transpose to (B, H, L), FFTs along the last axis, and back;
  `time-axis packed`: forward complex FFTs of half the length only (`packed_circular_conv`
  below), so no inverse real FFT either, but the real spectrum untangled in elementwise passes.
scan: S5's time-invariant diagonal recurrence x_t = Lambda_bar x_{t-1} + B_bar u_t, forward and
  backward in time (bidirectional), vjp with respect to Lambda_bar and B_bar u, complex64, at the
  S5 / S5-PTD presets' (B, L, P) (P halved under conjugate symmetry), by each of `ssm_lra.ssm.scan`'s
  implementations.
cauchy: S4's Cauchy sums at the generating function's nodes (bidirectional: 2 channels, so 3 x 2
  left vectors), H 256, N/2 32, at the S4 presets' lengths. `reciprocals + matmul` (ssm.s4): the
  (H, N/2, nodes) reciprocals are formed once and contracted; `fused sum`: the fractions are
  summed over n where they are formed, which XLA can fuse into one reduction, never storing them.
s4-kernel: S4's whole kernel (parameters -> (2, H, L) real kernel, vjp with respect to all six
  parameter arrays) at the S4 presets' H, N and L: `cauchy + irfft` (ssm.s4.s4_kernel, the
  default) against `matrix powers` (s4_kernel_powers: repeated squaring of the real N x N Abar,
  blocked (Q x N) @ (N x T) product).
mamba-scan: Mamba's selective scan over a batch (one direction, vjp with respect to all six inputs)
  at the Mamba presets' shapes: `xla` (ssm.mamba.selective_scan per sequence, chunked at Path-X
  as the preset) against `fused` (ssm.mamba_kernel: one Pallas kernel each way; GPU only).
s4d-conv: S4D's bidirectional SSM from its parameters to the output (vjp with respect to the input
  and the five SSM parameter arrays) at the S4D presets' B, L, H and N: `kernel + fft` (the
  length-L kernel by the blocked Vandermonde product, then one FFT convolution: the default)
  against `chunked T` (ssm.chunked_conv: a T x T Toeplitz matmul within chunks, states passed
  between chunks), with float32 products (`highest`) or TF32 tensor cores allowed (`default`),
  the states carried across chunks by XLA's scan or (`fused`, on a GPU) the fused kernel, and
  against `scan` (ssm.diagonal_scan: the recurrence in a Pallas kernel, states on chip; off a
  GPU interpreted), its gradients by a second kernel or by an FFT cross-correlation. Also at
  the issue's S4D ListOps reference shape (32 x 2048 x 256, N 4).
glu: the S4 / S4D block's output part, GELU, a dense layer to 2H and a GLU (vjp with respect to
  the input, the kernel and the bias) at the presets' shapes: `one (H, 2H) matmul` (as
  model.OutputActivation computes it) against `two (H, H) matmuls` on the kernel's halves.
s5-projections: S5's input and output projections, B_bar u and Re(C x), at the S5 / S5-PTD
  presets' shapes: `complex` (einsums on complex arrays, u promoted to complex) against `real`
  (the real and imaginary parts as real matmuls: half the multiplications, no complex copy of u).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax
import jax.numpy as jnp
import numpy as np

from functools import partial

from ssm_lra.atomic import write_text
from ssm_lra.bench.measure import time_calls
from ssm_lra.bench.report import device_slug, markdown_table
from ssm_lra.bench.roofline import summarize_times
from ssm_lra.ssm import scan
from ssm_lra.ssm.conv import bidirectional_circular_kernel, bidirectional_fft_conv, fft_length
from ssm_lra.ssm.hippo import dplr_legs
from ssm_lra.ssm.mamba import batched_selective_scan
from ssm_lra.ssm.pallas_common import fused_scan_available
from ssm_lra.ssm.chunked_conv import chunked_ssm_conv
from ssm_lra.ssm.diagonal_scan import GRADS, diagonal_scan_conv
from ssm_lra.ssm.s4 import cauchy_conj, complex_pairs, s4_kernel, s4_kernel_powers
from ssm_lra.ssm.s4d import S4D, s4d_kernel, s4d_system


# ----------------------------------------------------------------------------------------------
# conv-layout


# The real FFT of length n = 2M by a complex FFT of length M, both ways (the even and odd samples
# travel as the real and imaginary parts of one complex signal); frequencies on axis -2. Exact
# (float64 agreement with ssm.conv's rfft form to 1e-16), but slower on an H200 (NOTES.md, lever 12).


def pack_pairs(u, M: int):
    """(..., L, H) real -> (..., M, H) complex z[m] = u[2m] + i u[2m+1], zero beyond L (L <= 2M)."""
    L = u.shape[-2]
    half = -(-L // 2)
    pad = [(0, 0)] * u.ndim
    pad[-2] = (0, 2 * half - L)
    pairs = jnp.pad(u, pad).reshape(u.shape[:-2] + (half, 2, u.shape[-1]))
    z = pairs[..., 0, :] + 1j * pairs[..., 1, :]
    pad[-2] = (0, M - half)
    return jnp.pad(z, pad)


def unpack_pairs(z, L: int):
    """(..., M, H) complex -> (..., L, H) real: y[2m] = Re z[m], y[2m+1] = Im z[m], first L."""
    half = -(-L // 2)
    z = z[..., :half, :]
    y = jnp.stack([z.real, z.imag], axis=-2).reshape(z.shape[:-2] + (2 * half, z.shape[-1]))
    return y[..., :L, :]


def half_twiddles(M: int, dtype) -> np.ndarray:
    """w^k = exp(-2 pi i k / 2M), k = 0..M, as a column (M + 1, 1) (float64 numpy: M is static)."""
    return np.exp(-1j * np.pi * np.arange(M + 1) / M).astype(dtype)[:, None]


def spectrum_from_packed(Z):
    """The rfft (..., M + 1, H) of a real length-2M signal x from Z = fft(pack_pairs(x)) (..., M, H).

    With E, O the length-M transforms of the even and odd samples, Z = E + i O and conj(Z[-k]) =
    E[k] - i O[k] (E, O are transforms of real signals), so E and O come out of Z and its mirror,
    and X[k] = E[k] + w^k O[k] (k = M included: w^M = -1, E and O have period M)."""
    M = Z.shape[-2]
    Z = jnp.concatenate([Z, Z[..., :1, :]], axis=-2)  # index k mod M, k = 0..M
    mirror = jnp.conj(jnp.flip(Z, axis=-2))  # conj(Z[M - k])
    even, odd = 0.5 * (Z + mirror), -0.5j * (Z - mirror)
    return even + half_twiddles(M, Z.dtype) * odd


def packed_from_spectrum(Y):
    """The inverse of `spectrum_from_packed`: from the rfft Y (..., M + 1, H) of a real length-2M
    signal y, the (..., M, H) complex signal whose length-M inverse FFT is pack_pairs(y).

    E[k] = (Y[k] + Y[k + M]) / 2 and O[k] = (Y[k] - Y[k + M]) w^-k / 2, where Y[k + M] =
    conj(Y[M - k]) (y is real), and the packed transform is E + i O."""
    M = Y.shape[-2] - 1
    mirror = jnp.conj(jnp.flip(Y, axis=-2))  # Y[k + M]
    even = 0.5 * (Y + mirror)
    odd = 0.5 * (Y - mirror) * jnp.conj(half_twiddles(M, Y.dtype))
    return (even + 1j * odd)[..., :M, :]


def packed_circular_conv(u, k_circ, n: int):
    """`ssm.conv._circular_conv` (same arguments, same result) by forward complex FFTs of length n/2.

    The input is packed into a complex signal of half the length and transformed; its real
    spectrum is untangled, multiplied by the kernel's and re-packed in one elementwise pass; the
    inverse transform is conj(fft(conj(.))) with the 1/(n/2) folded into the kernel's spectrum.
    The backward pass of a forward complex FFT is again one, so no inverse real FFT runs at all.
    """
    L, M = u.shape[-2], n // 2
    if n % 2 or 2 * M < L:
        raise ValueError(f"need an even FFT length of at least L = {L}, got {n}")
    k_f = jnp.fft.rfft(k_circ, n=n, axis=-1).T / M  # (M + 1, H): the inverse FFT's 1/M included
    u_f = spectrum_from_packed(jnp.fft.fft(pack_pairs(u, M), axis=-2))
    packed = packed_from_spectrum(u_f * k_f.astype(u_f.dtype))
    y = jnp.conj(jnp.fft.fft(jnp.conj(packed), axis=-2))  # M times the inverse FFT
    return unpack_pairs(y, L)


def rfft_circular_conv(u, k_circ, n: int):
    """`ssm.conv._circular_conv` as it was before lever 13: rfft along time, irfft back."""
    L = u.shape[-2]
    u_f = jnp.fft.rfft(u, n=n, axis=-2)  # (..., n//2+1, H)
    k_f = jnp.fft.rfft(k_circ, n=n, axis=-1).T  # (n//2+1, H)
    return jnp.fft.irfft(u_f * k_f, n=n, axis=-2)[..., :L, :]


def conv_channels_first(u, k_circ, n):
    L = u.shape[-2]
    u_f = jnp.fft.rfft(jnp.swapaxes(u, -1, -2), n=n, axis=-1)  # (B, H, n/2+1)
    k_f = jnp.fft.rfft(k_circ, n=n, axis=-1)
    y = jnp.fft.irfft(u_f * k_f, n=n, axis=-1)[..., :L]
    return jnp.swapaxes(y, -1, -2)


def bidirectional_conv(conv):
    def f(u, k_fwd, k_bwd):
        n = fft_length(u.shape[-2])
        return conv(u, bidirectional_circular_kernel(k_fwd, k_bwd, n), n=n)

    return f


def conv_inputs(B, L, H):
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    primals = (jax.random.normal(k[0], (B, L, H)), jax.random.normal(k[1], (H, L)) / L, jax.random.normal(k[2], (H, L)) / L)
    return primals, jax.random.normal(k[3], (B, L, H))


# ----------------------------------------------------------------------------------------------
# scan


def bidirectional_scan(run):
    def f(Lambda_bar, Bu):
        return jnp.concatenate([run(Lambda_bar, Bu, reverse=False), run(Lambda_bar, Bu, reverse=True)], axis=-1)

    return f


def scan_inputs(B, L, P):
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    # |Lambda_bar| < 1 as a trained S5's is; the exact values do not change the cost.
    radius = jax.random.uniform(k[0], (P,), minval=0.9, maxval=0.9999)
    Lambda_bar = radius * jnp.exp(1j * jax.random.uniform(k[1], (P,), maxval=3.0))
    Bu = random_complex(k[2], (B, L, P))
    g = random_complex(k[3], (B, L, 2 * P))
    return (Lambda_bar.astype(jnp.complex64), Bu), g


# ----------------------------------------------------------------------------------------------
# cauchy


def cauchy_fused(v, z, w):
    """ssm.s4.cauchy_conj, with the fractions summed over n where they are formed."""
    z, w = z[..., None, :], w[..., None]
    return jnp.sum(v[..., None] / (z - w) + jnp.conj(v)[..., None] / (z - jnp.conj(w)), axis=-2)


def random_complex(key, shape):
    re, im = jax.random.normal(key, (2, *shape))
    return jax.lax.complex(re, im)


def cauchy_inputs(H, N2, L):
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    M = L // 2 + 1
    v = random_complex(k[0], (3, 2, H, N2))
    # Nodes on the imaginary axis (bilinear nodes of the unit circle), poles in the left half plane.
    z = 1j * jnp.tan(jnp.pi * jnp.arange(M) / L)[None, :] * jnp.ones((H, 1)) + 1e-3
    w = -jnp.abs(random_complex(k[1], (H, N2)).real) - 0.5 + 1j * random_complex(k[2], (H, N2)).imag * 10
    return (v, z.astype(jnp.complex64), w.astype(jnp.complex64)), random_complex(k[3], (3, 2, H, M))


# ----------------------------------------------------------------------------------------------
# s4-kernel


def s4_kernel_inputs(H, N, L):
    """S4's parameters at its HiPPO-LegS init (dt log-uniform in [1e-3, 1e-1], C random), two
    kernel channels (bidirectional), float32."""
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    Lambda, P, B, _ = dplr_legs(N)
    tile = lambda x: jnp.broadcast_to(jnp.asarray(x, jnp.float32), (H, *x.shape))
    primals = (
        jax.random.uniform(k[0], (H,), minval=jnp.log(1e-3), maxval=jnp.log(1e-1)),
        tile(jnp.log(-Lambda.real)), tile(Lambda.imag), tile(complex_pairs(P)), tile(complex_pairs(B)),
        jax.random.normal(k[1], (2, H, N // 2, 2)) * 0.5**0.5,
    )
    return primals, jax.random.normal(k[2], (2, H, L))


def s4_kernel_variants(H, N, L):
    return {
        "cauchy + irfft": lambda *p: s4_kernel(*p, L),
        "matrix powers": lambda *p: s4_kernel_powers(*p, L),
    }


# ----------------------------------------------------------------------------------------------
# s4d-conv


def s4d_conv_inputs(B, L, H, N):
    """An input and S4D's SSM parameters at its init (inv, dt log-uniform in [1e-3, 1e-1],
    bidirectional: two C channels), float32."""
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    params = S4D(d_model=H, d_state=N, bidirectional=True).init(k[0], L, method=S4D.kernel)["params"]
    ssm = tuple(params[name] for name in ("log_dt", "log_A_real", "A_imag", "B", "C"))
    return (jax.random.normal(k[1], (B, L, H)), *ssm), jax.random.normal(k[2], (B, L, H))


def s4d_conv_variants(B, L, H, N):
    def fft(u, *ssm):
        K = s4d_kernel(*ssm, L)
        return bidirectional_fft_conv(u, K[0], K[1])

    def chunked(T, precision, scan="xla"):
        def f(u, *ssm):
            log_a, W = s4d_system(*ssm)
            return chunked_ssm_conv(u, log_a, W[0], W[1], chunk=T, precision=precision, scan=scan)

        return f

    chunked_variants = [(64, "highest"), (128, "highest"), (256, "highest"), (128, "default"), (256, "default")]
    variants = {"kernel + fft": fft, **{f"chunked {T} {prec}": chunked(T, prec) for T, prec in chunked_variants}}
    if fused_scan_available():  # the chunk states carried by the fused kernel (GPU only)
        for T, prec in [(128, "highest"), (64, "default"), (128, "default"), (256, "default"), (512, "default")]:
            variants[f"chunked {T} {prec} fused"] = chunked(T, prec, "fused")

    suffix = "" if fused_scan_available() else " (interpreted)"
    for grads in GRADS:
        variants[f"scan, {grads} grads{suffix}"] = s4d_scan(grads)
    if fused_scan_available():  # the kernels' tiles: channels per program, steps loaded together
        tile_variants = [{"block_h": 8}, {"block_h": 32}, {"chunk": 16}]
        if N <= 16:  # few states per channel: room on chip for more channels and longer chunks
            tile_variants += [{"block_h": 64}, {"block_h": 32, "chunk": 32}, {"block_h": 64, "chunk": 32},
                              {"block_h": 128, "chunk": 32}, {"block_h": 64, "chunk": 64}]
        for tiles in tile_variants:
            name = ", ".join(f"{k} {v}" for k, v in tiles.items())
            variants[f"scan, kernel grads, {name}"] = s4d_scan("kernel", **tiles)
    return variants


def s4d_scan(grads, **tiles):
    """S4D's bidirectional SSM from its parameters by the recurrence kernel (interpreted off a GPU)."""

    def f(u, *ssm):
        log_a, W = s4d_system(*ssm)
        return diagonal_scan_conv(u, log_a, W[0], W[1], interpret=not fused_scan_available(), grads=grads, **tiles)

    return f


# ----------------------------------------------------------------------------------------------
# mamba-scan


def mamba_scan_inputs(B, L, E, N):
    """The selective scan's inputs at a trained-like scale: dt in [0.001, 0.1], A = -(1..N)."""
    k = jax.random.split(jax.random.PRNGKey(0), 6)
    primals = (
        jax.random.normal(k[0], (B, L, E)),
        jnp.exp(jax.random.uniform(k[1], (B, L, E), minval=jnp.log(1e-3), maxval=jnp.log(1e-1))),
        -jnp.broadcast_to(jnp.arange(1.0, N + 1), (E, N)),
        jax.random.normal(k[2], (B, L, N)),
        jax.random.normal(k[3], (B, L, N)),
        jax.random.normal(k[4], (E,)),
    )
    return primals, jax.random.normal(k[5], (B, L, E))


def mamba_scan_variants(B, L, E, N):
    chunk = 512 if L > 4096 else None  # what the presets set
    fused = "fused" if fused_scan_available() else "fused_interpret"  # interpreted off GPUs (slow)
    return {
        f"xla (chunk_size {chunk})": partial(batched_selective_scan, scan="xla", chunk_size=chunk),
        fused: partial(batched_selective_scan, scan=fused),
    }


# ----------------------------------------------------------------------------------------------
# s5-projections


def projections_complex(u, B_bar, C, xs):
    Bu = jnp.einsum("blh,ph->blp", u.astype(B_bar.dtype), B_bar)
    return Bu, jnp.einsum("blp,hp->blh", xs, C).real


def projections_real(u, B_bar, C, xs):
    Bu = jax.lax.complex(jnp.einsum("blh,ph->blp", u, B_bar.real), jnp.einsum("blh,ph->blp", u, B_bar.imag))
    return Bu, jnp.einsum("blp,hp->blh", xs.real, C.real) - jnp.einsum("blp,hp->blh", xs.imag, C.imag)


def projection_inputs(B, L, H, P):
    """P states pushed in (B_bar u) and 2P read out (both directions)."""
    k = jax.random.split(jax.random.PRNGKey(0), 6)
    u = jax.random.normal(k[0], (B, L, H))
    B_bar = random_complex(k[1], (P, H)) / H**0.5
    C = random_complex(k[2], (H, 2 * P)) / P**0.5
    xs = random_complex(k[3], (B, L, 2 * P))
    return (u, B_bar, C, xs), (random_complex(k[4], (B, L, P)), jax.random.normal(k[5], (B, L, H)))


# ----------------------------------------------------------------------------------------------
# glu


def glu_inputs(B, L, H):
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    x = jax.random.normal(k[0], (B, L, H))
    kernel = jax.random.normal(k[1], (H, 2 * H)) / H**0.5
    bias = jax.random.normal(k[2], (2 * H,)) * 0.1
    return (x, kernel, bias), jax.random.normal(k[3], (B, L, H))


def glu_one_matmul(x, kernel, bias):
    """model.OutputActivation's "glu": GELU, one (H, 2H) dense layer, the GLU on its two halves."""
    return jax.nn.glu(jax.nn.gelu(x) @ kernel + bias, axis=-1)


def glu_two_matmuls(x, kernel, bias):
    """The same with the kernel's halves as two (H, H) products: the backward pass gets the two
    halves' gradients as separate arrays instead of concatenating them into one (B, L, 2H).
    Faster alone at Pathfinder and Path-X on an H200, but in the full step it won only at S4D
    Path-X and lost about 20% at Pathfinder, where XLA made the kernel gradient a slow
    multiply-transpose fusion (results/bench/NOTES.md, lever 14): not adopted."""
    H = x.shape[-1]
    act = jax.nn.gelu(x)
    return (act @ kernel[:, :H] + bias[:H]) * jax.nn.sigmoid(act @ kernel[:, H:] + bias[H:])


LEVERS = {
    "conv-layout": {
        "title": "FFT convolution: layout and transforms (bidirectional, S4D shapes)",
        "dims": "B x L x H",
        # (name, batch, length, channels): the S4D presets' training shapes.
        "shapes": [("listops", 50, 2048, 256), ("pathfinder", 64, 1024, 256), ("pathx", 16, 16384, 256)],
        "inputs": conv_inputs,
        "variants": {
            "batch-paired complex (default)": bidirectional_fft_conv,
            "time-axis rfft": bidirectional_conv(rfft_circular_conv),
            "channels-first rfft": bidirectional_conv(conv_channels_first),
            "time-axis packed": bidirectional_conv(packed_circular_conv),
        },
    },
    "scan": {
        "title": "S5 scan (bidirectional, complex64)",
        "dims": "B x L x P",
        # (name, batch, length, states kept): S5 (conjugate symmetry, P/2) and S5-PTD (all P).
        "shapes": [("s5 pathfinder", 64, 1024, 128), ("s5_ptd pathfinder", 64, 1024, 256),
                   ("s5 pathx", 32, 16384, 128), ("s5_ptd pathx", 32, 16384, 256)],
        "inputs": scan_inputs,
        "variants": {
            "associative": bidirectional_scan(partial(scan.linear_scan, axis=1)),
            "lti associative": bidirectional_scan(partial(scan.lti_scan, axis=1)),
            "block matmul 16": bidirectional_scan(partial(scan.lti_block_scan, block=16)),
            **{f"unrolled {T}": bidirectional_scan(partial(scan.lti_unrolled_scan, block=T)) for T in (4, 8, 16, 32)},
        },
    },
    "cauchy": {
        "title": "S4 Cauchy sums (bidirectional kernel, H 256, N/2 32)",
        "dims": "H x N/2 x L",
        "shapes": [("listops", 256, 32, 2048), ("pathfinder", 256, 32, 1024), ("pathx", 256, 32, 16384)],
        "inputs": cauchy_inputs,
        "variants": {"reciprocals + matmul": cauchy_conj, "fused sum": cauchy_fused},
    },
    "s4-kernel": {
        "title": "S4 kernel (bidirectional: 2 channels, N 64), Cauchy route against matrix powers",
        "dims": "H x N x L",
        # The S4 presets' width, state and length.
        "shapes": [("listops", 128, 64, 2048), ("pathfinder", 256, 64, 1024), ("pathx", 256, 64, 16384)],
        "inputs": s4_kernel_inputs,
        "variants_for": s4_kernel_variants,  # the length is static: variants are built per shape
    },
    "s4d-conv": {
        "title": "S4D bidirectional SSM: kernel + FFT convolution against chunked matmuls and the recurrence kernel",
        "dims": "B x L x H x N",
        # The S4D presets' batch, length, width and state.
        "shapes": [
            ("listops", 50, 2048, 128, 64), ("listops-reference", 32, 2048, 256, 4), ("pathfinder", 64, 1024, 256, 64),
            ("pathx", 16, 16384, 256, 64),
        ],
        "inputs": s4d_conv_inputs,
        "variants_for": s4d_conv_variants,
    },
    "mamba-scan": {
        "title": "Mamba selective scan (one direction): XLA route against the fused Pallas kernel",
        "dims": "B x L x E x N",
        # The Mamba presets' batch, length, inner width E = 2 d_model and state.
        "shapes": [("listops", 50, 2048, 128, 16), ("pathfinder", 64, 1024, 320, 16), ("pathx", 32, 16384, 224, 16)],
        "inputs": mamba_scan_inputs,
        "variants_for": mamba_scan_variants,
    },
    "glu": {
        "title": "GELU, dense layer to 2H and GLU (model.OutputActivation 'glu')",
        "dims": "B x L x H",
        # The S4 / S4D presets' training shapes.
        "shapes": [("listops", 50, 2048, 128), ("pathfinder", 64, 1024, 256), ("pathx", 16, 16384, 256)],
        "inputs": glu_inputs,
        "variants": {"one (H, 2H) matmul": glu_one_matmul, "two (H, H) matmuls": glu_two_matmuls},
    },
    "s5-projections": {
        "title": "S5 input and output projections",
        "dims": "B x L x H x P",
        # P: the states kept (S5 halves them under conjugate symmetry); the readout reads 2P.
        "shapes": [("s5 pathfinder", 64, 1024, 192, 128), ("s5_ptd pathfinder", 64, 1024, 192, 256),
                   ("s5 pathx", 32, 16384, 128, 128), ("s5_ptd pathx", 32, 16384, 128, 256)],
        "inputs": projection_inputs,
        "variants": {"complex": projections_complex, "real": projections_real},
    },
}


# ----------------------------------------------------------------------------------------------


def fwd_bwd(f):
    def run(primals, cotangent):
        y, pull = jax.vjp(f, *primals)
        return y, pull(cotangent)

    return jax.jit(run)


def measure(lever: dict, name: str, dims: tuple, steps: int, only: list[str] | None = None) -> list[dict]:
    primals, cotangent = lever["inputs"](*dims)
    rows, ref = [], None
    variants = lever["variants_for"](*dims) if "variants_for" in lever else lever["variants"]
    if only:  # the first variant stays: it is what the others are compared with
        first = next(iter(variants))
        variants = {k: f for k, f in variants.items() if k == first or any(w in k for w in only)}
    for variant, f in variants.items():
        compiled = fwd_bwd(f).lower(primals, cotangent).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        out = jax.tree.leaves(compiled(primals, cotangent))
        ref = out if ref is None else ref
        times = summarize_times(time_calls(compiled, (primals, cotangent), warmup=3, reps=steps))
        rows.append({
            "shape": name, "dims": list(dims), "variant": variant,
            "median_ms": times["median"] * 1e3, "p10_ms": times["p10"] * 1e3, "p90_ms": times["p90"] * 1e3,
            "xla_gb": float(cost.get("bytes accessed", 0.0)) / 1e9,
            # Every variant computes the same thing: compared with the first, so a faster wrong one cannot win.
            "max_rel_diff": max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(a)) + 1e-30)) for a, b in zip(ref, out)),
        })
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("lever", choices=sorted(LEVERS))
    p.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "levers")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--shapes", help="comma-separated shape names (default: all of the lever's)")
    p.add_argument("--variants", help="comma-separated parts of variant names: only those (and the first, the baseline)")
    args = p.parse_args(argv)
    lever = LEVERS[args.lever]
    wanted = args.shapes.split(",") if args.shapes else [s[0] for s in lever["shapes"]]
    only = args.variants.split(",") if args.variants else None
    rows = [r for name, *dims in lever["shapes"] if name in wanted for r in measure(lever, name, tuple(dims), args.steps, only)]
    device = jax.devices()[0]
    header = ["shape", lever["dims"], "variant", "median ms (p10-p90)", "XLA GB", "max rel diff"]
    table = markdown_table(header, [
        [r["shape"], " x ".join(map(str, r["dims"])), r["variant"],
         f"{r['median_ms']:.3f} ({r['p10_ms']:.3f}-{r['p90_ms']:.3f})", f"{r['xla_gb']:.2f}", f"{r['max_rel_diff']:.1e}"]
        for r in rows
    ])
    print(table)
    command = "python scripts/bench_levers.py " + " ".join(sys.argv[1:] if argv is None else argv)
    stem = f"{args.lever}-{device_slug(device.device_kind)}-{dt.datetime.now():%Y-%m-%d_%H%M%S}"
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"lever": args.lever, "device": device.device_kind, "jax": jax.__version__, "command": command, "rows": rows}
    write_text(args.out / f"{stem}.json", json.dumps(meta, indent=1) + "\n")
    write_text(args.out / f"{stem}.md", f"# {lever['title']}, {device.device_kind}\n\njax {jax.__version__}; command: "
               f"`{command}`. Forward + backward (vjp), median of {args.steps} calls.\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
