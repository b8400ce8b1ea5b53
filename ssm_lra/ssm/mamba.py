"""Mamba: a block around a selective (input-dependent) diagonal SSM, "S6" (Gu & Dao 2023).

The block, per sequence of u (L, H), with E = expand * H inner channels and N states per channel:
  1. in-projection u -> (x, z), each (L, E); z is the gate;
  2. short causal depthwise conv of x (kernel d_conv, with bias), SiLU;
  3. selective SSM on x: dt_t = softplus(W_up W_down x_t + dt_bias) (E,), B_t = W_B x_t (N,),
     C_t = W_C x_t (N,); A = -exp(A_log) (E, N) diagonal real negative;
     h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t (Mamba's simplified ZOH), y_t = C_t h_t + D x_t;
  4. y * SiLU(z), out-projection back to H.
Unlike S4/S4D the recurrence is time-varying, so it cannot be an FFT convolution: it runs as a
parallel linear scan over time (ssm_lra.ssm.scan), chunked when `chunk_size` is set, since the
states are (L, E, N) per sequence and Path-X (L = 16384) does not fit otherwise.

Bidirectional (for classification): a second conv + selective SSM, with its own parameters, reads
the reversed sequence; the two outputs are averaged before the gate. The in-projection (so x and
the gate z), and the out-projection are shared, as in Vision Mamba's "bimamba v2": the extra cost
is one more conv + SSM, and averaging keeps the output scale of the unidirectional layer at init.

Padding (trailing, mask 0): the conv bias and the dt bias make padded positions non-zero even
when the input there is zero, and the reversed branch reads padding *before* the real tokens. So
the conv input, the SSM input and dt are zeroed at padded positions: dt = 0 makes a padded step
the identity (exp(0 A) = 1, nothing added), so the state crosses padding unchanged (it stays 0
in the reversed branch), and real positions never see what the padding held.

The math is in small pure functions of arrays; the flax modules only create parameters and wire
them. Parameters are created in `param_dtype` and the computation runs in the wider of the input
and parameter precision, so float64 parameters (with x64 on) give a float64 layer for tests.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssm_lra.ssm import Mixer
from ssm_lra.ssm.mamba_kernel import selective_scan_fused
from ssm_lra.ssm.pallas_common import check_fused_scan_runs, resolve_scan
from ssm_lra.ssm.scan import check_chunk_size, chunked_scan, linear_scan

__all__ = [
    "Mamba",
    "SelectiveSSM",
    "SSM_PARAM_NAMES",
    "causal_depthwise_conv",
    "selective_scan",
    "resolve_dt_rank",
]

# The continuous SSM's parameters: A (through A_log) and the step size's bias. They get the SSM
# learning rate and no weight decay, like S4's A and dt: decaying A_log to 0 would pull every
# eigenvalue to -1 and erase the init's spread of timescales, and the dt bias sets each channel's
# timescale. Left out on purpose:
# - D (E,), the skip: Mamba does not decay it either, and as a vector the optimizer already puts it
#   in the no-decay group; it stays at the main learning rate, as S4D's D does.
# - the projections making dt, B_t, C_t from the input: ordinary Dense weights (leaf "kernel",
#   which must not be listed here: every Dense layer of the model would match).
SSM_PARAM_NAMES = frozenset({"A_log", "dt_bias"})


# ----------------------------------------------------------------------------------------------
# Pure functions.


def resolve_dt_rank(dt_rank: int | str, d_model: int) -> int:
    """The rank of the dt projection: "auto" is Mamba's ceil(H / 16)."""
    return math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)


def causal_depthwise_conv(x: jax.Array, weight: jax.Array, bias: jax.Array) -> jax.Array:
    """y_t = bias + sum_k weight[k] * x_{t - (K-1) + k}, x_{<0} = 0, per channel.

    x (..., L, E), weight (K, E), bias (E,). weight[K-1] multiplies the current step (PyTorch's
    Conv1d cross-correlation with K-1 zeros of left padding, as Mamba runs it). K is small (4), so K
    shifted multiply-adds are simpler and as fast as a grouped convolution.
    """
    K, L = weight.shape[0], x.shape[-2]
    pad = [(0, 0)] * (x.ndim - 2) + [(K - 1, 0), (0, 0)]
    xp = jnp.pad(x, pad)
    y = sum(weight[k] * xp[..., k : k + L, :] for k in range(K))
    return y + bias


