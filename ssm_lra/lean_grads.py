"""Layers whose backward pass is written by hand because XLA's own derivative moves more bytes.

Each keeps the values (and parameters) of the flax/jax layer it replaces exactly; the tests check
the gradients against that layer's in float64 and what the backward pass stores or scatters.
Measured gains are in results/bench/NOTES.md (levers 23 and 26).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["ONE_HOT_GRADIENT_MAX_VOCAB", "TokenEmbed", "embedding_lookup", "gelu"]


@jax.custom_vjp
def gelu(x: jax.Array) -> jax.Array:
    """nn.gelu (the tanh approximation), whose backward pass recomputes the tanh from x.

    Differentiated as written, the forward pass also stores tanh(...) of every activation for the
    backward pass: one more (B, L, H) array written and read back per block, where recomputing it
    costs a few arithmetic operations in a pass that reads x anyway.
    """
    return nn.gelu(x, approximate=True)


def _gelu_fwd(x):
    return gelu(x), x


def _gelu_bwd(x, g):
    # The barrier keeps XLA from merging this tanh with the forward pass's (common-subexpression
    # elimination), which would store it again.
    x = jax.lax.optimization_barrier(x)
    return jax.vjp(lambda v: nn.gelu(v, approximate=True), x)[1](g)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


# Up to this many tokens, the embedding's gradient is a one-hot product (TokenEmbed). The product
# costs 2 V FLOPs per gradient entry at true float32 (about 50 TFLOP/s measured on an H200), the
# scatter about 4 bytes at the 1.1 TB/s its atomics reached (ListOps, NOTES.md lever 26): the
# product wins below about 60 tokens. ListOps (17) is under it; the byte-level tasks (257) keep
# the scatter, where the product would cost some 0.1 ms more a step.
ONE_HOT_GRADIENT_MAX_VOCAB = 32


@jax.custom_vjp
def embedding_lookup(table: jax.Array, tokens: jax.Array) -> jax.Array:
    """table[tokens], whose gradient for the table is one_hot(tokens)^T g: one product.

    The gradient of a gather is a scatter-add of every position's row into the table; with few
    distinct tokens (ListOps' 17) and 65,536 positions a step, a GPU runs it as atomic adds
    piling onto the same rows. The product reads g once at full bandwidth.
    """
    return jnp.take(table, tokens, axis=0)


def _embedding_lookup_fwd(table, tokens):
    # Residuals must be arrays: a (V, 0) array carries the table's size and dtype and holds nothing.
    return embedding_lookup(table, tokens), (tokens, jnp.zeros((table.shape[0], 0), table.dtype))


def _embedding_lookup_bwd(residuals, g):
    tokens, vocab = residuals
    one_hot = jax.nn.one_hot(tokens, vocab.shape[0], dtype=g.dtype)
    # Exact float32 sums: at default precision a GPU would round g to TF32 inside the product.
    d_table = jnp.einsum("...v,...h->vh", one_hot, g, precision=jax.lax.Precision.HIGHEST)
    return d_table.astype(vocab.dtype), None


embedding_lookup.defvjp(_embedding_lookup_fwd, _embedding_lookup_bwd)


class TokenEmbed(nn.Embed):
    """nn.Embed (the same parameter, initialization and values) whose gradient is a one-hot
    product for vocabularies up to ONE_HOT_GRADIENT_MAX_VOCAB tokens (embedding_lookup)."""

    def __call__(self, inputs):
        if self.num_embeddings > ONE_HOT_GRADIENT_MAX_VOCAB or self.num_embeddings == 1:
            return super().__call__(inputs)
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError("Input type must be an integer or unsigned integer.")
        (embedding,) = self.promote_dtype(self.embedding, dtype=self.dtype, inexact=False)
        return embedding_lookup(embedding, inputs)
