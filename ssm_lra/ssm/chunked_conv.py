"""The convolution of a diagonal SSM computed chunk by chunk: matmuls instead of FFTs.

For K[l] = 2 Re(sum_n W_n a_n^l) (W = C Bbar, a = Abar, one row of N/2 states per channel), cut
the time axis into chunks of T steps and write t = cT + r:

  y[c, r] = sum_{s <= r} K[r - s] u[c, s]                       (within the chunk)
          + 2 Re sum_n W_n a_n^(r+1) S[c, n]                    (from all earlier chunks)

  S[c] = a^T S[c-1] + z[c-1],  S[0] = 0,   z[c, n] = sum_s a_n^(T-1-s) u[c, s]

The first term is a (T, T) lower-triangular Toeplitz matmul per channel; z and the read-out are
(T, N/2) matmuls; only the chunk ends (L/T states per channel) go through a scan. Nothing of size
(L, N) or an FFT of length 2L is formed, and the FLOPs land in batched matmuls.

The anti-causal direction y[t] = sum_{j >= t} K'[j - t] u[j] is the mirror image: its within-chunk
part is the upper triangle of the same Toeplitz matrix, its chunk states z'[c, n] = sum_s a^s u[c, s]
run backwards, and chunk c reads them out with a^(T-r). Both directions share one matmul per stage.

The scan over chunk states runs either as XLA's log-depth `lti_scan` (any backend) or, on a GPU,
as the fused Pallas kernel S5 uses (`lti_kernel.lti_scan_fused`, the (H, N/2) states of a chunk
flattened into its state axis): one pass over the states instead of a tree of passes.

Layouts as in conv.py: u (..., L, H) with time before channels; W and log a are (H, N/2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ssm_lra.ssm.conv import vandermonde_kernel, with_skip
from ssm_lra.ssm.lti_kernel import lti_scan_fused
from ssm_lra.ssm.scan import lti_scan

__all__ = ["CHUNK_PRECISIONS", "CHUNK_SCANS", "chunk_toeplitz", "chunked_ssm_conv", "default_chunk", "upper_toeplitz"]

# "default" lets XLA round float32 matmul inputs to TF32 on tensor cores (JAX's own default on
# recent GPUs, which the dense layers already get); "highest" keeps true float32 products.
CHUNK_PRECISIONS = {"default": None, "highest": lax.Precision.HIGHEST}
# How the chunk states are carried across chunks: XLA's lti_scan, or the fused GPU kernel
# (compiled, or run by Pallas' interpreter on any backend, slowly: for tests).
CHUNK_SCANS = ("xla", "fused", "fused_interpret")


def default_chunk(L: int) -> int:
    """128 steps, or the sequence itself when shorter. The chunk states shrink as 1/T while the
    Toeplitz matmul grows as T; of 32 to 512, 128 and 256 were the fastest on a CPU at the S4D
    presets' shapes with N 64 (results/bench/NOTES.md, lever 11)."""
    return max(1, min(128, L))


def _powers(log_a, exponents):
    """a^e for a (H, N2) complex given by its log, e (E,) real: (H, N2, E) complex."""
    return jnp.exp(log_a[..., None] * exponents)


def _as_real_rows(z):
    """(H, N2, E) complex -> (H, 2 N2, E) real: [Re; Im] stacked along the state axis, so a complex
    product with a real input is one real matmul."""
    return jnp.concatenate([z.real, z.imag], axis=-2)


def upper_toeplitz(k):
    """(..., T) -> (..., T, T) with U[r, s] = k[s - r] for s >= r, zeros below the diagonal.

    Built by tiling [k, 0] (length 2T) T times and reading it as rows of 2T - 1: row r starts r
    places further back, so it holds k shifted right by r. Only tiling, reshapes and slices: the
    gradient with respect to k is a sum over the tiles, where indexing k by lag would make it a
    scatter-add, which a GPU runs as slow atomic adds.
    """
    T = k.shape[-1]
    q = jnp.concatenate([k, jnp.zeros_like(k)], axis=-1)
    rows = jnp.tile(q, T)[..., : T * (2 * T - 1)].reshape(k.shape[:-1] + (T, 2 * T - 1))
    return rows[..., :T]


def chunk_toeplitz(k_fwd, k_bwd=None):
    """The (H, T, T) matrix M with y_chunk = M u_chunk for the within-chunk part.

    M[h, r, s] = k_fwd[h, r - s] for s <= r, plus k_bwd[h, s - r] for s >= r (anti-causal; the
    diagonal gets both). k_fwd, k_bwd: (H, T), the first T lags of each kernel.
    """
    M = jnp.swapaxes(upper_toeplitz(k_fwd), -1, -2)
    if k_bwd is not None:
        M = M + upper_toeplitz(k_bwd)
    return M


def _shift_chunks(x, by: int):
    """x moved `by` places along the chunk axis (-3), zeros coming in, the far end dropped."""
    C = x.shape[-3]
    pad = [(0, 0)] * x.ndim
    pad[-3] = (by, 0) if by > 0 else (0, -by)
    start = 0 if by > 0 else -by
    return lax.slice_in_dim(jnp.pad(x, pad), start, start + C, axis=x.ndim - 3)


def _fused_chunk_scan(a_T, b_re, b_im, reverse: bool, interpret: bool):
    """lti_scan over the chunk axis (-3) of b (..., C, H, N2) with multiplier a_T (H, N2), by the
    fused kernel: each chunk's (H, N2) states are its state axis. Returns (real, imaginary)."""
    C, H, N2 = b_re.shape[-3:]
    flat = lambda x: x.reshape((-1, C, H * N2))
    x_re, x_im = lti_scan_fused(
        a_T.real.reshape(-1), a_T.imag.reshape(-1), flat(b_re), flat(b_im), reverse=reverse, interpret=interpret
    )
    return x_re.reshape(b_re.shape), x_im.reshape(b_im.shape)