def selective_coeffs(dt, u, B, A):
    """(a, b) of the recurrence h_t = a_t h_{t-1} + b_t for steps (T, E) -> (T, E, N) each.

    a_t = exp(dt_t A) is the exact ZOH transition; b_t = dt_t B_t u_t is Mamba's simplified input
    term (first order in dt instead of (exp(dt A) - 1)/A B), which is what Mamba runs.
    dt, u (T, E); B (T, N); A (E, N).
    """
    a = jnp.exp(dt[:, :, None] * A)
    b = (dt * u)[:, :, None] * B[:, None, :]
    return a, b


def selective_readout(states, C):
    """y_t = C_t h_t summed over the N states: (T, E, N), (T, N) -> (T, E)."""
    return jnp.einsum("ten,tn->te", states, C)


def selective_scan(u, dt, A, B, C, D, chunk_size: int | None = None):
    """One sequence through the selective SSM: y_t = C_t h_t + D u_t, h_t = exp(dt_t A) h_{t-1} +
    dt_t B_t u_t, h_{-1} = 0.

    u, dt (L, E); A (E, N) (negative); B, C (L, N); D (E,) -> y (L, E). Vmap it over a batch.
    With chunk_size, the (L, E, N) coefficients and states only ever exist one chunk at a time
    (built and contracted inside `chunked_scan`, rematerialized in the backward pass); without it
    they are built for the whole sequence and scanned at once (faster for short L).
    """
    if chunk_size is None:
        a, b = selective_coeffs(dt, u, B, A)
        y = selective_readout(linear_scan(a, b, axis=0), C)
    else:
        y = chunked_scan(
            lambda xs: selective_coeffs(xs[0], xs[1], xs[2], A),
            lambda states, xs: selective_readout(states, xs[3]),
            (dt, u, B, C),
            chunk_size,
        )
    return y + D * u


# The ways to run the selective SSM over a batch (the same y), by name: `model.mixer.scan`.
# "xla": `selective_scan` per sequence (associative scan, chunked with `chunk_size`);
# "fused": one Pallas kernel each way, the states kept on chip (ssm/mamba_kernel.py; GPU only);
# "fused_interpret": the same kernels through Pallas' interpreter, on any backend (slow: checks).
# A mixer's "auto" (its default) is "fused" on a GPU and "xla" elsewhere (`resolve_scan`).
SCANS = ("xla", "fused", "fused_interpret")
MIXER_SCANS = ("auto", *SCANS)


def batched_selective_scan(u, dt, A, B, C, D, scan: str = "xla", chunk_size: int | None = None):
    """`selective_scan` over a batch: u, dt (Bz, L, E); A (E, N); B, C (Bz, L, N); D (E,)."""
    if scan == "xla":
        run = partial(selective_scan, chunk_size=chunk_size)
        return jax.vmap(run, in_axes=(0, 0, None, 0, 0, None))(u, dt, A, B, C, D)
    # The kernel works in float32 at least (a bfloat16 state would lose the long memory).
    dtype = jnp.promote_types(u.dtype, jnp.float32)
    args = (x.astype(dtype) for x in (u, dt, A, B, C, D))
    return selective_scan_fused(*args, interpret=scan == "fused_interpret").astype(u.dtype)


# ----------------------------------------------------------------------------------------------
# Initializers (flax signature: key, shape, dtype).


def s4d_real_log_init(key, shape, dtype=jnp.float32):
    """A_log with A[e, n] = -(n + 1) for every channel e (S4D-Real, as Mamba initializes A)."""
    del key
    n = np.arange(1, shape[-1] + 1, dtype=np.float64)
    return jnp.broadcast_to(jnp.asarray(np.log(n), dtype), shape)


