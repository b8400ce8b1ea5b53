"""Convolution-mode computation of a diagonal SSM: kernel from a Vandermonde product, then FFT conv.

Layouts: sequences are (..., L, H) (time before channels, matching the (B, L, H) layers), kernels
are (H, L) (time last, as the Vandermonde product produces them).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from ssm_lra.ssm.sharding import batch_parallel

__all__ = ["bidirectional_fft_conv", "causal_fft_conv", "fft_length", "ssm_fft_conv", "vandermonde_kernel", "with_skip"]


def vandermonde_kernel(Abar, CB, L: int, log_Abar=None):
    """Real SSM convolution kernel K[..., l] = 2 Re(sum_n CB[..., n] Abar[..., n]^l), l = 0..L-1.

    The state keeps one of each conjugate pair; the other half contributes the complex conjugate of
    each term, which is where 2 Re comes from.

    Abar^l is computed as exp(l log Abar) (one exp per entry, no sequential powers, and no overflow
    of repeated products). For ZOH, log Abar = dt Lambda is known exactly: pass it as `log_Abar`
    (then `Abar` is not used and may be None). Otherwise the principal complex log of Abar is taken;
    any branch gives the same integer powers.

    Abar / log_Abar: (..., N); CB: (..., N), broadcastable against it (e.g. (channels, H, N) against
    (H, N)). Returns a real array (..., L).
    """
    if log_Abar is None:
        log_Abar = jnp.log(Abar)
    # Blocked powers: with l = q T + r, Abar^l = Abar^(qT) Abar^r, so the kernel is one batched
    # matmul of (Q, N) by (N, T) per channel. Only (N, Q) and (N, T) powers are formed instead of
    # the (N, L) Vandermonde matrix, which at Path-X length is a gigabyte per layer (and its
    # gradient another).
    T = block_length(L)
    Q = -(-L // T)
    real = jnp.real(log_Abar).dtype
    low = jnp.exp(log_Abar[..., None] * jnp.arange(T, dtype=real))  # (..., N, T)
    high = jnp.exp(log_Abar[..., None] * (T * jnp.arange(Q, dtype=real)))  # (..., N, Q)
    weighted = jnp.swapaxes(CB[..., None] * high, -1, -2)  # (..., Q, N)
    K = jnp.matmul(weighted, low)  # (..., Q, T)
    K = K.reshape(K.shape[:-2] + (Q * T,))[..., :L]
    return 2.0 * K.real


def block_length(L: int) -> int:
    """The power of two nearest sqrt(L) from above: the inner block of the blocked Vandermonde
    product, which keeps both factors (N x L/T and N x T) small."""
    return 1 << max(0, math.ceil(math.log2(max(L, 1)) / 2))


def fft_length(L: int) -> int:
    """Smallest power of two >= 2L: long enough that circular convolution of two length-L signals
    never wraps onto the first L outputs (which needs >= 2L - 1), and powers of two are the FFT's
    fast path."""
    return 1 << max(0, (2 * int(L) - 1).bit_length())


def _fft_rows(z):
    """The FFT along axis -2 of z (B, n, H) complex. With several devices each transforms only
    its own rows: XLA's partitioner would otherwise gather a batch-sharded z onto every device
    (sharding.batch_parallel)."""
    if jax.device_count() == 1:
        return jnp.fft.fft(z, axis=-2)
    return batch_parallel(lambda x: jnp.fft.fft(x, axis=-2), "b n h -> b n h")(z)


def _pack(u, n: int):
    """Real rows (M, B, L, H) -> complex rows (M * ceil(B/2), n, H), zero-padded along time to n:
    neighbouring rows (2i, 2i + 1) as real and imaginary parts where `_pairs_stay_on_one_device`,
    each row alone (imaginary part 0) otherwise."""
    M, B, L, H = u.shape
    u = jnp.pad(u, [(0, 0), (0, 0), (0, n - L), (0, 0)])
    if not _pairs_stay_on_one_device(B):
        return lax.complex(u, jnp.zeros_like(u)).reshape((-1, n, H))
    half = -(-B // 2)  # an odd batch gets a zero partner
    pairs = jnp.pad(u, [(0, 0), (0, 2 * half - B), (0, 0), (0, 0)]).reshape((-1, 2, n, H))
    return lax.complex(pairs[:, 0], pairs[:, 1])


def _unpack(w, shape):
    """The inverse of `_pack` for w = conj of the convolved rows: real rows of `shape` (M, B, L, H),
    the first L steps of each."""
    M, B, L, H = shape
    w = w[:, :L, :]
    if not _pairs_stay_on_one_device(B):
        return w.real.reshape(shape)
    half = -(-B // 2)
    return jnp.stack([w.real, -w.imag], axis=1).reshape((M, 2 * half, L, H))[:, :B]


def _convolve_spectrum(u, spectrum, n: int):
    """The first L steps of the circular convolution of every row of u (M, B, L, H), zero-padded to
    n, with the kernel whose DFT divided by n is `spectrum` (n, H); and the DFT of the packed rows.

    Only forward complex FFTs run: the inverse transform is conj(fft(conj(.))), its 1/n already in
    `spectrum`. XLA would run an irfft as an input copy, the transform and a separate scaling pass.
    """
    Z = _fft_rows(_pack(u, n))
    return _unpack(_fft_rows(jnp.conj(Z * spectrum)), u.shape), Z


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _circular_conv_rows(u, k_circ, n: int):
    return _circular_conv_rows_fwd(u, k_circ, n)[0]


def _circular_conv_rows_fwd(u, k_circ, n: int):
    spectrum = jnp.fft.fft(k_circ.astype(jnp.result_type(u.dtype, jnp.complex64)), n=n, axis=-1).T / n
    y, Z = _convolve_spectrum(u, spectrum, n)
    return y, (Z, spectrum, k_circ)


def _circular_conv_rows_bwd(n: int, residuals, dy):
    """The transpose of a circular convolution with a real kernel is the circular correlation: the
    convolution with the kernel's spectrum conjugated, so du takes the forward's own route (one
    packing pass and one unpacking pass that reads only the first L steps; differentiating the
    forward instead gives XLA two packing passes and an unpacking pass over all n steps).

    The kernel's gradient is the correlation of dy with u summed over rows,
    Re(ifft(sum conj(Z) G)) with G the DFT of the packed dy: the cross terms of a pair,
    conj(U_a) G_b - conj(U_b) G_a, are spectra of real signals times i, so they land in the
    imaginary part that Re drops.
    """
    Z, spectrum, k_circ = residuals
    du, G = _convolve_spectrum(dy, jnp.conj(spectrum), n)
    cross = jnp.sum(jnp.conj(Z) * G, axis=0)  # (n, H)
    dk = jnp.fft.ifft(cross.T, axis=-1).real[:, : k_circ.shape[-1]]
    return du, dk.astype(k_circ.dtype)


_circular_conv_rows.defvjp(_circular_conv_rows_fwd, _circular_conv_rows_bwd)


def _circular_conv(u, k_circ, n: int):
    """Circular convolution of u (..., L, H), zero-padded to n, with a real kernel (H, n) (or
    shorter, zero-padded); returns the first L outputs.

    Every sequence of the batch meets the same real kernel in a channel, so two neighbouring
    sequences travel as the real and imaginary parts of one complex signal and come out as the
    real and imaginary parts of the result (`_pack`). On an H200 this, with forward FFTs only, is
    about a quarter faster than rfft and irfft (results/bench/NOTES.md, lever 13). Neighbours (rows
    2i, 2i + 1) rather than far rows are paired so that a batch split across devices keeps each
    pair on one device (`_pairs_stay_on_one_device`). The pairing costs a sequence float32
    rounding relative to its partner's scale rather than its own, which the normalized
    activations of a batch make alike.
    """
    if u.ndim < 3:
        return _circular_conv(u[None], k_circ, n)[0]
    *lead, B, L, H = u.shape
    y = _circular_conv_rows(u.reshape((-1, B, L, H)), k_circ, n)
    return y.reshape((*lead, B, L, H))


def _pairs_stay_on_one_device(B: int) -> bool:
    """Whether neighbouring rows of a batch of B are on one device. Training splits the batch
    evenly over all devices (engine.distributed), so with D > 1 devices each holds B / D rows,
    and pairs straddle two devices when that is odd: then every row goes alone (twice the FFT
    work, but no data moves between devices)."""
    D = jax.device_count()
    return D == 1 or B % (2 * D) == 0


def with_skip(k, D):
    """The kernel k (..., H, lags) with D (H,) added at lag 0: convolving with it gives
    conv(u, k) + D u. The SSM's skip term then rides in the convolution (its gradient is the
    kernel's at lag 0) instead of taking a pass of its own over u forwards and backwards."""
    return k.at[..., 0].add(D.astype(k.dtype))


