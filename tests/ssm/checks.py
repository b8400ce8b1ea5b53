"""Checks every mixer's tests share."""

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