def inverse_softplus(y):
    """x with softplus(x) = y, for y > 0: y + log(1 - exp(-y)), written with expm1 for small y."""
    return y + jnp.log(-jnp.expm1(-y))


def dt_bias_init(dt_min: float, dt_max: float):
    """Bias with softplus(bias) log-uniform in [dt_min, dt_max] (Mamba's dt init): at init each
    channel's step is dt_min .. dt_max whatever the (small) projected input adds. Unlike Mamba no
    floor (1e-4) is applied: dt_min is taken as given."""

    def init(key, shape, dtype=jnp.float32):
        log_dt = jax.random.uniform(
            key, shape, dtype, minval=np.log(dt_min), maxval=np.log(dt_max)
        )
        return inverse_softplus(jnp.exp(log_dt))

    return init


def uniform_init(scale: float):
    """U[-scale, scale]: PyTorch's default for conv weights and biases (scale 1/sqrt(fan_in)) and
    Mamba's init of the dt up-projection (scale dt_rank^-1/2)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, minval=-scale, maxval=scale)

    return init


# ----------------------------------------------------------------------------------------------
# Modules.


class SelectiveSSM(nn.Module):
    """One direction of the block: causal depthwise conv, SiLU, selective SSM. (B, L, E) -> (B, L, E).

    Parameters: conv_weight (d_conv, E), conv_bias (E,), x_proj/kernel (E, R + 2N) giving
    (dt low-rank part, B_t, C_t), dt_proj/kernel (R, E), dt_bias (E,), A_log (E, N), D (E,).
    """

    d_inner: int
    d_state: int
    dt_rank: int
    d_conv: int
    dt_min: float
    dt_max: float
    chunk_size: int | None
    param_dtype: Any
    scan: str = "auto"

    @nn.compact
    def __call__(self, x, m):
        """x (B, L, E) in the compute dtype; m (B, L, 1): 1 at real positions, 0 at padding."""
        E, N, R, K, pd = self.d_inner, self.d_state, self.dt_rank, self.d_conv, self.param_dtype
        conv_weight = self.param("conv_weight", uniform_init(K**-0.5), (K, E), pd)
        conv_bias = self.param("conv_bias", uniform_init(K**-0.5), (E,), pd)
        x_proj = nn.Dense(R + 2 * N, use_bias=False, param_dtype=pd, name="x_proj")
        dt_proj = nn.Dense(
            E, use_bias=False, kernel_init=uniform_init(R**-0.5), param_dtype=pd, name="dt_proj"
        )
        dt_bias = self.param("dt_bias", dt_bias_init(self.dt_min, self.dt_max), (E,), pd)
        A_log = self.param("A_log", s4d_real_log_init, (E, N), pd)
        D = self.param("D", nn.initializers.ones, (E,), pd)

        dtype = x.dtype
        # Zero the conv input at padding: the reversed branch's conv reads it before real tokens.
        x = causal_depthwise_conv(x * m, conv_weight.astype(dtype), conv_bias.astype(dtype))
        # The conv bias made padded positions non-zero: zero the SSM input there too.
        x = nn.silu(x) * m
        dt_low, B, C = jnp.split(x_proj(x), [R, R + N], axis=-1)
        # dt = 0 at padding: exp(0 * A) = 1 and no input, an identity step of the recurrence.
        dt = jax.nn.softplus(dt_proj(dt_low) + dt_bias.astype(dtype)) * m
        A = -jnp.exp(A_log.astype(dtype))
        scan = resolve_scan(self.scan, fallback="xla")
        return batched_selective_scan(x, dt, A, B, C, D.astype(dtype), scan, self.chunk_size)


class Mamba(Mixer):
    """Mamba block as a sequence mixer: (B, L, H) -> (B, L, H). Use with the block activation "none"
    (it gates itself).

    Attributes:
      d_model: H.
      d_state: N, states per inner channel.
      expand: E = expand * H inner channels.
      d_conv: kernel size of the causal depthwise conv.
      dt_rank: rank of the dt projection, or "auto" (ceil(H / 16)).
      dt_min, dt_max: range of the log-uniform init of softplus(dt_bias).
      chunk_size: None for one associative scan over the sequence; an int to scan in chunks of that
        many steps with rematerialization (memory O(chunk) instead of O(L) in the state size).
        Only for the "xla" scan (the fused kernel keeps its states on chip and ignores it).
      scan: "auto" (default: "fused" on a GPU, "xla" elsewhere), "xla", "fused" (a Pallas GPU
        kernel per direction, forward and backward, that keeps the states on chip) or
        "fused_interpret" (its interpreted form, any backend).
      bidirectional: add a second conv + selective SSM (own parameters, "ssm_backward") run on the
        reversed sequence; the two are averaged before the gate. In/out projections are shared.
      param_dtype: dtype of the parameters.

    Parameters: in_proj/kernel (H, 2E), ssm/... (see SelectiveSSM), ssm_backward/... if
    bidirectional, out_proj/kernel (E, H). No biases on the projections, as in Mamba.
    """

    SSM_PARAM_NAMES = SSM_PARAM_NAMES  # the mixer contract asks the class for it

    d_model: int
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    dt_rank: int | str = "auto"
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    chunk_size: int | None = None
    bidirectional: bool = False
    scan: str = "auto"
    param_dtype: Any = jnp.float32

    def check_options(self):
        def positive_int(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        for name in ("d_model", "d_state", "expand", "d_conv"):
            positive_int(name)
        if self.dt_rank != "auto":
            if isinstance(self.dt_rank, str):
                raise ValueError(f"dt_rank must be 'auto' or a positive integer, got {self.dt_rank!r}")
            positive_int("dt_rank")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        if self.chunk_size is not None:
            check_chunk_size(self.chunk_size)
        if not isinstance(self.bidirectional, (bool, np.bool_)):
            raise ValueError(f"bidirectional must be true or false, got {self.bidirectional!r}")
        if self.scan not in MIXER_SCANS:
            raise ValueError(
                f"unknown Mamba scan {self.scan!r}; valid ones are {', '.join(map(repr, MIXER_SCANS))}"
            )
        if self.scan == "fused":
            check_fused_scan_runs(fallback="xla")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    def routes(self) -> dict[str, str]:
        return {"scan": resolve_scan(self.scan, fallback="xla")}

    def setup(self):
        pd = self.param_dtype
        self.in_proj = nn.Dense(2 * self.d_inner, use_bias=False, param_dtype=pd)
        branch = partial(
            SelectiveSSM,
            d_inner=self.d_inner,
            d_state=self.d_state,
            dt_rank=resolve_dt_rank(self.dt_rank, self.d_model),
            d_conv=self.d_conv,
            dt_min=self.dt_min,
            dt_max=self.dt_max,
            chunk_size=self.chunk_size,
            param_dtype=pd,
            scan=self.scan,
        )
        self.ssm = branch()
        if self.bidirectional:
            self.ssm_backward = branch()
        self.out_proj = nn.Dense(self.d_model, use_bias=False, param_dtype=pd)

    def __call__(self, u, mask=None):
        """u: (B, L, H) real, mask: (B, L) (1 real, 0 trailing padding) or None -> (B, L, H) of u's dtype."""
        if u.ndim != 3 or u.shape[-1] != self.d_model:
            raise ValueError(f"expected (batch, length, {self.d_model}) input, got {u.shape}")
        dtype = jnp.promote_types(u.dtype, self.param_dtype)
        if mask is None:
            mask = jnp.ones(u.shape[:2], dtype)
        m = mask.astype(dtype)[..., None]
        x, z = jnp.split(self.in_proj(u.astype(dtype)), 2, axis=-1)
        y = self.ssm(x, m)
        if self.bidirectional:
            # Reversing puts the trailing padding first; its dt = 0 steps keep the state at 0.
            y_back = self.ssm_backward(jnp.flip(x, axis=1), jnp.flip(m, axis=1))
            y = 0.5 * (y + jnp.flip(y_back, axis=1))
        return self.out_proj(y * nn.silu(z)).astype(u.dtype)