def ssm_fft_conv(u, K, D, bidirectional: bool):
    """An SSM layer's convolution by FFT: y = conv(u, K[0]) (+ the anti-causal conv with K[1]) + D u,
    the skip term riding in K[0]'s lag 0 (`with_skip`). K: (1 or 2, H, L); D: (H,)."""
    k_fwd = with_skip(K[0], D)
    return bidirectional_fft_conv(u, k_fwd, K[1]) if bidirectional else causal_fft_conv(u, k_fwd)


def causal_fft_conv(u, k):
    """Causal convolution y[i] = sum_{j<=i} k[i-j] u[j] along time, by FFT.

    u: (..., L, H) real; k: (H, L) real. Both are zero-padded to fft_length(L) so the circular
    convolution the FFT computes equals the linear one on the first L outputs.
    """
    L = u.shape[-2]
    if k.shape[-1] != L:
        raise ValueError(f"kernel length {k.shape[-1]} does not match sequence length {L}")
    return _circular_conv(u, k, fft_length(L))


def bidirectional_circular_kernel(k_fwd, k_bwd, n: int):
    """Lay a causal and an anti-causal kernel (H, L) into one circular kernel (H, n), n >= 2L.

    Layout along the last axis (index m of the circular kernel multiplies u[i - m mod n]):
      m = 0             : k_fwd[0] + k_bwd[0]   (both directions see the current input)
      m = 1 .. L-1      : k_fwd[m]              (past inputs, lag m)
      m = L .. n-L      : 0                     (gap; keeps the two halves from overlapping)
      m = n-L+1 .. n-1  : k_bwd[n-m]            (future inputs: lead j = n-m runs L-1 .. 1,
                                                 i.e. k_bwd[1:] reversed)
    With u zero-padded to n, lag i - j in -(L-1)..(L-1) lands on exactly one of these regions.
    """
    H, L = k_fwd.shape
    head = k_fwd.at[:, 0].add(k_bwd[:, 0])
    gap = jnp.zeros((H, n - 2 * L + 1), dtype=head.dtype)
    tail = k_bwd[:, :0:-1]
    return jnp.concatenate([head, gap, tail.astype(head.dtype)], axis=-1)


def bidirectional_fft_conv(u, k_fwd, k_bwd):
    """y = causal_conv(u, k_fwd) + reverse(causal_conv(reverse(u), k_bwd)), in a single FFT conv.

    The second term is y_bwd[i] = sum_{j>=i} k_bwd[j-i] u[j]: the SSM run on the time-reversed
    sequence. Rather than two convolutions we build one circular kernel holding both (see
    `bidirectional_circular_kernel`) and convolve once.

    u: (..., L, H); k_fwd, k_bwd: (H, L).
    """
    L = u.shape[-2]
    if k_fwd.shape[-1] != L or k_bwd.shape[-1] != L:
        raise ValueError(
            f"kernel lengths {k_fwd.shape[-1]}, {k_bwd.shape[-1]} do not match sequence length {L}"
        )
    n = fft_length(L)
    return _circular_conv(u, bidirectional_circular_kernel(k_fwd, k_bwd, n), n)
