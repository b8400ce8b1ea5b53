"""S4D: a diagonal state-space layer computed as a long convolution.

Each of the H channels is an independent SISO SSM with a diagonal complex state matrix of N/2
eigenvalues (the conjugate halves are implicit: outputs are 2 Re(.)). The layer:
  1. discretizes (Lambda, B) with a learned per-channel step dt,
  2. builds the length-L kernel K[l] = 2 Re(sum_n C_n Bbar_n Abar_n^l) by a Vandermonde product,
  3. convolves it with the input by FFT; the skip term D u rides in the kernel's lag 0.
With `conv="chunked"` steps 2-3 become matmuls over chunks of the sequence with the states passed
between chunks (chunked_conv.py): the same output without an FFT. With `conv="scan"` they are the
recurrence itself, run by a GPU kernel (diagonal_scan.py): the same output again.

Parameters are real arrays (complex numbers are stored as trailing (re, im) pairs) so optimizers,
weight decay masks and checkpoints never see complex dtypes.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ssm_lra.ssm import Mixer
from ssm_lra.ssm.chunked_conv import CHUNK_PRECISIONS, CHUNK_SCANS, chunked_ssm_conv
from ssm_lra.ssm.conv import ssm_fft_conv, vandermonde_kernel
from ssm_lra.ssm.diagonal_scan import diagonal_scan_conv
from ssm_lra.ssm.discretize import DISCRETIZATIONS
from ssm_lra.ssm.hippo import DIAGONAL_INITS, diagonal_init
from ssm_lra.ssm.pallas_common import check_fused_scan_runs, fused_scan_available, resolve_scan
from ssm_lra.ssm.scan import check_chunk_size

__all__ = ["CONVS", "S4D", "S4D_INITS", "SSM_PARAM_NAMES", "resolve_conv", "s4d_kernel", "s4d_system"]

# Parameters of the continuous SSM (A, B, dt). Training puts them in their own optimizer group
# (smaller learning rate, no weight decay): decaying A towards 0 would push the poles onto the
# imaginary axis, and large steps on log_dt change the layer's timescale abruptly.
SSM_PARAM_NAMES = frozenset({"log_dt", "log_A_real", "A_imag", "B"})
# The diagonal inits of hippo.py, plus "ptd": the perturb-then-diagonalize eigenvalues of LegS
# itself (S4-PTD, see ptd.py).
S4D_INITS = (*DIAGONAL_INITS, "ptd")
# How the layer applies its kernel, the same output every way: `model.mixer.conv`. "scan" is a
# Pallas GPU kernel; "scan_interpret" runs it through Pallas' interpreter on any backend (slow:
# for checks).
CONVS = ("auto", "fft", "chunked", "scan", "scan_interpret")
# What `conv="auto"` picks: on a GPU with at most this many states, the convolution by chunks of
# AUTO_CHUNK steps with TF32 products (the dense layers' precision there); the FFT otherwise. On an
# H200 at 6 x 256 channels, batch 32 x 2048, the chunks beat the FFT by 21 / 18 / 10 / 4% at N 4 /
# 8 / 16 / 32 and lose by 25% at N 64 (results/bench/NOTES.md, lever 19).
AUTO_CHUNKED_MAX_STATE = 32
AUTO_CHUNK = 64


def resolve_conv(conv: str, d_state: int, on_gpu: bool) -> str:
    """The route a layer of `d_state` states runs for `conv`: "auto" is "chunked" on a GPU at few
    states and "fft" otherwise; any other name is kept as given."""
    if conv != "auto":
        return conv
    return "chunked" if on_gpu and d_state <= AUTO_CHUNKED_MAX_STATE else "fft"


# ----------------------------------------------------------------------------------------------
# Pure functions of the parameters.


def as_complex(pair):
    """(..., 2) real (re, im) pairs -> (...) complex of the matching precision."""
    return lax.complex(pair[..., 0], pair[..., 1])


def state_matrix(log_A_real, A_imag):
    """Diagonal Lambda = -exp(log_A_real) + i A_imag: parametrizing the real part through exp keeps
    it strictly negative (a stable SSM) whatever the optimizer does."""
    return lax.complex(-jnp.exp(log_A_real), A_imag)


def s4d_system(log_dt, log_A_real, A_imag, B, C, discretization: str = "zoh"):
    """The discrete diagonal system: (log Abar (H, N2), W = C Bbar (channels, H, N2)), complex.
    Its kernel is K[l] = 2 Re(sum_n W_n Abar_n^l).

    log_dt (H,), log_A_real / A_imag (H, N2), B (H, N2, 2), C (channels, H, N2, 2).
    """
    dt = jnp.exp(log_dt)[:, None]  # (H, 1): one step per channel, shared by its states
    Lambda = state_matrix(log_A_real, A_imag)
    Abar, Bbar = DISCRETIZATIONS[discretization](Lambda, as_complex(B), dt)
    # For ZOH log(Abar) is dt Lambda exactly; skipping the complex log saves work and precision.
    log_Abar = dt * Lambda if discretization == "zoh" else jnp.log(Abar)
    return log_Abar, as_complex(C) * Bbar


def s4d_kernel(log_dt, log_A_real, A_imag, B, C, L: int, discretization: str = "zoh"):
    """The real convolution kernel (channels, H, L) of a diagonal SSM (arguments as `s4d_system`)."""
    log_Abar, W = s4d_system(log_dt, log_A_real, A_imag, B, C, discretization)
    return vandermonde_kernel(None, W, L, log_Abar=log_Abar)


# ----------------------------------------------------------------------------------------------
# Initializers (flax signature: key, shape, dtype).


def log_uniform_dt_init(dt_min: float, dt_max: float):
    """log dt ~ U[log dt_min, log dt_max]: channels spread over timescales dt_min .. dt_max."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(
            key, shape, dtype=dtype, minval=np.log(dt_min), maxval=np.log(dt_max)
        )

    return init


