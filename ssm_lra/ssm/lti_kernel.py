"""S5's time-invariant diagonal recurrence as one fused GPU kernel (Pallas, Triton backend).

    x_t = Lambda_bar x_{t-1} + b_t   (forward; or x_t = Lambda_bar x_{t+1} + b_t, reverse),

complex, one independent recurrence per state, Lambda_bar the same at every step. XLA's scans
(`scan.lti_scan`) run it as a log-depth tree over time, reading and writing the (B, L, P) arrays
at every level. Here one program per (sequence, block of `block_p` states) walks time once with
its states in registers: it reads b and writes x, and nothing else. The backward kernel walks time
the other way through the adjoint recurrence, a_t = dx_t + Lambda_bar^T a_{t+1} (as real 2 x 2
blocks), reading the saved x for Lambda_bar's gradient.

Complex numbers travel as separate real and imaginary float32 arrays, which is also how the S5
layer makes and reads them when it uses this kernel (`s5.apply_s5`, scan "fused": the in- and
out-projections are real matmuls on the two parts), so no complex array is converted on the way.
Each chunk's loads are issued before its arithmetic, so that their latencies overlap.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ssm_lra.ssm.pallas_common import compiler_params, next_power_of_two, pad_axis, round_up
from ssm_lra.ssm.sharding import batch_parallel

__all__ = ["lti_scan_fused"]

CHUNK = 32  # steps whose loads are issued together: with one warp per program, enough bytes in flight
BLOCK_P = 32  # states per program: one warp, one state per thread


def _order(s, n: int, reverse: bool):
    """Time index of the s-th step of the scan."""
    return n - 1 - s if reverse else s


def _forward_kernel(lr_ref, li_ref, br_ref, bi_ref, xr_ref, xi_ref, *, chunk, length, reverse):
    lr, li = lr_ref[...], li_ref[...]

    def body(c, carry):
        xr, xi = carry
        ts = [_order(c * chunk + i, length, reverse) for i in range(chunk)]
        rows = [(br_ref[t], bi_ref[t]) for t in ts]
        for t, (br, bi) in zip(ts, rows):
            xr, xi = lr * xr - li * xi + br, li * xr + lr * xi + bi
            xr_ref[t] = xr
            xi_ref[t] = xi
        return xr, xi

    zeros = jnp.zeros(lr.shape, lr.dtype)
    jax.lax.fori_loop(0, length // chunk, body, (zeros, zeros))


def _backward_kernel(
    lr_ref, li_ref, xr_ref, xi_ref, gr_ref, gi_ref, dbr_ref, dbi_ref, dlr_ref, dli_ref,
    *, chunk, length, reverse,
):
    lr, li = lr_ref[...], li_ref[...]
    zeros = jnp.zeros(lr.shape, lr.dtype)

    def body(k, carry):
        ar, ai, dlr, dli = carry
        # Scan steps s = top, top - 1, ..., top - chunk + 1; each needs the state of step s - 1.
        top = length - 1 - k * chunk
        steps = [top - i for i in range(chunk)]
        rows = []
        for s in steps:
            t = _order(s, length, reverse)
            t_prev = _order(jnp.maximum(s - 1, 0), length, reverse)
            first = s == 0  # no state before the first step
            rows.append((t, gr_ref[t], gi_ref[t],
                         jnp.where(first, zeros, xr_ref[t_prev]), jnp.where(first, zeros, xi_ref[t_prev])))
        for t, gr, gi, pr, pi in rows:
            # a_s = dx_s + Lambda_bar^T a_{s+1}; then b's gradient is a_s, Lambda_bar's a_s x_{s-1}^T.
            ar, ai = gr + lr * ar + li * ai, gi - li * ar + lr * ai
            dbr_ref[t] = ar
            dbi_ref[t] = ai
            dlr = dlr + ar * pr + ai * pi
            dli = dli - ar * pi + ai * pr
        return ar, ai, dlr, dli

    _, _, dlr, dli = jax.lax.fori_loop(0, length // chunk, body, (zeros, zeros, zeros, zeros))
    dlr_ref[...] = dlr
    dli_ref[...] = dli


def _specs(L, block_p):
    from jax.experimental import pallas as pl

    per_state = pl.BlockSpec((block_p,), lambda b, p: (p,))
    sequence = pl.BlockSpec((None, L, block_p), lambda b, p: (b, 0, p))
    per_sequence_state = pl.BlockSpec((None, block_p), lambda b, p: (b, p))
    return per_state, sequence, per_sequence_state


def _forward(lr, li, br, bi, *, reverse, chunk, block_p, interpret):
    from jax.experimental import pallas as pl

    def call(lr, li, br, bi):  # on one device's share of the batch
        Bz, L, P = br.shape
        per_state, sequence, _ = _specs(L, block_p)
        out = jax.ShapeDtypeStruct((Bz, L, P), br.dtype)
        return pl.pallas_call(
            functools.partial(_forward_kernel, chunk=chunk, length=L, reverse=reverse),
            out_shape=(out, out),
            grid=(Bz, P // block_p),
            in_specs=[per_state, per_state, sequence, sequence],
            out_specs=(sequence, sequence),
            interpret=interpret,
            compiler_params=compiler_params(interpret, num_warps=1),
            name="lti_scan_forward",
        )(lr, li, br, bi)

    return batch_parallel(call, "p, p, b l p, b l p -> b l p, b l p")(lr, li, br, bi)


def _backward(lr, li, xr, xi, gr, gi, *, reverse, chunk, block_p, interpret):
    from jax.experimental import pallas as pl

    def call(lr, li, xr, xi, gr, gi):  # on one device's share of the batch
        Bz, L, P = xr.shape
        per_state, sequence, per_sequence_state = _specs(L, block_p)
        full = jax.ShapeDtypeStruct((Bz, L, P), xr.dtype)
        per_sequence = jax.ShapeDtypeStruct((Bz, P), xr.dtype)
        return pl.pallas_call(
            functools.partial(_backward_kernel, chunk=chunk, length=L, reverse=reverse),
            out_shape=(full, full, per_sequence, per_sequence),
            grid=(Bz, P // block_p),
            in_specs=[per_state, per_state, sequence, sequence, sequence, sequence],
            out_specs=(sequence, sequence, per_sequence_state, per_sequence_state),
            interpret=interpret,
            compiler_params=compiler_params(interpret, num_warps=1),
            name="lti_scan_backward",
        )(lr, li, xr, xi, gr, gi)

    rule = "p, p, b l p, b l p, b l p, b l p -> b l p, b l p, b p, b p"
    dbr, dbi, dlr, dli = batch_parallel(call, rule)(lr, li, xr, xi, gr, gi)
    # Lambda_bar's gradient per sequence, summed over the batch here (across devices if sharded).
    return dlr.sum(0), dli.sum(0), dbr, dbi


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _fused(lr, li, br, bi, reverse, chunk, block_p, interpret):
    return _forward(lr, li, br, bi, reverse=reverse, chunk=chunk, block_p=block_p, interpret=interpret)


def _fused_fwd(lr, li, br, bi, reverse, chunk, block_p, interpret):
    xr, xi = _forward(lr, li, br, bi, reverse=reverse, chunk=chunk, block_p=block_p, interpret=interpret)
    return (xr, xi), (lr, li, xr, xi)


def _fused_bwd(reverse, chunk, block_p, interpret, residuals, cotangents):
    lr, li, xr, xi = residuals
    gr, gi = cotangents
    return _backward(lr, li, xr, xi, gr, gi, reverse=reverse, chunk=chunk, block_p=block_p, interpret=interpret)


_fused.defvjp(_fused_fwd, _fused_bwd)


def lti_scan_fused(lam_re, lam_im, b_re, b_im, *, reverse: bool = False, chunk: int = CHUNK,
                   block_p: int = BLOCK_P, interpret: bool = False):
    """The states of x_t = Lambda_bar x_{t-1} + b_t (reverse: x_{t+1}), x before the first step 0,
    as (real, imaginary) parts.

    lam_re, lam_im (P,); b_re, b_im (Bz, L, P) -> (x_re, x_im), each (Bz, L, P). Differentiable in
    all four. interpret=True runs the kernels through Pallas' interpreter (any backend; slow).
    """
    Bz, L, P = b_re.shape
    block_p = min(block_p, next_power_of_two(P))
    Lp, Pp = round_up(L, chunk), round_up(P, block_p)
    # Padded steps come after the real ones in time, so a reverse scan crosses them first: their
    # b is 0 and the state they pass on is still 0. Padded states are 0 throughout.
    lr, li = (pad_axis(x, 0, Pp) for x in (lam_re, lam_im))
    br, bi = (pad_axis(pad_axis(x, 1, Lp), 2, Pp) for x in (b_re, b_im))
    xr, xi = _fused(lr, li, br, bi, reverse, chunk, block_p, interpret)
    return xr[:, :L, :P], xi[:, :L, :P]
