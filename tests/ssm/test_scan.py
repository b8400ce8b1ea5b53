"""Tests of the parallel linear recurrence: associative scan, chunked scan, their gradients.

References are step-by-step numpy loops in float64 / complex128.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_lra.ssm.scan import (
    chunked_linear_scan,
    chunked_scan,
    compose_affine,
    linear_scan,
    lti_block_scan,
    lti_scan,
    lti_unrolled_scan,
)


@pytest.fixture(autouse=True)
def x64():
    """float64 for every test here, restored afterwards so other test modules keep float32."""
    with jax.enable_x64(True):
        yield


def loop_scan(a, b, axis=0, reverse=False):
    """x_t = a_t x_{t-1} + b_t (x_t = a_t x_{t+1} + b_t if reverse), starting from 0, by a loop."""
    a, b = np.broadcast_arrays(a, b)
    a, b = np.moveaxis(a, axis, 0), np.moveaxis(b, axis, 0)
    out = np.zeros(b.shape, np.result_type(a, b))
    x = np.zeros(b.shape[1:], out.dtype)
    steps = range(len(b) - 1, -1, -1) if reverse else range(len(b))
    for t in steps:
        x = a[t] * x + b[t]
        out[t] = x
    return np.moveaxis(out, 0, axis)


def random_ab(rng, shape, kind, a_shape=None):
    """Coefficients with |a| < 1 (a stable recurrence, like a discretized SSM) and arbitrary b."""
    a_shape = shape if a_shape is None else a_shape
    a = rng.uniform(0.5, 1.0, size=a_shape)
    b = rng.normal(size=shape)
    if kind == "complex":
        a = a * np.exp(1j * rng.uniform(-np.pi, np.pi, size=a_shape))
        b = b + 1j * rng.normal(size=shape)
    return a, b


CASES = [  # (shape of b, axis, shape of a or None for the same, real or complex)
    ((37,), 0, None, "real"),
    ((37, 3), 0, None, "complex"),
    ((2, 37, 3), 1, None, "real"),
    ((2, 3, 37), -1, None, "complex"),
    ((37, 4, 5), 0, (37, 4, 1), "complex"),  # a broadcast over the last axis (one rate per channel)
]

# jit everywhere: compiling a scan once is much cheaper than running it op by op.
scan_fn = jax.jit(linear_scan, static_argnames=("axis", "reverse"))
chunked_fn = jax.jit(chunked_linear_scan, static_argnames=("chunk_size", "axis", "reverse"))


def test_compose_affine_is_associative_and_applies_first_then_second():
    rng = np.random.default_rng(0)
    p, q, r = (tuple(rng.normal(size=(2, 3))) for _ in range(3))
    left = compose_affine(compose_affine(p, q), r)
    right = compose_affine(p, compose_affine(q, r))
    np.testing.assert_allclose(left, right, rtol=1e-14)
    x = rng.normal(size=3)
    a, b = compose_affine(p, q)
    np.testing.assert_allclose(a * x + b, q[0] * (p[0] * x + p[1]) + q[1], rtol=1e-14)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shape, axis, a_shape, kind", CASES)
def test_linear_scan_matches_loop(shape, axis, a_shape, kind, reverse):
    rng = np.random.default_rng(len(shape) + axis)
    a, b = random_ab(rng, shape, kind, a_shape)
    states = scan_fn(jnp.asarray(a), jnp.asarray(b), axis=axis, reverse=reverse)
    assert states.shape == shape
    assert states.dtype == (jnp.complex128 if kind == "complex" else jnp.float64)
    np.testing.assert_allclose(states, loop_scan(a, b, axis, reverse), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["real", "complex"])
@pytest.mark.parametrize("reverse", [False, True])
def test_chunked_equals_unchunked_and_loop(reverse, kind):
    # L = 37 is prime: only chunk sizes 1 and 37 divide it; 8 leaves a partial last chunk, 64 > L.
    rng = np.random.default_rng(int(reverse))
    a, b = random_ab(rng, (37, 3), kind)
    full = scan_fn(jnp.asarray(a), jnp.asarray(b), reverse=reverse)
    ref = loop_scan(a, b, reverse=reverse)
    for chunk_size in [1, 8, 37, 64]:
        states = chunked_fn(jnp.asarray(a), jnp.asarray(b), chunk_size=chunk_size, reverse=reverse)
        assert states.shape == (37, 3) and states.dtype == full.dtype
        np.testing.assert_allclose(states, full, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(states, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape, axis, a_shape, kind", CASES[2:])
def test_chunked_other_axes_and_broadcasting(shape, axis, a_shape, kind):
    rng = np.random.default_rng(7)
    a, b = random_ab(rng, shape, kind, a_shape)
    for reverse, chunk_size in [(False, 8), (True, 5)]:
        states = chunked_fn(jnp.asarray(a), jnp.asarray(b), chunk_size, axis=axis, reverse=reverse)
        assert states.shape == shape
        np.testing.assert_allclose(states, loop_scan(a, b, axis, reverse), rtol=1e-12, atol=1e-12)


def test_chunked_real_a_complex_b_and_length_one():
    # A real decay with complex inputs (state dtype is the promoted one), and the degenerate L = 1.
    rng = np.random.default_rng(3)
    a, _ = random_ab(rng, (10, 2), "real")
    _, b = random_ab(rng, (10, 2), "complex")
    states = chunked_fn(jnp.asarray(a), jnp.asarray(b), chunk_size=3)
    assert states.dtype == jnp.complex128
    np.testing.assert_allclose(states, loop_scan(a, b), rtol=1e-12)
    one = chunked_fn(jnp.asarray(a[:1]), jnp.asarray(b[:1]), chunk_size=4, reverse=True)
    np.testing.assert_allclose(one, b[:1], rtol=1e-15)


@pytest.mark.parametrize(
    "chunk_size, reverse, kind",
    [(8, False, "real"), (8, True, "complex"), (1, False, "complex"), (64, True, "real")],
)
def test_chunked_gradients_match_unchunked(chunk_size, reverse, kind):
    rng = np.random.default_rng(10 + chunk_size)
    shape = (37, 3)
    a, b = random_ab(rng, shape, kind)
    w = rng.normal(size=shape) + (1j * rng.normal(size=shape) if kind == "complex" else 0)
    a, b, w = jnp.asarray(a), jnp.asarray(b), jnp.asarray(w)

    def loss(scan, a, b):
        # A real loss of every state, so every state's cotangent is non-zero and distinct.
        return jnp.sum(jnp.real(w * scan(a, b)) ** 2)

    chunked = lambda a, b: chunked_linear_scan(a, b, chunk_size, reverse=reverse)
    full = lambda a, b: linear_scan(a, b, reverse=reverse)
    g_chunked = jax.jit(jax.grad(lambda a, b: loss(chunked, a, b), argnums=(0, 1)))(a, b)
    g_full = jax.jit(jax.grad(lambda a, b: loss(full, a, b), argnums=(0, 1)))(a, b)
    for gc, gf in zip(g_chunked, g_full):
        assert gc.shape == shape
        assert np.count_nonzero(np.asarray(gf)) >= gf.size - shape[1]  # a_0 (a_{L-1}) acts on x = 0
        np.testing.assert_allclose(gc, gf, rtol=1e-11, atol=1e-11)


def test_chunked_gradients_match_finite_differences():
    from jax.test_util import check_grads

    rng = np.random.default_rng(5)
    a, b = random_ab(rng, (11, 2), "real")
    fn = jax.jit(lambda a, b: jnp.sum(jnp.sin(chunked_linear_scan(a, b, 4))))
    check_grads(fn, (jnp.asarray(a), jnp.asarray(b)), order=1, modes=["rev"], atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 5, 23, 40])
def test_chunked_scan_builds_and_reads_out_per_chunk(chunk_size, reverse):
    # A selective-SSM-shaped use: coefficients from per-step inputs, states contracted per chunk.
    rng = np.random.default_rng(chunk_size)
    L, E, N = 23, 3, 4
    dt = rng.uniform(0.01, 0.5, size=(L, E))
    u = rng.normal(size=(L, E))
    Bt, Ct = rng.normal(size=(L, N)), rng.normal(size=(L, N))
    A = -rng.uniform(0.5, 3.0, size=(E, N))

    def coeffs(xs):
        dt, u, B, _ = xs
        return jnp.exp(dt[:, :, None] * A), (dt * u)[:, :, None] * B[:, None, :]

    def readout(states, xs):
        return {"y": jnp.einsum("ten,tn->te", states, xs[3]), "h0": states[:, :, 0]}

    xs = tuple(jnp.asarray(x) for x in (dt, u, Bt, Ct))
    out = chunked_scan(coeffs, readout, xs, chunk_size, reverse=reverse)
    a, b = coeffs((dt, u, Bt, Ct))
    states = loop_scan(np.asarray(a), np.asarray(b), reverse=reverse)
    np.testing.assert_allclose(out["y"], np.einsum("ten,tn->te", states, Ct), rtol=1e-12)
    np.testing.assert_allclose(out["h0"], states[:, :, 0], rtol=1e-12)


def test_chunked_scan_padding_is_identity_even_if_coeffs_of_zeros_are_not():
    # coeffs of the zero padding give a = 0, b = 1: were they used, the reverse scan would start
    # from 1 instead of 0 on the partial chunk.
    xs = jnp.asarray(np.random.default_rng(0).normal(size=(7,)))
    coeffs = lambda x: (x * 0.5, 1.0 - x)
    out = chunked_scan(coeffs, lambda s, _: s, xs, chunk_size=3, reverse=True)
    ref = loop_scan(0.5 * np.asarray(xs), 1.0 - np.asarray(xs), reverse=True)
    np.testing.assert_allclose(out, ref, rtol=1e-13)


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, True, "8"])
def test_invalid_chunk_size_raises(chunk_size):
    a = jnp.ones((5,))
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_linear_scan(a, a, chunk_size)


lti_fn = jax.jit(lti_block_scan, static_argnames=("block", "reverse"))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("L, block", [(37, 8), (37, 1), (32, 8), (5, 16), (64, 64)])
def test_lti_block_scan_matches_loop_and_associative_scan(L, block, reverse):
    rng = np.random.default_rng(L + block)
    a, _ = random_ab(rng, (4,), "complex")
    _, b = random_ab(rng, (2, L, 4), "complex")
    ref = loop_scan(np.broadcast_to(a, b.shape), b, axis=1, reverse=reverse)
    states = lti_fn(jnp.asarray(a), jnp.asarray(b), block=block, reverse=reverse)
    assert states.shape == b.shape and states.dtype == jnp.complex128
    np.testing.assert_allclose(states, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(states, scan_fn(jnp.asarray(a), jnp.asarray(b), axis=1, reverse=reverse), rtol=1e-12, atol=1e-12)


def test_lti_block_scan_gradients_match_the_associative_scan():
    rng = np.random.default_rng(5)
    a, _ = random_ab(rng, (3,), "complex")
    _, b = random_ab(rng, (2, 21, 3), "complex")
    w = jnp.asarray(rng.normal(size=(2, 21, 3)))

    def loss(scan, a, b):
        return jnp.sum(w * jnp.abs(scan(a, b)) ** 2)

    blocked = jax.jit(jax.grad(lambda a, b: loss(lambda a, b: lti_block_scan(a, b, 4), a, b), argnums=(0, 1)))
    plain = jax.jit(jax.grad(lambda a, b: loss(lambda a, b: linear_scan(a, b, axis=1), a, b), argnums=(0, 1)))
    for g1, g2 in zip(blocked(jnp.asarray(a), jnp.asarray(b)), plain(jnp.asarray(a), jnp.asarray(b))):
        np.testing.assert_allclose(g1, g2, rtol=1e-10, atol=1e-12)


LTI_CASES = [  # (shape of b, time axis, shape of a: b's without the time axis, or broadcastable to it)
    ((1,), 0, (), "real"),
    ((37,), 0, (), "complex"),
    ((2, 37, 3), 1, (3,), "complex"),
    ((2, 37, 3), 1, (2, 3), "real"),
    ((3, 4, 64), -1, (3, 1), "complex"),
    ((33, 5), 0, (5,), "real"),
]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shape, axis, a_shape, kind", LTI_CASES)
def test_lti_scan_matches_loop(shape, axis, a_shape, kind, reverse):
    # A time-invariant a, any time axis: the same states as the loop with a repeated at every step.
    rng = np.random.default_rng(len(shape) * 100 + shape[axis])
    a, _ = random_ab(rng, a_shape, kind)
    _, b = random_ab(rng, shape, kind)
    a_full = np.broadcast_to(np.expand_dims(np.broadcast_to(a, np.delete(shape, axis % len(shape))), axis), shape)
    states = jax.jit(lti_scan, static_argnames=("axis", "reverse"))(jnp.asarray(a), jnp.asarray(b), axis=axis, reverse=reverse)
    assert states.shape == b.shape
    np.testing.assert_allclose(states, loop_scan(a_full, b, axis=axis, reverse=reverse), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("L, block", [(37, 8), (37, 1), (32, 8), (5, 16)])
def test_lti_unrolled_scan_matches_loop(L, block, reverse):
    rng = np.random.default_rng(L * block)
    a, _ = random_ab(rng, (4,), "complex")
    _, b = random_ab(rng, (2, L, 4), "complex")
    states = jax.jit(lti_unrolled_scan, static_argnames=("block", "reverse"))(jnp.asarray(a), jnp.asarray(b), block=block, reverse=reverse)
    np.testing.assert_allclose(states, loop_scan(np.broadcast_to(a, b.shape), b, axis=1, reverse=reverse), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scan", ["lti", "unrolled"])
def test_time_invariant_scan_gradients_match_the_associative_scan(scan):
    # The gradient with respect to a flows through the powers a^(2^k) (or a^t): checked against
    # the associative scan of the broadcast pairs.
    rng = np.random.default_rng(6)
    a, _ = random_ab(rng, (3,), "complex")
    _, b = random_ab(rng, (2, 21, 3), "complex")
    w = jnp.asarray(rng.normal(size=(2, 21, 3)))
    fast = {"lti": lambda a, b: lti_scan(a, b, axis=1), "unrolled": lambda a, b: lti_unrolled_scan(a, b, 4)}[scan]

    def loss(run, a, b):
        return jnp.sum(w * jnp.abs(run(a, b)) ** 2)

    grads = jax.jit(jax.grad(lambda a, b: loss(fast, a, b), argnums=(0, 1)))(jnp.asarray(a), jnp.asarray(b))
    plain = jax.grad(lambda a, b: loss(lambda a, b: linear_scan(a, b, axis=1), a, b), argnums=(0, 1))
    ref = jax.jit(plain)(jnp.asarray(a), jnp.asarray(b))
    for g1, g2 in zip(grads, ref):
        np.testing.assert_allclose(g1, g2, rtol=1e-10, atol=1e-12)
