"""Checks and float64 references every mixer's tests share."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads


def check_layer_gradients(layer, params, H: int, L: int, seed: int = 7) -> None:
    """Reverse-mode gradients of a layer's parameters against finite differences (float64), for
    sum(sin(layer(u))) on one random (1, L, H) input: the sine makes every output's cotangent
    differ."""
    u = jnp.asarray(np.random.default_rng(seed).normal(size=(1, L, H)))

    def loss(p):
        return jnp.sum(jnp.sin(layer.apply({"params": p}, u)))

    check_grads(jax.jit(loss), (params,), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def assert_rel_close(actual, expected, rtol):
    """The largest error relative to the largest magnitude of `expected`, below rtol."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    err = np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-300)
    assert err < rtol, f"relative error {err:.3e} >= {rtol:.1e}"


def np_discretize(Lam, B, dt, kind):
    """(Abar, Bbar) of a diagonal system by the textbook formulas: zoh, or bilinear otherwise."""
    if kind == "zoh":
        Abar = np.exp(dt * Lam)
        return Abar, (Abar - 1) / Lam * B
    denom = 1 - dt / 2 * Lam
    return (1 + dt / 2 * Lam) / denom, dt * B / denom
