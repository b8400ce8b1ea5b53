"""S5: one multi-input multi-output diagonal SSM shared by all channels, run as a parallel scan.

Unlike S4/S4D (H independent single-channel SSMs, computed as convolutions), S5 mixes the H
channels through one state of size P:
    x_k = Lambda_bar x_{k-1} + B_bar u_k,   y_k = Re(C~ x_k) + D u_k,
with Lambda (P,) diagonal complex, B~ (P, H), C~ (H, P), and a learned step per state. Because
Lambda is diagonal the recurrence is elementwise, so `scan.linear_scan` (an associative scan) gives
all L states in O(log L) depth.

Init (S5 paper): the eigendecomposition V diag(Lambda) V^-1 of a block-diagonal matrix with J
blocks of size P/J, each the normal part of HiPPO-LegS ("HiPPO-N", ssm_init="hippo") or its PTD
perturbation (ssm_init="ptd", see ptd.py); B~ = V^-1 B and C~ = C V for random B and C, i.e. the
random dense system (A_blocks, B, C) written in the eigenbasis. With conjugate symmetry only one
eigenpair of each conjugate pair is kept and the output is 2 Re(C~ x).

Parameters are real arrays (complex numbers as trailing (re, im) pairs), as in s4d.py.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jax import lax

from ssm_lra.ssm import Mixer
from ssm_lra.ssm.discretize import DISCRETIZATIONS
from ssm_lra.ssm.hippo import hippo_legs_normal_eig
from ssm_lra.ssm.s4d import as_complex, constant_init, log_uniform_dt_init
from ssm_lra.ssm.lti_kernel import BLOCK_P, lti_scan_fused
from ssm_lra.ssm.pallas_common import check_fused_scan_runs, resolve_scan
from ssm_lra.ssm.scan import check_chunk_size, linear_scan, lti_block_scan, lti_scan, lti_unrolled_scan

__all__ = ["C_INITS", "S5", "SSM_INITS", "SSM_PARAM_NAMES", "apply_s5", "block_diagonal_init"]

# The continuous system's Lambda, B and step: S5 trains them with Adam at the SSM learning rate and
# no weight decay (decaying Lambda_re would drag the poles onto the imaginary axis). C and D are
# ordinary weights.
SSM_PARAM_NAMES = frozenset({"Lambda_re", "Lambda_im", "B", "log_dt"})
SSM_INITS = ("hippo", "ptd")
C_INITS = ("trunc_standard_normal", "lecun_normal", "complex_normal")
# clip_eigs: real parts are clipped to at most this in the forward pass (S5's value).
CLIP_REAL = -1e-4


# ----------------------------------------------------------------------------------------------
# Init: block-diagonal eigendecompositions (numpy, complex128; run once per shape).


def hippo_block(n: int, conj_sym: bool):
    """Eigenpairs of LegS's normal part of size n: (Lambda, V, V^-1), V unitary so V^-1 = V^H.

    Full: eigh's order (increasing imaginary part). conj_sym: the n/2 with positive imaginary
    part (those of a real matrix pair up with their conjugates; n is even, and LegS's normal part
    has no zero frequency then), increasing.
    """
    Lambda, V = hippo_legs_normal_eig(n)
    if conj_sym:
        keep = np.argsort(Lambda.imag, kind="stable")[n - n // 2 :]
        Lambda, V = Lambda[keep], V[:, keep]
    return Lambda, V, V.conj().T


def ptd_block(n: int, conj_sym: bool):
    """PTD eigenpairs of LegS of size n (see ptd.py): V well-conditioned but not unitary, so
    V^-1 is the true inverse's rows; conj_sym keeps the half with non-negative imaginary part."""
    from ssm_lra.ssm import ptd

    if conj_sym:
        return ptd.ptd_conj_half(n)
    Lambda, V, _ = ptd.ptd_eig(n)
    return Lambda, V, ptd.ptd_inverse(n)


