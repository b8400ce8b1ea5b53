"""Train state and the jitted train / eval steps."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


def init_state(variables, tx: optax.GradientTransformation, dropout_rng: jax.Array) -> TrainState:
    """The step-0 train state around already initialized model variables."""
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        rng=dropout_rng,
    )


def dummy_batch(spec, batch_size: int) -> dict:
    """A batch of the task's shapes: inputs (B, L) or (B, L, C); two-document tasks (spec.dual) add a
    pair axis: inputs (B, 2, L[, C]), mask (B, 2, L)."""
    lead = (batch_size, 2) if getattr(spec, "dual", False) else (batch_size,)
    shape = (*lead, spec.seq_len) if spec.tokens else (*lead, spec.seq_len, spec.in_channels)
    return {
        "inputs": jnp.zeros(shape, jnp.int32 if spec.tokens else jnp.float32),
        "mask": jnp.ones((*lead, spec.seq_len), jnp.float32),
    }


def init_variables(model: nn.Module, spec, batch_size: int, rng: jax.Array):
    batch = dummy_batch(spec, min(batch_size, 2))
    return jax.jit(lambda r: model.init(r, batch["inputs"], batch["mask"], train=False))(rng)


def count_params(params) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))


def model_variables(params, batch_stats) -> dict:
    """The variables `model.apply` takes: batch statistics only for models that have them."""
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def finite_and_norm(tree) -> tuple[jax.Array, jax.Array]:
    """Whether every entry of `tree` is finite, and its global L2 norm, from one flat vector.

    Per leaf, XLA would fold each leaf's two reductions into that leaf's optimizer update: one small
    reduction kernel per leaf, which XLA does not merge across leaves as it merges elementwise ones.
    """
    flat = jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(tree)])
    return jnp.all(jnp.isfinite(flat)), jnp.sqrt(jnp.sum(jnp.square(flat)))


def micro_batches(batch: dict, k: int) -> dict:
    """Split a batch (B, ...) into k micro-batches (k, B/k, ...): micro-batch j holds rows j, j+k, ...

    Interleaved rather than contiguous rows, so that when the batch axis is sharded over devices
    every device keeps contributing B/(k n) rows to every micro-batch and no data moves.
    """

    def split(x):
        return jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)

    return jax.tree_util.tree_map(split, batch)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, accumulate: int = 1):
    """The jitted step: forward, backward, optimizer update, on a batch (B, ...).

    accumulate=k averages the gradients of k micro-batches of B/k (run one after another, so only
    one micro-batch's activations are alive), which equals the gradient of the whole batch; batch
    norm statistics are then those of each micro-batch, updated in turn. A step whose loss or
    gradients are not finite changes nothing but the step counter, and reports `nonfinite` = 1.
    """

    def loss_fn(params, batch_stats, batch, dropout_rng):
        logits, updates = model.apply(
            model_variables(params, batch_stats),
            batch["inputs"],
            batch["mask"],
            train=True,
            rngs={"dropout": dropout_rng},
            mutable=["batch_stats"],
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, (accuracy, updates.get("batch_stats", {}))

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def gradients(state: TrainState, batch, dropout_rng):
        if accumulate == 1:
            (loss, (accuracy, batch_stats)), grads = grad_fn(state.params, state.batch_stats, batch, dropout_rng)
            return loss, accuracy, batch_stats, grads

        def one(carry, xs):
            batch_stats, grad_sum, loss_sum, accuracy_sum = carry
            micro, index = xs
            (loss, (accuracy, batch_stats)), grads = grad_fn(
                state.params, batch_stats, micro, jax.random.fold_in(dropout_rng, index)
            )
            grad_sum = jax.tree_util.tree_map(jnp.add, grad_sum, grads)
            return (batch_stats, grad_sum, loss_sum + loss, accuracy_sum + accuracy), None

        zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
        init = (state.batch_stats, zeros, jnp.zeros(()), jnp.zeros(()))
        xs = (micro_batches(batch, accumulate), jnp.arange(accumulate))
        (batch_stats, grad_sum, loss_sum, accuracy_sum), _ = jax.lax.scan(one, init, xs)
        grads = jax.tree_util.tree_map(lambda g: g / accumulate, grad_sum)
        return loss_sum / accumulate, accuracy_sum / accumulate, batch_stats, grads

    def train_step(state: TrainState, batch):
        dropout_rng = jax.random.fold_in(state.rng, state.step)
        loss, accuracy, batch_stats, grads = gradients(state, batch, dropout_rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grads_finite, grad_norm = finite_and_norm(grads)
        finite = jnp.isfinite(loss) & grads_finite

        def guarded(new, old):
            return jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)

        metrics = {
            "loss": loss,
            "accuracy": accuracy,
            "grad_norm": grad_norm,
            "nonfinite": 1.0 - finite.astype(jnp.float32),
        }
        new_state = state.replace(
            step=state.step + 1,
            params=guarded(params, state.params),
            batch_stats=guarded(batch_stats, state.batch_stats),
            opt_state=guarded(opt_state, state.opt_state),
        )
        return new_state, metrics

    return jax.jit(train_step, donate_argnums=0)


def make_eval_step(model: nn.Module):
    """Sums (not means) over a batch, so that padded rows of weight 0 drop out exactly."""

    def eval_step(state: TrainState, batch):
        logits = model.apply(model_variables(state.params, state.batch_stats), batch["inputs"], batch["mask"], train=False)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        w = batch["weight"]
        return {"loss_sum": jnp.sum(losses * w), "correct": jnp.sum(correct * w), "count": jnp.sum(w)}

    return jax.jit(eval_step)
