"""Mamba's selective scan as one fused GPU kernel (Pallas, Triton backend), forward and backward.

The XLA route (`mamba.selective_scan`) forms exp(dt A) and dt B u for every step, channel and
state and scans them: (L, E, N) arrays in memory, N times the size of the layer's input, for
every layer and direction. Here one program per (sequence, block of `block_e` channels) runs the
recurrence in time order with its (block_e, N) state held on chip:

    h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t,    y_t = C_t h_t + D u_t.

It reads u, dt (L, E) and B, C (L, N), and writes y and, for the backward pass, the state at the
start of every chunk of `chunk` steps. Each chunk's loads are issued before its arithmetic, so
their latencies overlap instead of adding up step by step.

The backward kernel walks the chunks in reverse. It recomputes a chunk's states from the one saved
at its start, then runs the adjoint recurrence through them: with g_t = dy_t and
dh_t = C_t g_t + exp(dt_{t+1} A) dh_{t+1},
    du_t = dt_t sum_n dh_t B_t + D g_t,
    d dt_t = u_t sum_n dh_t B_t + sum_n dh_t h_{t-1} exp(dt_t A) A,
    dB_t = sum_e dh_t dt_t u_t,   dC_t = sum_e g_t h_t,
    dA = sum_t dh_t h_{t-1} exp(dt_t A) dt_t,   dD = sum_t g_t u_t.
Sums over channels (dB, dC) are written per channel block and added outside the kernel, and dA,
dD per sequence, so the result does not depend on the order programs run in.

Shapes are padded to what the kernel needs: time to a multiple of `chunk` with dt = 0 (an identity
step), channels to a multiple of `block_e`, states to a power of two with zeros. The math is the
XLA route's; `interpret=True` runs the same kernels on any backend (the tests, on CPU).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ssm_lra.ssm.pallas_common import compiler_params, next_power_of_two, pad_axis, round_up
from ssm_lra.ssm.sharding import batch_parallel

__all__ = ["selective_scan_fused"]

CHUNK = 8  # steps per chunk: one saved state per chunk; the backward keeps a chunk's states on chip
BLOCK_E = 32  # channels per program


# ----------------------------------------------------------------------------------------------
# Kernels. Refs hold one sequence and one channel block: u, dt, y (L, bE); B, C (L, N);
# A (bE, N); D (bE,); states (n_chunks, bE, N).


def _forward_kernel(u_ref, dt_ref, A_ref, B_ref, C_ref, D_ref, y_ref, states_ref, *, chunk, n_chunks):
    A = A_ref[...]
    D = D_ref[...]

    def body(c, h):
        t0 = c * chunk
        states_ref[c] = h
        rows = [(u_ref[t0 + i], dt_ref[t0 + i], B_ref[t0 + i], C_ref[t0 + i]) for i in range(chunk)]
        for i, (u, dt, B, C) in enumerate(rows):
            h = jnp.exp(dt[:, None] * A) * h + (dt * u)[:, None] * B[None, :]
            y_ref[t0 + i] = jnp.sum(h * C[None, :], axis=1) + D * u
        return h

    jax.lax.fori_loop(0, n_chunks, body, jnp.zeros(A.shape, A.dtype))


def _backward_kernel(
    u_ref, dt_ref, A_ref, B_ref, C_ref, D_ref, states_ref, dy_ref,
    du_ref, ddt_ref, dA_ref, dB_ref, dC_ref, dD_ref, *, chunk, n_chunks,
):
    A = A_ref[...]
    D = D_ref[...]

    def body(k, carry):
        dh, dA, dD = carry
        c = n_chunks - 1 - k
        t0 = c * chunk
        rows = [
            (u_ref[t0 + i], dt_ref[t0 + i], B_ref[t0 + i], C_ref[t0 + i], dy_ref[t0 + i])
            for i in range(chunk)
        ]
        # The chunk's states, from the one saved at its start: states[i] = h_{t0 + i - 1}. The
        # decays exp(dt A) are recomputed on the way back rather than kept: registers are the
        # scarce resource here, not exponentials.
        states = [states_ref[c]]
        for u, dt, B, _, _ in rows:
            states.append(jnp.exp(dt[:, None] * A) * states[-1] + (dt * u)[:, None] * B[None, :])
        for i in reversed(range(chunk)):
            u, dt, B, C, g = rows[i]
            a, h_prev, h = jnp.exp(dt[:, None] * A), states[i], states[i + 1]
            dh = dh + g[:, None] * C[None, :]
            dC_ref[t0 + i] = jnp.sum(g[:, None] * h, axis=0)
            dh_B = jnp.sum(dh * B[None, :], axis=1)
            da = dh * h_prev * a
            du_ref[t0 + i] = dt * dh_B + D * g
            ddt_ref[t0 + i] = u * dh_B + jnp.sum(da * A, axis=1)
            dB_ref[t0 + i] = jnp.sum(dh * (dt * u)[:, None], axis=0)
            dA = dA + da * dt[:, None]
            dD = dD + g * u
            dh = a * dh
        return dh, dA, dD

    zeros = jnp.zeros(A.shape, A.dtype)
    _, dA, dD = jax.lax.fori_loop(0, n_chunks, body, (zeros, zeros, jnp.zeros(D.shape, D.dtype)))
    dA_ref[...] = dA
    dD_ref[...] = dD


# ----------------------------------------------------------------------------------------------
# pallas_call wrappers on padded arrays: u, dt (Bz, L, E); B, C (Bz, L, N); A (E, N); D (E,).


def _specs(L, N, n_chunks, block_e):
    """Blocks of one (sequence, channel block) program: (L, bE) per-channel arrays, (L, N) B and C,
    A (bE, N), D (bE,), and the (n_chunks, bE, N) chunk-start states."""
    from jax.experimental import pallas as pl

    per_channel = pl.BlockSpec((None, L, block_e), lambda b, e: (b, 0, e))
    per_state = pl.BlockSpec((None, L, N), lambda b, e: (b, 0, 0))
    A_spec = pl.BlockSpec((block_e, N), lambda b, e: (e, 0))
    D_spec = pl.BlockSpec((block_e,), lambda b, e: (e,))
    states_spec = pl.BlockSpec((None, n_chunks, block_e, N), lambda b, e: (b, 0, e, 0))
    return per_channel, per_state, A_spec, D_spec, states_spec


def _forward(u, dt, A, B, C, D, *, chunk, block_e, interpret):
    from jax.experimental import pallas as pl

    def call(u, dt, A, B, C, D):  # on one device's share of the batch
        Bz, L, E = u.shape
        N = A.shape[1]
        n_chunks = L // chunk
        per_channel, per_state, A_spec, D_spec, states_spec = _specs(L, N, n_chunks, block_e)
        return pl.pallas_call(
            functools.partial(_forward_kernel, chunk=chunk, n_chunks=n_chunks),
            out_shape=(
                jax.ShapeDtypeStruct((Bz, L, E), u.dtype),
                jax.ShapeDtypeStruct((Bz, n_chunks, E, N), u.dtype),
            ),
            grid=(Bz, E // block_e),
            in_specs=[per_channel, per_channel, A_spec, per_state, per_state, D_spec],
            out_specs=(per_channel, states_spec),
            interpret=interpret,
            compiler_params=compiler_params(interpret, num_warps=4),
            name="selective_scan_forward",
        )(u, dt, A, B, C, D)

    rule = "b l e, b l e, e n, b l n, b l n, e -> b l e, b c e n"
    return batch_parallel(call, rule)(u, dt, A, B, C, D)


def _backward(u, dt, A, B, C, D, states, dy, *, chunk, block_e, interpret):
    from jax.experimental import pallas as pl

    def call(u, dt, A, B, C, D, states, dy):  # on one device's share of the batch
        Bz, L, E = u.shape
        N = A.shape[1]
        n_blocks = E // block_e
        n_chunks = L // chunk
        per_channel, per_state, A_spec, D_spec, states_spec = _specs(L, N, n_chunks, block_e)
        per_block_state = pl.BlockSpec((None, None, L, N), lambda b, e: (b, e, 0, 0))
        dA_spec = pl.BlockSpec((None, block_e, N), lambda b, e: (b, e, 0))
        dD_spec = pl.BlockSpec((None, block_e), lambda b, e: (b, e))
        dtype = u.dtype
        return pl.pallas_call(
            functools.partial(_backward_kernel, chunk=chunk, n_chunks=n_chunks),
            out_shape=(
                jax.ShapeDtypeStruct((Bz, L, E), dtype),
                jax.ShapeDtypeStruct((Bz, L, E), dtype),
                jax.ShapeDtypeStruct((Bz, E, N), dtype),
                jax.ShapeDtypeStruct((Bz, n_blocks, L, N), dtype),
                jax.ShapeDtypeStruct((Bz, n_blocks, L, N), dtype),
                jax.ShapeDtypeStruct((Bz, E), dtype),
            ),
            grid=(Bz, n_blocks),
            in_specs=[per_channel, per_channel, A_spec, per_state, per_state, D_spec, states_spec, per_channel],
            out_specs=(per_channel, per_channel, dA_spec, per_block_state, per_block_state, dD_spec),
            interpret=interpret,
            compiler_params=compiler_params(interpret, num_warps=4),
            name="selective_scan_backward",
        )(u, dt, A, B, C, D, states, dy)

    rule = "b l e, b l e, e n, b l n, b l n, e, b c e n, b l e -> b l e, b l e, b e n, b k l n, b k l n, b e"
    du, ddt, dA, dB, dC, dD = batch_parallel(call, rule)(u, dt, A, B, C, D, states, dy)
    # Sums over channel blocks (dB, dC) and over the batch (dA, dD; across devices if sharded).
    return du, ddt, dA.sum(0), dB.sum(1), dC.sum(1), dD.sum(0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _fused(u, dt, A, B, C, D, chunk, block_e, interpret):
    return _forward(u, dt, A, B, C, D, chunk=chunk, block_e=block_e, interpret=interpret)[0]


def _fused_fwd(u, dt, A, B, C, D, chunk, block_e, interpret):
    y, states = _forward(u, dt, A, B, C, D, chunk=chunk, block_e=block_e, interpret=interpret)
    return y, (u, dt, A, B, C, D, states)


def _fused_bwd(chunk, block_e, interpret, residuals, dy):
    u, dt, A, B, C, D, states = residuals
    return _backward(u, dt, A, B, C, D, states, dy, chunk=chunk, block_e=block_e, interpret=interpret)


_fused.defvjp(_fused_fwd, _fused_bwd)


def selective_scan_fused(u, dt, A, B, C, D, *, chunk: int = CHUNK, block_e: int = BLOCK_E, interpret: bool = False):
    """`mamba.selective_scan` over a batch, in one kernel each way (forward and backward).

    u, dt (Bz, L, E); A (E, N) (negative); B, C (Bz, L, N); D (E,) -> y (Bz, L, E).
    Differentiable in all six arguments. interpret=True runs the kernels through Pallas'
    interpreter (any backend, slow: for tests).
    """
    Bz, L, E = u.shape
    N = A.shape[1]
    block_e = min(block_e, next_power_of_two(E))
    Lp, Ep, Np = round_up(L, chunk), round_up(E, block_e), next_power_of_two(N)
    # Padded steps have dt = 0: exp(0) = 1 and no input, so the state passes them unchanged.
    # Padded channels and states are zeros throughout and are cut off again.
    u_p = pad_axis(pad_axis(u, 1, Lp), 2, Ep)
    dt_p = pad_axis(pad_axis(dt, 1, Lp), 2, Ep)
    A_p = pad_axis(pad_axis(A, 0, Ep), 1, Np)
    B_p = pad_axis(pad_axis(B, 1, Lp), 2, Np)
    C_p = pad_axis(pad_axis(C, 1, Lp), 2, Np)
    D_p = pad_axis(D, 0, Ep)
    y = _fused(u_p, dt_p, A_p, B_p, C_p, D_p, chunk, block_e, interpret)
    return y[:, :L, :E]