@functools.lru_cache(maxsize=None)
def block_diagonal_init(kind: str, P: int, J: int, conj_sym: bool):
    """Lambda (P2,), V (P, P2), V^-1 (P2, P) of J identical diagonalized blocks of size P/J.

    P2 = P/2 with conjugate symmetry, else P. V and V^-1 are block diagonal; with conj_sym they are
    the kept columns / rows of the full ones, so V^-1 V = I (P2) still holds. Read-only arrays.
    """
    block = {"hippo": hippo_block, "ptd": ptd_block}[kind]
    Lambda, V, Vinv = block(P // J, conj_sym)
    out = (
        np.tile(Lambda, J),
        scipy.linalg.block_diag(*([V] * J)),
        scipy.linalg.block_diag(*([Vinv] * J)),
    )
    for x in out:
        x.setflags(write=False)
    return out


def _complex_dtype(dtype):
    return jnp.result_type(dtype, jnp.complex64)


def as_pairs(z):
    """complex (...) -> real (..., 2) (re, im)."""
    return jnp.stack([z.real, z.imag], axis=-1)


def lazy(make_init):
    """An initializer built when first called: the numpy eigendecompositions behind it then run at
    init only, never when a trained model is applied."""
    return lambda key, shape, dtype=jnp.float32: make_init()(key, shape, dtype)


def vinv_b_init(Vinv):
    """B~ = V^-1 B with B (P, H) lecun-normal (S5: std 1/sqrt(P)), as (P2, H, 2) pairs."""

    def init(key, shape, dtype=jnp.float32):
        H = shape[1]
        B = nn.initializers.lecun_normal()(key, (Vinv.shape[1], H), dtype)
        return as_pairs(jnp.asarray(Vinv, _complex_dtype(dtype)) @ B).astype(dtype)

    return init


def c_init(kind: str, V, channels: int):
    """C~ (H, channels * P2, 2): one block per direction, concatenated like S5's [C1 C2].

    trunc_standard_normal (S5's default): C (H, P) complex with each part truncated normal of std
      1/sqrt(P) (S5 draws each row lecun-normal), then C~ = C V;
    lecun_normal: flax lecun_normal over the whole (H, P, 2) array (std 1/sqrt(H P)), then C V;
    complex_normal: C~ itself complex normal with variance 1/2 per part (no V).
    """

    def init(key, shape, dtype=jnp.float32):
        H = shape[0]
        if kind == "complex_normal":
            return jnp.sqrt(jnp.asarray(0.5, dtype)) * jax.random.normal(key, shape, dtype)
        if kind == "trunc_standard_normal":
            draw = nn.initializers.variance_scaling(
                1.0, "fan_in", "truncated_normal", in_axis=-2, out_axis=-1, batch_axis=(0,)
            )
        else:
            draw = nn.initializers.lecun_normal()
        Vc = jnp.asarray(V, _complex_dtype(dtype))
        blocks = [
            as_complex(draw(k, (H, V.shape[0], 2), dtype)) @ Vc for k in jax.random.split(key, channels)
        ]
        return as_pairs(jnp.concatenate(blocks, axis=-1)).astype(dtype)

    return init


# ----------------------------------------------------------------------------------------------
# Pure functions of the parameters.


def state_matrix(Lambda_re, Lambda_im, clip_eigs: bool):
    """Lambda = Lambda_re + i Lambda_im, with Re clipped to <= -1e-4 if clip_eigs (S5's guarantee of
    a stable system; off by default, as in S5)."""
    if clip_eigs:
        Lambda_re = jnp.minimum(Lambda_re, CLIP_REAL)
    return lax.complex(Lambda_re, Lambda_im)


# The ways to compute the states (the same states), by name: `model.mixer.scan`.
SCANS = {
    "associative": lambda a, b, block, reverse: linear_scan(a, b, axis=1, reverse=reverse),
    "lti": lambda a, b, block, reverse: lti_scan(a, b, axis=1, reverse=reverse),
    "blocked": lambda a, b, block, reverse: lti_block_scan(a, b, block, reverse=reverse),
    "unrolled": lambda a, b, block, reverse: lti_unrolled_scan(a, b, block, reverse=reverse),
}
BLOCKED_SCANS = ("blocked", "unrolled")
# One Pallas kernel per direction (ssm/lti_kernel.py; GPU only), or its interpreted form (any
# backend, slow: for checks). These also run the projections differently: see `fused_s5`.
FUSED_SCANS = ("fused", "fused_interpret")
# "auto" (the default): "fused" on a GPU when the layer keeps at least one kernel program's
# worth of states (BLOCK_P, 32); "lti" elsewhere. With fewer, most of each program idles: on an
# H200 S5-PTD ListOps (8 states kept) ran 3,732 seq/s fused against 4,561 by lti, while at 128
# states (Pathfinder, Path-X) the kernel was 1.2-1.6x faster (results/bench/NOTES.md, lever 10).
AUTO_SCAN_FALLBACK = "lti"


def fused_s5(Lambda_bar, B_bar, C_tilde, u, bidirectional: bool, interpret: bool):
    """Re(C~ x) of `apply_s5` with the states from the fused kernel. The kernel takes and gives
    real and imaginary parts apart, so the projections are real matmuls on the parts,
    B_bar u = (Re B_bar) u + i (Im B_bar) u and Re(C x) = Re(C) Re(x) - Im(C) Im(x): no complex
    array is built or taken apart on the way."""
    P2 = Lambda_bar.shape[0]
    x = u.astype(B_bar.real.dtype)
    b_re = jnp.einsum("blh,ph->blp", x, B_bar.real)
    b_im = jnp.einsum("blh,ph->blp", x, B_bar.imag)
    y = 0.0
    for d, reverse in enumerate((False, True) if bidirectional else (False,)):
        x_re, x_im = lti_scan_fused(
            Lambda_bar.real, Lambda_bar.imag, b_re, b_im, reverse=reverse, interpret=interpret
        )
        C = C_tilde[:, d * P2 : (d + 1) * P2]
        y = y + jnp.einsum("blp,hp->blh", x_re, C.real) - jnp.einsum("blp,hp->blh", x_im, C.imag)
    return y


def apply_s5(
    Lambda, B_tilde, C_tilde, log_dt, u, discretization="zoh", conj_sym=True, bidirectional=False,
    scan="lti", scan_block=None,
):
    """The SSM part of S5 (without D u): u (B, L, H) real -> (B, L, H) real.

    Lambda (P2,), B_tilde (P2, H), C_tilde (H, channels * P2) complex; log_dt (P2,).
    Discretize per state, push the inputs in (B_bar u_k), run x_k = Lambda_bar x_{k-1} + B_bar u_k
    as an associative scan over time (and, if bidirectional, the same recurrence backwards, its
    states concatenated after the forward ones so that [C1 C2] reads both), then read out
    Re(C~ x), doubled under conjugate symmetry for the dropped conjugate half. `scan` names the
    way the states are computed (`SCANS`; `scan_block` is the block length of the blocked ones).
    """
    dt = jnp.exp(log_dt)
    Lambda_bar, B_bar = DISCRETIZATIONS[discretization](Lambda[:, None], B_tilde, dt[:, None])
    Lambda_bar = Lambda_bar[:, 0]
    if scan in FUSED_SCANS:
        y = fused_s5(Lambda_bar, B_bar, C_tilde, u, bidirectional, interpret=scan == "fused_interpret")
        return 2.0 * y if conj_sym else y
    Bu = jnp.einsum("blh,ph->blp", u.astype(B_bar.dtype), B_bar)
    def states(reverse):
        return SCANS[scan](Lambda_bar, Bu, scan_block, reverse)

    xs = states(False)
    if bidirectional:
        xs = jnp.concatenate([xs, states(True)], axis=-1)
    y = jnp.einsum("blp,hp->blh", xs, C_tilde).real
    return 2.0 * y if conj_sym else y


# ----------------------------------------------------------------------------------------------


class S5(Mixer):
    """S5 layer: (B, L, H) -> (B, L, H).

    Attributes:
      d_model: H. d_state: P, the full state size. blocks: J, the number of diagonal blocks of the
        init (block size P/J). conj_sym: keep P/2 states, output 2 Re(.). discretization: zoh |
        bilinear. dt_min, dt_max: log-uniform range of the per-state step. bidirectional: add a
        backward scan with its own C. c_init: see `c_init`. clip_eigs: keep Re(Lambda) <= -1e-4.
        ssm_init: "hippo" (HiPPO-N, S5) or "ptd" (perturbed LegS, S5-PTD). scan: how the states
        are computed, all giving the same states (`SCANS`): "auto" (the default: "fused" on a
        GPU with at least 32 states kept, "lti" otherwise), "lti" (an associative scan that
        moves only B_bar u, Lambda_bar being the same at every step; the fastest XLA route on an
        H200),
        "associative" (jax.lax.associative_scan of (Lambda_bar, B_bar u) pairs), "blocked" and
        "unrolled" (blocks of `scan_block` steps by matmuls or unrolled steps), "fused" (one
        Pallas GPU kernel per direction, `fused_s5`) or "fused_interpret". scan_block: T for
        the blocked scans. states). param_dtype: dtype of the real parameters.
    Parameters: Lambda_re, Lambda_im, log_dt (P2,); B (P2, H, 2); C (H, channels * P2, 2); D (H,).
    """

    SSM_PARAM_NAMES = SSM_PARAM_NAMES

    d_model: int
    d_state: int = 64
    blocks: int = 1
    conj_sym: bool = True
    discretization: str = "zoh"
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    bidirectional: bool = False
    c_init: str = "trunc_standard_normal"
    clip_eigs: bool = False
    ssm_init: str = "hippo"
    scan: str = "auto"
    scan_block: int | None = None
    param_dtype: Any = jnp.float32

    @property
    def local_state(self) -> int:
        """P2: the number of complex states actually stored."""
        return self.d_state // 2 if self.conj_sym else self.d_state

    def resolved_scan(self) -> str:
        """The scan `scan` names on this backend: auto is the fused kernel on a GPU with at least
        BLOCK_P states, AUTO_SCAN_FALLBACK otherwise."""
        return resolve_scan(self.scan, AUTO_SCAN_FALLBACK, kernel_pays=self.local_state >= BLOCK_P)

    def routes(self) -> dict[str, str]:
        return {"scan": self.resolved_scan()}

    def check_options(self):
        def is_int(x):
            return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

        if not is_int(self.d_state) or self.d_state < 1:
            raise ValueError(f"d_state must be a positive integer, got {self.d_state!r}")
        valid = ("auto", *SCANS, *FUSED_SCANS)
        if self.scan not in valid:
            raise ValueError(f"unknown S5 scan {self.scan!r}; valid ones are {', '.join(map(repr, valid))}")
        if self.scan == "fused":
            check_fused_scan_runs(fallback=AUTO_SCAN_FALLBACK)
        if self.scan in BLOCKED_SCANS or self.scan_block is not None:
            check_chunk_size(self.scan_block)
        if not is_int(self.blocks) or self.blocks < 1:
            raise ValueError(f"blocks must be a positive integer, got {self.blocks!r}")
        if self.d_state % self.blocks:
            raise ValueError(f"d_state={self.d_state} is not divisible by blocks={self.blocks}")
        if self.conj_sym and (self.d_state // self.blocks) % 2:
            raise ValueError(
                f"conj_sym needs an even block size d_state/blocks, got {self.d_state}/{self.blocks}"
            )
        for key, value, valid in (
            ("discretization", self.discretization, tuple(DISCRETIZATIONS)),
            ("c_init", self.c_init, C_INITS),
            ("ssm_init", self.ssm_init, SSM_INITS),
        ):
            if value not in valid:
                raise ValueError(f"unknown S5 {key} {value!r}; valid ones are {', '.join(map(repr, valid))}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")

    def setup(self):
        H, P2, pd = self.d_model, self.local_state, self.param_dtype

        def eig():
            return block_diagonal_init(self.ssm_init, self.d_state, self.blocks, self.conj_sym)

        self.Lambda_re = self.param("Lambda_re", lazy(lambda: constant_init(eig()[0].real)), (P2,), pd)
        self.Lambda_im = self.param("Lambda_im", lazy(lambda: constant_init(eig()[0].imag)), (P2,), pd)
        self.B = self.param("B", lazy(lambda: vinv_b_init(eig()[2])), (P2, H, 2), pd)
        self.C = self.param(
            "C", lazy(lambda: c_init(self.c_init, eig()[1], self.channels)), (H, self.channels * P2, 2), pd
        )
        self.D = self.param("D", nn.initializers.normal(stddev=1.0), (H,), pd)
        self.log_dt = self.param("log_dt", log_uniform_dt_init(self.dt_min, self.dt_max), (P2,), pd)

    def __call__(self, u, mask=None):
        """u: (B, L, H) real -> (B, L, H) of u's dtype.

        `mask` (B, L) zeroes the padded inputs once more, so real positions never see the padding
        whatever the caller left there: a zero input keeps the state at zero, so the backward scan
        reaches the last real position with x = 0, exactly as for the unpadded sequence.
        """
        if u.shape[-1] != self.d_model:
            raise ValueError(f"expected {self.d_model} channels in the last axis, got {u.shape}")
        x = u.astype(jnp.promote_types(u.dtype, self.param_dtype))
        if mask is not None:
            x = x * mask[..., None].astype(x.dtype)
        Lambda = state_matrix(self.Lambda_re, self.Lambda_im, self.clip_eigs)
        y = apply_s5(
            Lambda.astype(_complex_dtype(x.dtype)),
            as_complex(self.B).astype(_complex_dtype(x.dtype)),
            as_complex(self.C).astype(_complex_dtype(x.dtype)),
            self.log_dt.astype(x.dtype),
            x,
            self.discretization,
            self.conj_sym,
            self.bidirectional,
            self.resolved_scan(),
            self.scan_block,
        )
        y = y + self.D.astype(x.dtype) * x
        return y.astype(u.dtype)
