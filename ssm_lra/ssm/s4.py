"""S4: a state-space layer with a diagonal-plus-low-rank (DPLR) state matrix, computed as a long
convolution whose kernel comes from its generating function (Gu et al., "Efficiently Modeling Long
Sequences with Structured State Spaces"; HiPPO-LegS init).

Each of the H channels is an independent SISO SSM with, in the eigenbasis of HiPPO-LegS's normal
part, state matrix A = Lambda - P P^H (Lambda diagonal complex, P one column: rank 1, with Q = P
as for LegS). Only one eigenvalue of each conjugate pair is stored (N/2 of them); the other half
has the conjugate Lambda, P, B and C, so the N-dimensional system is equivalent to a real one and
its kernel is real. The layer:
  1. evaluates the truncated generating function of the bilinear-discretized SSM at the L-th roots
     of unity, through a Cauchy kernel plus a Woodbury (Sherman-Morrison) correction for P P^H
     (`dplr_generating_function`; S4 paper, Algorithm 1 and Lemma C.3),
  2. inverse-FFTs it into the length-L kernel K (`s4_kernel`),
  3. convolves K (with the skip term D in its lag 0) with the input by FFT.
The same kernel can also come from matrix powers (`kernel_method="powers"`, `s4_kernel_powers`):
the N-dimensional system written in real coordinates, Abar^(2^j) by repeated squaring, and
K[qT + r] = Ctilde (I - Abar^L)^-1 Abar^(qT) Abar^r Bbar as one (Q x N) @ (N x T) product per
channel, with T Q >= L about sqrt(L) each. It never forms the (H, N/2, L) Cauchy reciprocals
that dominate the Cauchy route at long L; its work grows with N^3 log L instead.

The output matrix is stored as Ctilde = C (I - Abar^L): the generating function of the length-L
kernel is C (I - Abar^L ω^L)(I - Abar ω)^-1 Bbar, which at the L-th roots of unity (ω^L = 1)
becomes Ctilde (I - Abar ω)^-1 Bbar, with no matrix power. So for any length L the layer is the
exact length-L SSM kernel with C = Ctilde (I - Abar^L)^-1. At init Ctilde is set from a random
complex normal C and the first length the layer sees (`ctilde_init`), as the official S4 code
does when it first builds the kernel; afterwards Ctilde itself is the trained parameter.

Parameters are real arrays (complex numbers as trailing (re, im) pairs), as in S4D.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssm_lra.ssm import Mixer
from ssm_lra.ssm.conv import ssm_fft_conv
from ssm_lra.ssm.hippo import dplr_legs
from ssm_lra.ssm.s4d import (
    as_complex,
    complex_normal_init,
    constant_init,
    log_uniform_dt_init,
    state_matrix,
)

__all__ = [
    "S4",
    "SSM_PARAM_NAMES",
    "bilinear_nodes",
    "bilinear_state_dplr",
    "cauchy_conj",
    "ctilde_from_c",
    "dplr_generating_function",
    "dplr_real_system",
    "kernel_by_powers",
    "s4_kernel",
    "s4_kernel_powers",
    "woodbury_rank1",
]

# Parameters of the continuous SSM (A = Lambda - P P^H, B, dt): the official S4 code gives them
# the SSM learning rate and no weight decay; C (stored as Ctilde) and D are ordinary weights.
SSM_PARAM_NAMES = frozenset({"log_dt", "log_A_real", "A_imag", "P", "B"})


# ----------------------------------------------------------------------------------------------
# The kernel: pure functions of the parameters, one per equation.


def bilinear_nodes(L: int, dt):
    """Where to evaluate the continuous resolvent, and by what to scale it (S4 Lemma C.3).

    The kernel's DFT at the rfft frequencies ω_k = exp(-2πik/L), k = 0..L//2, is the generating
    function Ctilde (I - Abar ω)^-1 Bbar. For the bilinear Abar = (I - dt/2 A)^-1 (I + dt/2 A),
    Bbar = (I - dt/2 A)^-1 dt B, factoring (I - dt/2 A) out of I - ω Abar gives

        (I - ω Abar)^-1 Bbar = 2/(1+ω) (z I - A)^-1 B,   z = (2/dt) (1-ω)/(1+ω),

    so only the continuous resolvent at z is needed. With the half angle φ_k = πk/L,
    (1-ω)/(1+ω) = i tan φ and 2/(1+ω) = 1 + i tan φ: the nodes lie on the imaginary axis, and
    computing tan φ in float64 numpy (L is static) keeps them exact. At the Nyquist node
    (L even, ω = -1) tan φ = tan(fl(π/2)) ~ 1.6e16 stands in for infinity; the scaled resolvent
    then equals its limit (dt/2) Ctilde B to working precision.

    dt: (H,) real. Returns z (H, L//2+1) complex and the scale 2/(1+ω) (L//2+1,) complex.
    """
    t = jnp.asarray(np.tan(np.pi * np.arange(L // 2 + 1) / L), dtype=dt.dtype)
    z = (2.0 / dt)[:, None] * t * 1j
    scale = 1.0 + 1j * t
    return z, scale


def cauchy_conj(v, z, w):
    """Cauchy kernel over conjugate pairs: sum_n v_n / (z - w_n) + conj(v_n) / (z - conj(w_n)).

    The stored half (w_n, v_n) stands for the pairs of a real system; the dropped half contributes
    the second term. The reciprocals 1/(z - w) are formed once and shared by all the vectors v
    (a contraction over n), and the two fractions are not merged over (z - w)(z - conj w), so the
    huge Nyquist node is never squared. Full float32 precision is asked for explicitly: GPUs
    otherwise may run float32 contractions in TF32 (~1e-3 relative error in the kernel).

    v: (..., H, N2), z: (H, M), w: (H, N2) -> (..., H, M).
    """
    z = z[..., None, :]
    w = w[..., None]

    def contract(vectors, reciprocals):
        return jnp.einsum("...hn,hnm->...hm", vectors, reciprocals, precision="highest")

    return contract(v, 1.0 / (z - w)) + contract(jnp.conj(v), 1.0 / (z - jnp.conj(w)))


def woodbury_rank1(r00, r01, r10, r11):
    """c (R^-1 + u v^H)^-1 b from products with the easy inverse R (Sherman-Morrison).

    (R^-1 + u v^H)^-1 = R - R u (1 + v^H R u)^-1 v^H R, so with r00 = c R b, r01 = c R u,
    r10 = v^H R b and r11 = v^H R u the rank-1 term costs one division instead of a matrix
    inverse. In the kernel R = (zI - Lambda)^-1 is diagonal, u = v = P (A = Lambda - P P^H) and
    each r is a Cauchy sum per node; `bilinear_state_dplr` passes matrices (c = b = I) to get the
    whole inverse.
    """
    return r00 - r01 * r10 / (1.0 + r11)


def dplr_generating_function(Lambda, P, B, C, dt, L: int):
    """DFT of the length-L kernel of the bilinear SSM (Lambda - P P^H, B, C = Ctilde), at the rfft
    frequencies: 2/(1+ω) Ctilde (zI - Lambda + P P^H)^-1 B (see `bilinear_nodes`).

    The four Cauchy sums of `woodbury_rank1` (per output channel) are computed in one call by
    stacking the left vectors [Ctilde; conj(P)] against the right ones [B, P].

    Lambda, P, B: (H, N2) complex; C: (channels, H, N2) complex; dt (H,).
    Returns (channels, H, L//2+1) complex.
    """
    z, scale = bilinear_nodes(L, dt)
    left = jnp.concatenate([C, jnp.conj(P)[None]], axis=0)  # (channels+1, H, N2)
    right = jnp.stack([B, P], axis=0)  # (2, H, N2)
    r = cauchy_conj(left[:, None] * right[None], z, Lambda)  # (channels+1, 2, H, M)
    return scale * woodbury_rank1(r[:-1, 0], r[:-1, 1], r[-1, 0], r[-1, 1])


def s4_kernel(log_dt, log_A_real, A_imag, P, B, C, L: int):
    """The real convolution kernel (channels, H, L) of the DPLR SSM, by inverse FFT of its
    generating function at the L-th roots of unity (irfft: the kernel is real, so half the
    frequencies determine it).

    log_dt (H,), log_A_real / A_imag (H, N2), P / B (H, N2, 2), C = Ctilde (channels, H, N2, 2).
    """
    dt = jnp.exp(log_dt)
    Lambda = state_matrix(log_A_real, A_imag)
    k_f = dplr_generating_function(
        Lambda, as_complex(P), as_complex(B), as_complex(C), dt, L
    )
    return jnp.fft.irfft(k_f, n=L, axis=-1)


# ----------------------------------------------------------------------------------------------
# Dense forms, used once at init to turn a random C into Ctilde.


def conjugate_pairs(x):
    """(..., N2) stored half -> (..., N) full vector [x, conj x] in the basis [V, conj V]."""
    return jnp.concatenate([x, jnp.conj(x)], axis=-1)


def bilinear_state_dplr(Lambda, P, dt):
    """The full (..., N, N) bilinear Abar = (I - dt/2 A)^-1 (I + dt/2 A) of A = diag(lam) - p p^H
    (lam = [Lambda, conj Lambda], p = [P, conj P]: the N-dimensional system the stored halves
    stand for).

    Since I + dt/2 A = 2I - (I - dt/2 A), Abar = 2 (I - dt/2 A)^-1 - I, and I - dt/2 A is the
    diagonal diag(1 - dt/2 lam) plus the rank-1 term (dt/2) p p^H, so its inverse is the
    Sherman-Morrison formula of `woodbury_rank1` with R = diag(1 / (1 - dt/2 lam)): no general
    linear solve. (discretize.py covers the purely diagonal case.)

    Lambda, P: (..., N2) complex; dt broadcastable to (...).
    """
    lam, p = conjugate_pairs(Lambda), conjugate_pairs(P)
    h = (0.5 * dt)[..., None]
    r = 1.0 / (1.0 - h * lam)  # diagonal of R
    eye = jnp.eye(lam.shape[-1], dtype=lam.dtype)
    inverse = woodbury_rank1(
        r[..., None] * eye,  # R
        (h * r * p)[..., :, None],  # R u, u = (dt/2) p
        (jnp.conj(p) * r)[..., None, :],  # p^H R
        jnp.sum(h * jnp.conj(p) * r * p, axis=-1)[..., None, None],  # p^H R u
    )
    return 2.0 * inverse - eye


def ctilde_from_c(C, Abar_L):
    """Ctilde = C (I - Abar^L), kept half: the output vector that makes the generating function at
    the L-th roots of unity that of the length-L kernel (see the module docstring).

    C (..., H, N2) complex (stored half), Abar_L (H, N, N) full. The full Ctilde is again a
    conjugate pair [Ctilde, conj Ctilde] (Abar_L commutes with swapping the halves and conjugating),
    so dropping the second half loses nothing.
    """
    c = conjugate_pairs(C)
    c = c - jnp.einsum("...hm,hmn->...hn", c, Abar_L)
    return c[..., : C.shape[-1]]


def ctilde_init(L: int):
    """flax init for Ctilde: C ~ complex normal (variance 1/2 per part, as S4D's C), turned into
    Ctilde = C (I - Abar^L) for the initial A, dt and the length L of the first call."""

    def init(key, shape, dtype, log_dt, log_A_real, A_imag, P):
        C = as_complex(complex_normal_init(0.5)(key, shape, dtype))
        Abar = bilinear_state_dplr(state_matrix(log_A_real, A_imag), as_complex(P), jnp.exp(log_dt))
        Abar_L = jnp.linalg.matrix_power(Abar, L)
        Ct = ctilde_from_c(C, Abar_L)
        return jnp.stack([Ct.real, Ct.imag], axis=-1).astype(dtype)

    return init


def complex_pairs(x: np.ndarray) -> np.ndarray:
    """complex (...) -> real (..., 2) (re, im) pairs."""
    return np.stack([x.real, x.imag], axis=-1)


# ----------------------------------------------------------------------------------------------
# The same kernel by matrix powers of the real N-dimensional system.


def matmul(a, b):
    """Matrix product at full float32 precision (GPUs otherwise may use TF32, ~1e-3 relative)."""
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def real_pair_basis(N2: int) -> np.ndarray:
    """The unitary U (N, N) with U [x; conj x] = sqrt(2) [Re x; -Im x]: it takes the conjugate-pair
    coordinates of the stored halves to real ones, so U M U^H is real for every matrix M of the
    system (one that commutes with swapping the halves and conjugating)."""
    eye = np.eye(N2)
    return np.block([[eye, eye], [1j * eye, -1j * eye]]) / np.sqrt(2)


def dplr_real_system(Lambda, P, B, C, dt):
    """The bilinear-discretized DPLR system in real coordinates: Abar (H, N, N), Bbar (H, N) and
    Ctilde (channels, H, N), real, with Ctilde Abar^l Bbar equal to the complex system's.

    Abar from `bilinear_state_dplr`; Bbar = (I - dt/2 A)^-1 dt B = (Abar + I) dt B / 2, since
    Abar = 2 (I - dt/2 A)^-1 - I. Lambda, P, B: (H, N2) complex; C (channels, H, N2) complex; dt (H,).
    """
    U = jnp.asarray(real_pair_basis(Lambda.shape[-1]), Lambda.dtype)
    Abar = matmul(matmul(U, bilinear_state_dplr(Lambda, P, dt)), jnp.conj(U).T).real
    b = matmul(conjugate_pairs(B), U.T).real  # (U b) as rows
    Bbar = 0.5 * dt[:, None] * (b + matmul(Abar, b[..., None])[..., 0])
    Ctilde = matmul(conjugate_pairs(C), jnp.conj(U).T).real
    return Abar, Bbar, Ctilde


def power_blocks(L: int) -> tuple[int, int]:
    """(T, Q): T a power of two near sqrt(L), Q = ceil(L / T), so that l = qT + r covers 0..L-1."""
    T = 1 << (((L - 1).bit_length() + 1) // 2)
    return T, -(-L // T)


def kernel_by_powers(Abar, Bbar, Ctilde, L: int):
    """K[c, h, l] = Ctilde (I - Abar^L)^-1 Abar^l Bbar for l < L: the length-L kernel of a dense
    SSM whose output vector is stored as Ctilde = C (I - Abar^L) (see the module docstring).

    The squares Abar^(2^j) are formed once (log2 L products); Abar^L is the product of those its
    binary digits pick; (I - Abar^L)^-1 is applied to Bbar by a solve, as it commutes with Abar.
    Then the columns Abar^r b (r < T) and the rows Ctilde Abar^(qT) (q < Q) each double by one
    product with a square per step, and K is their (Q x N) @ (N x T) product per channel.

    Abar (H, N, N), Bbar (H, N), Ctilde (channels, H, N), real -> (channels, H, L).
    """
    T, Q = power_blocks(L)
    squares = [Abar]
    for _ in range(1, L.bit_length()):
        squares.append(matmul(squares[-1], squares[-1]))
    Abar_L = None
    for j, square in enumerate(squares):
        if L >> j & 1:
            Abar_L = square if Abar_L is None else matmul(Abar_L, square)
    eye = jnp.eye(Abar.shape[-1], dtype=Abar.dtype)
    b = jnp.linalg.solve(eye - Abar_L, Bbar[..., None])  # (H, N, 1)
    columns = b
    for j in range(T.bit_length() - 1):  # T = 2^j steps: Abar^r b, r < T
        columns = jnp.concatenate([columns, matmul(squares[j], columns)], axis=-1)
    rows = Ctilde[..., None, :]  # (channels, H, 1, N)
    j = T.bit_length() - 1  # squares[j] = Abar^T
    while rows.shape[-2] < Q:
        rows = jnp.concatenate([rows, matmul(rows, squares[j])], axis=-2)
        j += 1
    K = matmul(rows[..., :Q, :], columns)  # (channels, H, Q, T)
    return K.reshape(*K.shape[:-2], Q * T)[..., :L]


def s4_kernel_powers(log_dt, log_A_real, A_imag, P, B, C, L: int):
    """`s4_kernel` (same arguments, same kernel) by matrix powers: `kernel_by_powers` of the real
    form of the system (`dplr_real_system`) instead of the Cauchy sums and an inverse FFT."""
    Abar, Bbar, Ctilde = dplr_real_system(
        state_matrix(log_A_real, A_imag), as_complex(P), as_complex(B), as_complex(C), jnp.exp(log_dt)
    )
    return kernel_by_powers(Abar, Bbar, Ctilde, L)


# The ways to the same kernel, by name: `model.mixer.kernel_method`.
KERNEL_METHODS = {"cauchy": s4_kernel, "powers": s4_kernel_powers}


# ----------------------------------------------------------------------------------------------


class S4(Mixer):
    """DPLR SSM layer: (B, L, H) -> (B, L, H), y = K * u + D u, HiPPO-LegS init.

    Attributes:
      d_model: H, the number of independent channels.
      d_state: N, the full state size (even); N // 2 conjugate pairs are stored.
      dt_min, dt_max: range of the log-uniform init of the step dt.
      bidirectional: add an anti-causal SSM sharing A, B, dt with its own C, run on the reversed
        sequence (the two kernels are summed into one FFT conv).
      kernel_method: how the kernel is computed, the same kernel either way (`KERNEL_METHODS`):
        "cauchy" (generating function by Cauchy sums, inverse FFT) or "powers" (matrix powers).
      param_dtype: dtype of the real parameters; float64 (with x64 on) gives a complex128 kernel.

    Parameters (N2 = N // 2; (..., 2) are complex (re, im) pairs):
      log_dt (H,); log_A_real, A_imag (H, N2): Lambda = -exp(log_A_real) + i A_imag;
      P (H, N2, 2): rank-1 term, A = Lambda - P P^H; B (H, N2, 2);
      C (channels, H, N2, 2): Ctilde (see the module docstring); D (H,).
    """

    SSM_PARAM_NAMES = SSM_PARAM_NAMES  # the mixer contract asks the class for it

    d_model: int
    d_state: int = 64
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    bidirectional: bool = False
    kernel_method: str = "cauchy"
    param_dtype: Any = jnp.float32

    def check_options(self):
        if self.kernel_method not in KERNEL_METHODS:
            raise ValueError(
                f"unknown S4 kernel_method {self.kernel_method!r}; valid ones are "
                + ", ".join(map(repr, KERNEL_METHODS))
            )
        if not isinstance(self.d_state, (int, np.integer)) or self.d_state < 2 or self.d_state % 2:
            raise ValueError(
                f"d_state must be an even integer >= 2 (N/2 conjugate pairs), got {self.d_state!r}"
            )
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")

    def routes(self) -> dict[str, str]:
        return {"kernel": self.kernel_method, "conv": "fft"}

    @nn.compact
    def ssm_parameters(self, L: int) -> dict:
        """Declare (at init) and return all parameters. A method rather than `setup` because the
        init of Ctilde depends on the sequence length L."""
        H, N2, pd = self.d_model, self.d_state // 2, self.param_dtype
        Lambda0, P0, B0, _ = dplr_legs(self.d_state)
        p = {}
        p["log_dt"] = self.param("log_dt", log_uniform_dt_init(self.dt_min, self.dt_max), (H,), pd)
        p["log_A_real"] = self.param(
            "log_A_real", constant_init(np.log(-Lambda0.real)), (H, N2), pd
        )
        p["A_imag"] = self.param("A_imag", constant_init(Lambda0.imag), (H, N2), pd)
        p["P"] = self.param("P", constant_init(complex_pairs(P0)), (H, N2, 2), pd)
        p["B"] = self.param("B", constant_init(complex_pairs(B0)), (H, N2, 2), pd)
        p["C"] = self.param(
            "C",
            ctilde_init(L),
            (self.channels, H, N2, 2),
            pd,
            p["log_dt"],
            p["log_A_real"],
            p["A_imag"],
            p["P"],
        )
        p["D"] = self.param("D", nn.initializers.normal(stddev=1.0), (H,), pd)
        return p

    def kernel(self, L: int):
        """The real convolution kernel (channels, H, L); channel 0 is causal, channel 1 (if
        bidirectional) is applied to the reversed sequence."""
        return self.kernel_of(self.ssm_parameters(L), L)

    def kernel_of(self, p: dict, L: int):
        kernel = KERNEL_METHODS[self.kernel_method]
        return kernel(p["log_dt"], p["log_A_real"], p["A_imag"], p["P"], p["B"], p["C"], L)

    def __call__(self, u, mask=None):
        """u: (B, L, H) real -> (B, L, H) of u's dtype.

        `mask` is accepted for the common mixer interface and not needed: the backbone zeroes padded
        inputs, and a linear time-invariant convolution of zeros adds nothing.
        """
        if u.shape[-1] != self.d_model:
            raise ValueError(f"expected {self.d_model} channels in the last axis, got {u.shape}")
        L = u.shape[-2]
        p = self.ssm_parameters(L)
        K = self.kernel_of(p, L)
        # Compute in the wider of input and parameter precision, hand back the input's dtype.
        x = u.astype(jnp.promote_types(u.dtype, K.dtype))
        K = K.astype(x.dtype)
        return ssm_fft_conv(x, K, p["D"], self.bidirectional).astype(u.dtype)
