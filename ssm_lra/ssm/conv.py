"""Convolution-mode computation of a diagonal SSM: kernel from a Vandermonde product, then FFT conv.

Layouts: sequences are (..., L, H) (time before channels, matching the (B, L, H) layers), kernels
are (H, L) (time last, as the Vandermonde product produces them).

The FFT convolution of the layers uses forward complex FFTs only (`packed_circular_conv`). XLA's
inverse real FFT on a GPU copies its input first (cuFFT's complex-to-real transform overwrites
it) and scales the output in a pass of its own; at the S4D Pathfinder preset those two cost more
than the transform itself, forwards and again in the backward pass, which runs an inverse real
FFT for every forward one. `rfft_circular_conv` is the textbook rfft / irfft form, kept as the
reference the packed one is checked and benchmarked against.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

__all__ = [
    "CIRCULAR_CONVS",
    "bidirectional_fft_conv",
    "causal_fft_conv",
    "fft_length",
    "packed_circular_conv",
    "rfft_circular_conv",
    "vandermonde_kernel",
]


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


def rfft_circular_conv(u, k_circ, n: int):
    """Circular convolution of u (..., L, H), zero-padded to n, with a length-n kernel (H, n);
    returns the first L outputs. By rfft and irfft."""
    L = u.shape[-2]
    u_f = jnp.fft.rfft(u, n=n, axis=-2)  # (..., n//2+1, H)
    k_f = jnp.fft.rfft(k_circ, n=n, axis=-1).T  # (n//2+1, H)
    y = jnp.fft.irfft(u_f * k_f, n=n, axis=-2)
    return y[..., :L, :]


# The real FFT of length n = 2M by a complex FFT of length M, both ways (the even and odd samples
# travel as the real and imaginary parts of one complex signal). Frequencies on axis -2.


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
    """`rfft_circular_conv` (same arguments, same result) by forward complex FFTs of length n/2.

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


# How the FFT convolution is computed, by name (same result): the layers use "packed".
CIRCULAR_CONVS = {"packed": packed_circular_conv, "rfft": rfft_circular_conv}


def causal_fft_conv(u, k, method: str = "packed"):
    """Causal convolution y[i] = sum_{j<=i} k[i-j] u[j] along time, by FFT.

    u: (..., L, H) real; k: (H, L) real. Both are zero-padded to fft_length(L) so the circular
    convolution the FFT computes equals the linear one on the first L outputs.
    """
    L = u.shape[-2]
    if k.shape[-1] != L:
        raise ValueError(f"kernel length {k.shape[-1]} does not match sequence length {L}")
    return CIRCULAR_CONVS[method](u, k, fft_length(L))


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


def bidirectional_fft_conv(u, k_fwd, k_bwd, method: str = "packed"):
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
    return CIRCULAR_CONVS[method](u, bidirectional_circular_kernel(k_fwd, k_bwd, n), n)
