"""Linear recurrences x_t = a_t * x_{t-1} + b_t computed in parallel with jax.lax.associative_scan.

The pair (a, b) stands for the affine map x -> a x + b; composing "first i, then j" gives
(a_j a_i, a_j b_i + b_j). That operator is associative, so the whole sequence of states is a
prefix scan in O(log L) depth.

The ways to run it:
- `linear_scan`: one associative scan over the whole sequence. Simple and fastest for short inputs,
  but the scan and its backward pass hold several arrays of the full (L, *state) size.
- `lti_scan`: the same recursion for a time-invariant `a` (S5's Lambda_bar): the multiplier of
  every element at level k is a^(2^k), so a stays small and only b moves through the levels. The
  fastest on an H200 for S5 (results/bench/NOTES.md).
- `lti_block_scan` / `lti_unrolled_scan`: time-invariant too; inside blocks of T steps the states
  are one batched matmul with the (T, T) lower-triangular matrix of powers a^(t-s) per state, or T
  unrolled elementwise steps, and only the block ends (L/T of them) go through `lti_scan`. They read
  b and write the states about once, but were slower than `lti_scan` on an H200.
- `chunked_scan` / `chunked_linear_scan`: associative scans inside chunks of `chunk_size` steps,
  the state carried from chunk to chunk by `jax.lax.scan`, and each chunk rematerialized in the
  backward pass (`jax.checkpoint`). Only the carries (one state per chunk) are saved for the
  gradient, so the scan's working memory is O(chunk * state) instead of O(L * state): what
  input-dependent (selective) SSMs need at Path-X length 16384, where (L, E, N) arrays do not fit.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

__all__ = ["compose_affine", "linear_scan", "lti_scan", "lti_block_scan", "lti_unrolled_scan", "chunked_scan", "chunked_linear_scan"]


def compose_affine(first, second):
    """Apply `first`, then `second`: the associative operator of the scan."""
    a_i, b_i = first
    a_j, b_j = second
    return a_j * a_i, a_j * b_i + b_j


def linear_scan(a: jax.Array, b: jax.Array, axis: int = 0, reverse: bool = False) -> jax.Array:
    """All states of x_t = a_t x_{t-1} + b_t with x_{-1} = 0, along `axis` (a broadcasts against b)."""
    shape = jnp.broadcast_shapes(a.shape, b.shape)
    a = jnp.broadcast_to(a, shape)
    # A non-negative axis: associative_scan's reverse=True rejects negative ones (jax 0.10).
    axis = axis % len(shape)
    _, states = jax.lax.associative_scan(compose_affine, (a, b), axis=axis, reverse=reverse)
    return states


def lti_scan(a: jax.Array, b: jax.Array, axis: int = 0, reverse: bool = False) -> jax.Array:
    """All states of x_t = a x_{t-1} + b_t (x_{-1} = 0) for an `a` that does not change with time.

    The same odd-even recursion as `jax.lax.associative_scan`, but the multiplier of every element
    at recursion level k is a^(2^k), the same at every position: it stays a small array broadcast
    against b instead of a full-size operand, so the scan moves b alone (half the bytes).
    a broadcasts against b with the time axis of b removed (e.g. a (P,) against b (B, L, P)).
    """
    axis = axis % b.ndim
    dtype = jnp.result_type(a, b)
    a = jnp.broadcast_to(a, b.shape[:axis] + b.shape[axis + 1 :])  # no time axis: small
    a, b = jnp.expand_dims(a, axis).astype(dtype), b.astype(dtype)
    if reverse:
        return jnp.flip(_lti_scan(a, jnp.flip(b, axis), axis), axis)
    return _lti_scan(a, b, axis)


def _lti_scan(a, b, axis):
    L = b.shape[axis]
    if L < 2:
        return b
    take = lambda x, start, stop=None: jax.lax.slice_in_dim(x, start, x.shape[axis] if stop is None else stop, 2, axis)
    # Combine neighbours (2i, 2i+1) into one step of multiplier a^2; scan those; then fill in the
    # even positions from the odd states before them.
    pairs = a * take(b, 0, L - L % 2) + take(b, 1)
    odd = _lti_scan(a * a, pairs, axis)  # states at positions 1, 3, 5, ...
    first = jax.lax.slice_in_dim(b, 0, 1, axis=axis)
    later_even = a * jax.lax.slice_in_dim(odd, 0, (L - 1) // 2, axis=axis) + take(b, 2)
    even = jnp.concatenate([first, later_even], axis=axis)  # states at 0, 2, 4, ...
    return _interleave(even, odd, axis)


def _interleave(even, odd, axis):
    """[e0, o0, e1, o1, ...] along axis; even has as many elements as odd or one more."""
    n_odd = odd.shape[axis]
    pad = [(0, 0)] * odd.ndim
    pad[axis] = (0, even.shape[axis] - n_odd)
    pairs = jnp.stack([even, jnp.pad(odd, pad)], axis=axis + 1)
    merged = pairs.reshape(even.shape[:axis] + (2 * even.shape[axis],) + even.shape[axis + 1 :])
    return jax.lax.slice_in_dim(merged, 0, even.shape[axis] + n_odd, axis=axis)


def lti_block_scan(a: jax.Array, b: jax.Array, block: int, reverse: bool = False) -> jax.Array:
    """All states of x_t = a x_{t-1} + b_t (x_{-1} = 0) for a time-invariant diagonal a.

    a: (P,); b: (batch, L, P), time on axis 1 (`reverse`: x_t = a x_{t+1} + b_t). Same result as
    `linear_scan(a, b, axis=1)`. Within each block of T = `block` steps, x = M b with
    M[t, s] = a^(t-s) for s <= t (one matmul per state, batched); the states at the block ends are
    then carried across blocks by an associative scan with multiplier a^T, and block j adds
    a^(t+1) times the state that ended block j-1.
    """
    if reverse:
        return jnp.flip(lti_block_scan(a, jnp.flip(b, axis=1), block), axis=1)
    a, blocks, powers = _split_blocks(a, b, block)
    T = block
    t = jnp.arange(T)
    lag = t[:, None] - t[None, :]
    within = jnp.where((lag >= 0)[..., None], powers[jnp.clip(lag, 0, T)], 0)  # (T, T, P)
    local = jnp.einsum("tsp,bnsp->bntp", within, blocks, precision=jax.lax.Precision.HIGHEST)
    return _join_blocks(local, powers, b.shape[1])


def lti_unrolled_scan(a: jax.Array, b: jax.Array, block: int, reverse: bool = False) -> jax.Array:
    """All states of x_t = a x_{t-1} + b_t (x_{-1} = 0) for a time-invariant a; b (batch, L, P),
    a (P,). Inside blocks of T = `block` steps the recurrence is unrolled as T elementwise steps,
    which XLA fuses into one pass over b; the block ends (L/T of them) go through `lti_scan`, and
    block j adds a^(t+1) times the state that ended block j-1.
    """
    if reverse:
        return jnp.flip(lti_unrolled_scan(a, jnp.flip(b, axis=1), block), axis=1)
    a, blocks, powers = _split_blocks(a, b, block)
    x = blocks[:, :, 0]
    local = [x]
    for t in range(1, block):
        x = a * x + blocks[:, :, t]
        local.append(x)
    return _join_blocks(jnp.stack(local, axis=2), powers, b.shape[1])


def _split_blocks(a, b, T: int):
    """a in the common dtype; b (batch, L, P) zero-padded and cut into (batch, L/T, T, P) blocks;
    the powers a^0 .. a^T, (T + 1, P)."""
    batch, L, P = b.shape
    n = -(-L // T)
    dtype = jnp.result_type(a, b)
    a = a.astype(dtype)
    blocks = jnp.pad(b.astype(dtype), ((0, 0), (0, n * T - L), (0, 0))).reshape(batch, n, T, P)
    return a, blocks, a[None, :] ** jnp.arange(T + 1)[:, None]


def _join_blocks(local, powers, L: int):
    """The states from each block's own states (started from 0), (batch, n, T, P): the block ends
    are carried across blocks by a scan with multiplier a^T, and block j adds a^(t+1) times the
    state that ended block j-1."""
    batch, n, T, P = local.shape
    ends = lti_scan(powers[T], local[:, :, -1], axis=1)  # (batch, n, P)
    before = jnp.concatenate([jnp.zeros_like(ends[:, :1]), ends[:, :-1]], axis=1)
    states = local + powers[1:][None, None] * before[:, :, None, :]
    return states.reshape(batch, n * T, P)[:, :L]


def check_chunk_size(chunk_size: Any) -> None:
    """chunk_size must be a positive int (bool is not): fail before anything is traced."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")


