"""Hand-written backward passes: the same values and gradients as the layers they replace."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from ssm_lra.lean_grads import ONE_HOT_GRADIENT_MAX_VOCAB, TokenEmbed, gelu


@pytest.mark.parametrize("vocab", [1, 7, ONE_HOT_GRADIENT_MAX_VOCAB, ONE_HOT_GRADIENT_MAX_VOCAB + 1])
def test_token_embed_is_nn_embed_with_a_one_hot_gradient(vocab):
    """The same parameter and values as nn.Embed, the same gradient in float64 with tokens
    repeated many times; a scatter-add in the gradient only past ONE_HOT_GRADIENT_MAX_VOCAB."""
    with jax.enable_x64(True):
        tokens = jnp.asarray(np.random.default_rng(vocab).integers(0, vocab, size=(4, 2, 33)))
        ref, ours = nn.Embed(vocab, 6, param_dtype=jnp.float64), TokenEmbed(vocab, 6, param_dtype=jnp.float64)
        p_ref, p = ref.init(jax.random.key(0), tokens), ours.init(jax.random.key(0), tokens)
        np.testing.assert_array_equal(p["params"]["embedding"], p_ref["params"]["embedding"])
        np.testing.assert_array_equal(ours.apply(p, tokens), ref.apply(p_ref, tokens))
        g = jax.random.normal(jax.random.key(1), tokens.shape + (6,), jnp.float64)
        got = jax.vjp(lambda q: ours.apply(q, tokens), p)[1](g)[0]["params"]["embedding"]
        want = jax.vjp(lambda q: ref.apply(q, tokens), p_ref)[1](g)[0]["params"]["embedding"]
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        jaxpr = str(jax.make_jaxpr(jax.grad(lambda q: jnp.sum(ours.apply(q, tokens) ** 2)))(p))
        assert ("scatter" in jaxpr) == (vocab > ONE_HOT_GRADIENT_MAX_VOCAB)


def test_gelu_is_nn_gelu_and_saves_only_its_input(capsys):
    """The same values as nn.gelu in float32 and float64, the same gradients in float64 (and the
    closed-form derivative), and for the backward pass it keeps x alone, not tanh(...)."""
    x32 = jax.random.normal(jax.random.PRNGKey(3), (5, 7, 6)) * 3
    np.testing.assert_array_equal(gelu(x32), nn.gelu(x32))
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.PRNGKey(4), (5, 7, 6), jnp.float64) * 3
        g = jax.random.normal(jax.random.PRNGKey(5), x.shape, jnp.float64)
        np.testing.assert_array_equal(gelu(x), nn.gelu(x))
        got = jax.vjp(gelu, x)[1](g)[0]
        want = jax.vjp(nn.gelu, x)[1](g)[0]
        np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-14)
        c = np.sqrt(2 / np.pi)
        t = np.tanh(c * (x + 0.044715 * x**3))
        closed = 0.5 * (1 + t) + 0.5 * x * (1 - t**2) * c * (1 + 3 * 0.044715 * x**2)
        np.testing.assert_allclose(got, g * closed, rtol=1e-12, atol=1e-12)
    print_saved_residuals(lambda v: jnp.sum(gelu(v) * 2.0), x32)
    saved = [line for line in capsys.readouterr().out.splitlines() if "[5,7,6]" in line]
    assert saved == ["f32[5,7,6] from the argument v"], saved