def chunked_ssm_conv(u, log_a, W_fwd, W_bwd=None, chunk: int | None = None, precision: str = "highest",
                     scan: str = "xla", skip=None):
    """y = causal_conv(u, K_fwd) (+ anti-causal conv with K_bwd) (+ skip u), K[l] = 2 Re sum_n W_n a_n^l.

    Same result as `causal_fft_conv(u, vandermonde_kernel(..., W_fwd, L))` (and, with W_bwd, as
    `bidirectional_fft_conv`), computed chunk by chunk (see the module docstring).

    u: (..., L, H) real; log_a: (H, N2) complex, log of the discrete eigenvalues; W_fwd, W_bwd:
    (H, N2) complex. chunk: T (default `default_chunk(L)`); L is zero-padded to a multiple of it.
    scan: one of CHUNK_SCANS, how the states pass between chunks (the same result).
    skip: (H,) real or None: the SSM's D, added to the within-chunk matrix's diagonal (lag 0), so
    that D u costs no pass of its own; its products then take `precision` as the rest do.
    """
    if precision not in CHUNK_PRECISIONS:
        raise ValueError(f"unknown chunk precision {precision!r}; valid ones are {', '.join(map(repr, CHUNK_PRECISIONS))}")
    if scan not in CHUNK_SCANS:
        raise ValueError(f"unknown chunk scan {scan!r}; valid ones are {', '.join(map(repr, CHUNK_SCANS))}")
    prec = CHUNK_PRECISIONS[precision]
    L, H = u.shape[-2], u.shape[-1]
    T = chunk or default_chunk(L)
    n_chunks = -(-L // T)
    real = u.dtype
    pad = [(0, 0)] * (u.ndim - 2) + [(0, n_chunks * T - L), (0, 0)]
    blocks = jnp.pad(u, pad).reshape(u.shape[:-2] + (n_chunks, T, H))  # (..., C, T, H)

    steps = jnp.arange(T + 1, dtype=real)
    pows = _powers(log_a, steps)  # a^0 .. a^T: (H, N2, T + 1)
    bidirectional = W_bwd is not None
    k_fwd = vandermonde_kernel(None, W_fwd, T, log_Abar=log_a)  # the first T lags
    if skip is not None:
        k_fwd = with_skip(k_fwd, skip)
    k_bwd = vandermonde_kernel(None, W_bwd, T, log_Abar=log_a) if bidirectional else None
    # The named scopes label the pieces in profiles (scripts/profile_step.py groups by them).
    with jax.named_scope("within_chunks"):
        within = jnp.einsum("...csh,hrs->...crh", blocks, chunk_toeplitz(k_fwd, k_bwd).astype(real), precision=prec)

    # Chunk states from each chunk's own inputs: a^(T-1-s) forwards, a^s backwards.
    gather = [pows[..., T - 1 :: -1]] + ([pows[..., :T]] if bidirectional else [])
    gather = jnp.concatenate([_as_real_rows(g) for g in gather], axis=-2).astype(real)  # (H, D, T)
    with jax.named_scope("chunk_states"):
        z = jnp.einsum("...csh,hds->...chd", blocks, gather, precision=prec)  # D = 2 N2 per direction
    N2 = log_a.shape[-1]
    a_T = pows[..., T]  # (H, N2)

    def carried(z_dir, reverse):
        """S[c] (forwards) or S'[c] (backwards): the state the other chunks hand to chunk c.
        S[c] = a^T S[c-1] + z[c-1] is the scan of z moved one chunk later (earlier, backwards)."""
        shift = -1 if reverse else 1
        z_re, z_im = _shift_chunks(z_dir[..., :N2], shift), _shift_chunks(z_dir[..., N2:], shift)  # (..., C, H, N2)
        if scan == "xla":
            S = lti_scan(a_T, lax.complex(z_re, z_im), axis=-3, reverse=reverse)
            S_re, S_im = S.real, S.imag
        else:
            S_re, S_im = _fused_chunk_scan(a_T, z_re, z_im, reverse, interpret=scan == "fused_interpret")
        return jnp.concatenate([S_re, S_im], axis=-1)

    # Read-out rows: 2 Re(W a^e S) = [2 Re(W a^e), -2 Im(W a^e)] . [Re S, Im S].
    def readout(W, exps):
        Wa = W[..., None] * exps  # (H, N2, T)
        return jnp.concatenate([2.0 * Wa.real, -2.0 * Wa.imag], axis=-2)

    with jax.named_scope("scan_over_chunks"):
        states = [carried(z[..., : 2 * N2], reverse=False)]
        if bidirectional:
            states.append(carried(z[..., 2 * N2 :], reverse=True))
        states = jnp.concatenate(states, axis=-1)
    rows = [readout(W_fwd, pows[..., 1:])]  # a^(r+1)
    if bidirectional:
        rows.append(readout(W_bwd, pows[..., T:0:-1]))  # a^(T-r)
    rows = jnp.concatenate(rows, axis=-2).astype(real)
    with jax.named_scope("across_chunks"):
        across = jnp.einsum("...chd,hdr->...crh", states.astype(real), rows, precision=prec)
    y = (within + across).reshape(u.shape[:-2] + (n_chunks * T, H))
    return y[..., :L, :]