def chunked_scan(
    coeffs_fn: Callable,
    readout_fn: Callable,
    xs: Any,
    chunk_size: int,
    reverse: bool = False,
) -> Any:
    """A linear recurrence whose coefficients are built, and whose states are read out, chunk by chunk.

    The states x_t = a_t x_{t-1} + b_t (x_t = a_t x_{t+1} + b_t if `reverse`), starting from 0, where
    (a, b) = coeffs_fn(xs_chunk) and the result is readout_fn(states_chunk, xs_chunk) for every
    chunk, concatenated over time. Time is axis 0 of every leaf of the pytree `xs` and of the
    arrays coeffs_fn / readout_fn take and return; `a` may broadcast against `b`.

    Why the callbacks: if the caller built a and b for the whole sequence first, those (L, *state)
    arrays would exist in full anyway. Building them per chunk from smaller inputs (for a selective
    SSM: dt, B, u of shape (L, E) / (L, N) rather than (L, E, N)) and contracting the states per
    chunk keeps every state-sized array at chunk length, forwards and backwards.

    How: the sequence is padded to a multiple of chunk_size and reshaped into chunks; `lax.scan`
    walks the chunks carrying the last state; inside a chunk an associative scan gives the
    composed maps (A_t, B_t) from the chunk start, so states = A_t * carry + B_t. Padded steps are
    made identity maps (a = 1, b = 0) whatever coeffs_fn says about the zero padding, so they
    neither change the carry (which matters when `reverse` walks them first) nor the real steps;
    their outputs are sliced off. The chunk body is wrapped in `jax.checkpoint`: the backward pass
    stores only each chunk's input carry and recomputes the chunk's scan.
    """
    check_chunk_size(chunk_size)
    leaves = jax.tree.leaves(xs)
    if not leaves:
        raise ValueError("chunked_scan needs at least one input array")
    L = leaves[0].shape[0]
    if any(leaf.shape[0] != L for leaf in leaves):
        raise ValueError(f"all inputs need the same length on axis 0, got {[x.shape for x in leaves]}")
    chunk_size = min(chunk_size, max(L, 1))  # a chunk longer than the sequence is the sequence
    n_chunks = max(-(-L // chunk_size), 1)
    padded = n_chunks * chunk_size

    def to_chunks(x):
        x = jnp.pad(x, [(0, padded - L)] + [(0, 0)] * (x.ndim - 1))
        return x.reshape(n_chunks, chunk_size, *x.shape[1:])

    xs_chunks = jax.tree.map(to_chunks, xs)
    valid = (jnp.arange(padded) < L).reshape(n_chunks, chunk_size)

    # The carry's shape and dtype: those of one state, found without computing anything.
    a_spec, b_spec = jax.eval_shape(coeffs_fn, jax.tree.map(lambda x: x[0], xs_chunks))
    chunk_shape = jnp.broadcast_shapes(a_spec.shape, b_spec.shape)
    state_dtype = jnp.result_type(a_spec.dtype, b_spec.dtype)
    init = jnp.zeros(chunk_shape[1:], state_dtype)

    def body(carry, inputs):
        xs_chunk, keep = inputs
        a, b = coeffs_fn(xs_chunk)
        a = jnp.broadcast_to(a, chunk_shape)
        b = jnp.broadcast_to(b, chunk_shape)
        keep = keep.reshape((chunk_size,) + (1,) * (len(chunk_shape) - 1))
        a = jnp.where(keep, a, jnp.ones((), a.dtype))
        b = jnp.where(keep, b, jnp.zeros((), b.dtype))
        a_cum, b_cum = jax.lax.associative_scan(compose_affine, (a, b), axis=0, reverse=reverse)
        states = (a_cum * carry + b_cum).astype(state_dtype)
        last = states[0] if reverse else states[-1]
        return last, readout_fn(states, xs_chunk)

    # prevent_cse=False: scan already keeps XLA from merging the recomputation into the forward.
    body = jax.checkpoint(body, prevent_cse=False)
    _, ys = jax.lax.scan(body, init, (xs_chunks, valid), reverse=reverse)
    return jax.tree.map(lambda y: y.reshape(padded, *y.shape[2:])[:L], ys)


def chunked_linear_scan(
    a: jax.Array, b: jax.Array, chunk_size: int, axis: int = 0, reverse: bool = False
) -> jax.Array:
    """Same result as `linear_scan(a, b, axis, reverse)`, computed chunk by chunk (see chunked_scan).

    L need not be a multiple of chunk_size: the last chunk is padded with identity steps (a = 1,
    b = 0) and the padding sliced off. With a and b given in full, the inputs and the returned
    states are still (L, *state); what shrinks is the scan's own working memory and what the
    backward pass saves (one carry per chunk instead of the scan's intermediates). Use
    `chunked_scan` to build a, b and contract the states per chunk as well.
    """
    shape = jnp.broadcast_shapes(a.shape, b.shape)
    a = jnp.moveaxis(jnp.broadcast_to(a, shape), axis, 0)
    b = jnp.moveaxis(jnp.broadcast_to(b, shape), axis, 0)
    states = chunked_scan(lambda ab: ab, lambda states, _: states, (a, b), chunk_size, reverse)
    return jnp.moveaxis(states, 0, axis)