def constant_init(values: np.ndarray):
    """Broadcast fixed (deterministic) values to the parameter shape."""

    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.broadcast_to(jnp.asarray(values, dtype=dtype), shape)

    return init


def complex_normal_init(var_per_part: float = 0.5):
    """Complex normal as (re, im) pairs, given variance per part (0.5 each -> E|c|^2 = 1)."""

    def init(key, shape, dtype=jnp.float32):
        std = jnp.asarray(np.sqrt(var_per_part), dtype)
        return std * jax.random.normal(key, shape, dtype=dtype)

    return init


# ----------------------------------------------------------------------------------------------


class S4D(Mixer):
    """Diagonal SSM layer: (B, L, H) -> (B, L, H), y = K * u + D u.

    Attributes:
      d_model: H, the number of independent channels.
      d_state: N, the full state size; N // 2 complex states are kept (conjugate symmetry).
      ssm_init: diagonal init of Lambda, one of "legs", "inv", "lin" (see ssm_lra.ssm.hippo), or
        "ptd" (S4-PTD: eigenvalues of the perturbed LegS matrix and B = V^-1 B_legs; see ptd.py).
      discretization: "zoh" or "bilinear".
      dt_min, dt_max: range of the log-uniform init of the step dt.
      bidirectional: add an anti-causal SSM sharing A, B, dt with its own C, run on the reversed
        sequence (the two kernels are summed into one FFT conv).
      conv: "auto" (the measured fastest of the next two: "chunked" with chunks of `chunk_size` or
        64 steps and TF32 products on a GPU with d_state <= 32, "fft" otherwise: see
        `resolve_conv`), "fft" (kernel of length L, FFT convolution), "chunked" (`chunked_ssm_conv`: matmuls
        within chunks of `chunk_size` steps, states passed between chunks; `chunk_precision`
        "highest" keeps float32 products, "default" lets GPUs use TF32 tensor cores; `chunk_scan`
        carries the states across chunks: "auto" is the fused kernel on a GPU and "xla" elsewhere)
        or "scan" (`diagonal_scan_conv`: the recurrence in a GPU kernel, states on chip;
        "scan_interpret" is the same kernel interpreted, on any backend).
      param_dtype: dtype of the real parameters; float64 (with x64 on) gives a complex128 kernel.
    """

    SSM_PARAM_NAMES = SSM_PARAM_NAMES  # the registry reads it from the class

    d_model: int
    d_state: int = 64
    ssm_init: str = "inv"
    discretization: str = "zoh"
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    bidirectional: bool = False
    conv: str = "auto"
    chunk_size: int | None = None
    chunk_precision: str = "highest"
    chunk_scan: str = "auto"
    param_dtype: Any = jnp.float32

    def check_options(self):
        if self.discretization not in DISCRETIZATIONS:
            valid = ", ".join(repr(k) for k in DISCRETIZATIONS)
            raise ValueError(
                f"unknown discretization {self.discretization!r}; valid ones are {valid}"
            )
        if self.ssm_init not in S4D_INITS:
            valid = ", ".join(repr(k) for k in S4D_INITS)
            raise ValueError(f"unknown S4D ssm_init {self.ssm_init!r}; valid kinds are {valid}")
        if self.d_state < 2:
            raise ValueError(f"d_state must be >= 2 (N/2 complex states), got {self.d_state}")
        if self.ssm_init == "ptd" and self.d_state % 2:
            raise ValueError(
                f"ssm_init='ptd' keeps conjugate pairs, so d_state must be even, got {self.d_state}"
            )
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        if self.conv not in CONVS:
            raise ValueError(f"unknown conv {self.conv!r}; valid ones are {', '.join(map(repr, CONVS))}")
        if self.chunk_size is not None:
            check_chunk_size(self.chunk_size)
        if self.chunk_precision not in CHUNK_PRECISIONS:
            valid = ", ".join(map(repr, CHUNK_PRECISIONS))
            raise ValueError(f"unknown chunk_precision {self.chunk_precision!r}; valid ones are {valid}")
        if self.chunk_scan not in ("auto", *CHUNK_SCANS):
            valid = ", ".join(map(repr, ("auto", *CHUNK_SCANS)))
            raise ValueError(f"unknown chunk_scan {self.chunk_scan!r}; valid ones are {valid}")
        if self.conv == "chunked" and self.chunk_scan == "fused":
            check_fused_scan_runs("xla")
        if self.conv == "scan":
            check_fused_scan_runs("fft", option="conv", value="scan")

    def setup(self):
        H, N2 = self.d_model, self.d_state // 2
        pd = self.param_dtype
        if self.ssm_init == "ptd":
            from ssm_lra.ssm.ptd import ptd_diagonal_system

            # S4-PTD: Lambda = eigenvalues of LegS + E (real parts <= -1/2), and B = V^-1 B_legs
            # rather than ones. With ones, only Lambda would remember HiPPO; the point of PTD is that
            # the whole diagonal system (Lambda, V^-1 B, C V) is LegS's (A, B, C) up to the small E,
            # so its transfer function stays close to HiPPO's. V^-1 B is that system's input vector
            # (C is random anyway, so C V is just another random C). V is well-conditioned, so
            # ||V^-1 B|| ~ ||B_legs|| = N, the scale S4's DPLR init has too.
            Lambda0, B0 = ptd_diagonal_system(self.d_state)
            B0 = np.stack([B0.real, B0.imag], axis=-1)  # (N2, 2)
        else:
            Lambda0 = diagonal_init(self.ssm_init, self.d_state)  # (N2,) complex128, real parts -1/2
            # B = 1: any other constant is absorbed into C, so the init only fixes the scale.
            B0 = np.array([1.0, 0.0])

        self.log_dt = self.param("log_dt", log_uniform_dt_init(self.dt_min, self.dt_max), (H,), pd)
        self.log_A_real = self.param(
            "log_A_real", constant_init(np.log(-Lambda0.real)), (H, N2), pd
        )
        self.A_imag = self.param("A_imag", constant_init(Lambda0.imag), (H, N2), pd)
        self.B = self.param("B", constant_init(B0), (H, N2, 2), pd)
        self.C = self.param("C", complex_normal_init(0.5), (self.channels, H, N2, 2), pd)
        self.D = self.param("D", nn.initializers.normal(stddev=1.0), (H,), pd)

    def resolved_conv(self) -> str:
        return resolve_conv(self.conv, self.d_state, fused_scan_available())

    def chunking(self) -> tuple[int | None, str, str]:
        """(chunk size or None for the layer's own choice, product precision, chunk scan) of the
        chunked route on this backend: `conv="auto"` runs it with the setting its rule was measured
        with."""
        scan = resolve_scan(self.chunk_scan, "xla")
        if self.conv == "auto":
            return self.chunk_size or AUTO_CHUNK, "default", scan
        return self.chunk_size, self.chunk_precision, scan

    def routes(self) -> dict[str, str]:
        conv = self.resolved_conv()
        if conv != "chunked":
            return {"conv": conv}
        chunk, precision, scan = self.chunking()
        return {
            "conv": "chunked",
            "chunk": str(chunk or "min(128, L)"),  # chunked_conv.default_chunk
            "chunk_precision": precision,
            "chunk_scan": scan,
        }

    def kernel(self, L: int):
        """The real convolution kernel (channels, H, L); channel 0 is causal, channel 1 (if
        bidirectional) is applied to the reversed sequence."""
        return s4d_kernel(
            self.log_dt, self.log_A_real, self.A_imag, self.B, self.C, L, self.discretization
        )

    def __call__(self, u, mask=None):
        """u: (B, L, H) real -> (B, L, H) of u's dtype.

        `mask` is accepted for the common mixer interface and not needed: the backbone zeroes padded
        inputs, and a linear time-invariant convolution of zeros adds nothing.
        """
        if u.shape[-1] != self.d_model:
            raise ValueError(f"expected {self.d_model} channels in the last axis, got {u.shape}")
        # Compute in the wider of input and parameter precision, hand back the input's dtype.
        x = u.astype(jnp.promote_types(u.dtype, self.param_dtype))
        D = self.D.astype(x.dtype)
        conv = self.resolved_conv()
        # The convolutions take the skip term D u in their kernel's lag 0 (conv.with_skip).
        if conv == "fft":
            y = ssm_fft_conv(x, self.kernel(u.shape[-2]).astype(x.dtype), D, self.bidirectional)
        else:  # from the discrete system itself, without the length-L kernel
            log_Abar, W = s4d_system(self.log_dt, self.log_A_real, self.A_imag, self.B, self.C, self.discretization)
            W_bwd = W[1] if self.bidirectional else None
            if conv == "chunked":
                chunk, precision, scan = self.chunking()
                y = chunked_ssm_conv(x, log_Abar, W[0], W_bwd, chunk=chunk, precision=precision, scan=scan, skip=D)
            else:
                y = diagonal_scan_conv(x, log_Abar, W[0], W_bwd, interpret=self.conv == "scan_interpret") + D * x
        return y.astype(u.dtype)
