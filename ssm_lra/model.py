"""The backbone shared by every sequence model: encoder, residual blocks, pooling, classifier.

Only the sequence mixer changes between S4, S4D, S5 and Mamba; everything around it is here, so
that model comparisons differ in the mixer alone.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssm_lra.errors import ConfigError
from ssm_lra.lean_grads import TokenEmbed, gelu
from ssm_lra.ssm import mixer_class

NORMS = ("batch", "layer")
ACTIVATIONS = ("glu", "half_glu1", "half_glu2", "gelu", "none")
POOLINGS = ("mean", "last")
GLU_PRODUCTS = ("auto", "one", "two")


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over the valid (mask == 1) positions of each sequence: (B, L, H) -> (B, H)."""
    weights = mask.astype(x.dtype)[..., None]
    return (x * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1.0)


def last_valid(x: jax.Array, mask: jax.Array) -> jax.Array:
    """The output at each sequence's last valid position: (B, L, H) -> (B, H)."""
    last = jnp.maximum(mask.sum(axis=1).astype(jnp.int32) - 1, 0)
    return jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]


class Norm(nn.Module):
    kind: str

    @nn.compact
    def __call__(self, x, mask, train: bool):
        if self.kind == "batch":
            # Statistics over real positions only: padding would otherwise shift them per task.
            return nn.BatchNorm(use_running_average=not train, momentum=0.9)(x, mask=mask[..., None] > 0)
        return nn.LayerNorm()(x)


class GatedDense(nn.Module):
    """x -> a * sigmoid(b), where [a | b] = x W + bias with one (H_in, 2 features) kernel: nn.Dense
    followed by nn.glu, with the same parameters (names, shapes, initialization).

    split computes a and b as two products on the kernel's halves instead of one. Same values; on a
    GPU it changes what XLA fuses: without the split, the backward pass writes the two halves'
    gradients and concatenates them into one (B, L, 2H) array for the kernel's gradient.
    """

    features: int
    dtype: Any = jnp.float32
    split: bool = False
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        shape = (x.shape[-1], 2 * self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros_init(), (2 * self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        if not self.split:
            return nn.glu(x @ kernel + bias, axis=-1)
        half = self.features
        return (x @ kernel[:, :half] + bias[:half]) * jax.nn.sigmoid(x @ kernel[:, half:] + bias[half:])


class OutputActivation(nn.Module):
    """What follows the SSM in a block: a nonlinearity and the position-wise output mixing.

    glu: S4's GELU then linear to 2H and a GLU; half_glu1/2: S5's GELU then a sigmoid gate;
    gelu: GELU then a linear layer; none: nothing (mixers with their own gating, like Mamba).
    """

    kind: str
    d_model: int
    dropout: float
    dtype: Any = jnp.float32  # compute dtype of the dense layers (parameters stay float32)
    glu_split: bool = False  # glu: two (H, H) products instead of one (H, 2H) (GatedDense)

    @nn.compact
    def __call__(self, y, train: bool):
        drop = nn.Dropout(self.dropout, deterministic=not train)
        if self.kind == "none":
            return drop(y)
        y = y.astype(self.dtype)
        act = drop(gelu(y))
        if self.kind == "glu":
            # Named as the nn.Dense it replaced, so that checkpoints keep their parameter paths.
            return drop(GatedDense(self.d_model, self.dtype, self.glu_split, name="Dense_0")(act))
        if self.kind == "half_glu1":
            return drop(act * jax.nn.sigmoid(nn.Dense(self.d_model, dtype=self.dtype)(act)))
        if self.kind == "half_glu2":
            return drop(y * jax.nn.sigmoid(nn.Dense(self.d_model, dtype=self.dtype)(act)))
        return drop(nn.Dense(self.d_model, dtype=self.dtype)(act))


class ResidualBlock(nn.Module):
    mixer: str
    mixer_config: Mapping[str, Any]
    d_model: int
    norm: str
    prenorm: bool
    activation: str
    dropout: float
    dtype: Any = jnp.float32
    glu_split: bool = False

    @nn.compact
    def __call__(self, x, mask, train: bool):
        # Mixed precision keeps the residual stream, the norms and the SSM in float32: only the
        # position-wise dense layers run in `dtype`.
        skip = x
        keep = mask[..., None].astype(x.dtype)
        if self.prenorm:
            # Re-zero the padding: normalization maps zeros to nonzero values a mixer would read.
            x = Norm(self.norm)(x, mask, train) * keep
        x = mixer_class(self.mixer)(d_model=self.d_model, **self.mixer_config)(x, mask=mask)
        x = OutputActivation(self.activation, self.d_model, self.dropout, self.dtype, self.glu_split)(x, train)
        x = x.astype(skip.dtype) + skip
        if not self.prenorm:
            x = Norm(self.norm)(x, mask, train)
        # Zero the padding so that bidirectional mixers never read it.
        return x * keep


def pair_features(u: jax.Array, v: jax.Array) -> jax.Array:
    """The dual-encoder interaction [u, v, u * v, u - v] (LRA's "NLI" head, as S4/S5): (B, H) x 2 -> (B, 4H)."""
    return jnp.concatenate([u, v, u * v, u - v], axis=-1)


class SequenceClassifier(nn.Module):
    """inputs (B, L) token ids or (B, L, C) reals, mask (B, L) -> logits (B, num_classes).

    dual (two documents per example, e.g. Retrieval): inputs (B, 2, L) or (B, 2, L, C), mask (B, 2, L).
    Both documents go through the same encoder and blocks as 2B independent sequences (batch norm
    statistics are taken over the real positions of all of them), are pooled to u and v, and an MLP
    on pair_features(u, v) (Dense d_model, GELU, Dense num_classes) gives the logits. The pooled
    embeddings (B, 2, H) are sown as intermediates "pooled".
    """

    num_classes: int
    vocab_size: int | None
    mixer: str
    mixer_config: Mapping[str, Any]
    d_model: int = 128
    n_layers: int = 4
    norm: str = "batch"
    prenorm: bool = False
    activation: str = "glu"
    dropout: float = 0.0
    pooling: str = "mean"
    dual: bool = False
    dtype: Any = jnp.float32  # compute dtype of the non-SSM dense layers (bfloat16: mixed precision)
    glu_split: bool = False  # activation glu as two products (GatedDense)

    def routes(self) -> dict[str, str]:
        """The routes its layers take on this backend where settings leave a choice (the mixer's, see
        `Mixer.routes`, and the GLU's products), e.g. {"conv": "fft", "glu_products": "one"}."""
        # parent=None: a stand-alone mixer, not a submodule of this (unbound) classifier.
        routes = mixer_class(self.mixer)(d_model=self.d_model, parent=None, **self.mixer_config).routes()
        if self.activation == "glu":
            routes["glu_products"] = "two" if self.glu_split else "one"
        return routes

    @nn.compact
    def __call__(self, inputs, mask, train: bool = False):
        if self.dual:
            if mask.ndim != 3 or mask.shape[1] != 2:
                raise ValueError(f"a dual model takes mask (B, 2, L) and inputs (B, 2, L[, C]); got mask {mask.shape}")
            batch = mask.shape[0]
            inputs = inputs.reshape((2 * batch,) + inputs.shape[2:])
            mask = mask.reshape(2 * batch, mask.shape[2])
        if self.vocab_size is not None:
            x = TokenEmbed(self.vocab_size, self.d_model, name="encoder")(inputs)
        else:
            x = nn.Dense(self.d_model, name="encoder")(inputs)
        x = x * mask[..., None].astype(x.dtype)
        for i in range(self.n_layers):
            x = ResidualBlock(
                self.mixer,
                self.mixer_config,
                self.d_model,
                self.norm,
                self.prenorm,
                self.activation,
                self.dropout,
                self.dtype,
                self.glu_split,
                name=f"block_{i}",
            )(x, mask, train)
        pooled = masked_mean(x, mask) if self.pooling == "mean" else last_valid(x, mask)
        if not self.dual:
            return nn.Dense(self.num_classes, name="head")(pooled)
        pooled = pooled.reshape(batch, 2, self.d_model)
        self.sow("intermediates", "pooled", pooled)
        hidden = nn.gelu(nn.Dense(self.d_model, name="pair_mlp")(pair_features(pooled[:, 0], pooled[:, 1])))
        return nn.Dense(self.num_classes, name="head")(hidden)


PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def glu_split(model_cfg: Mapping[str, Any], on_gpu: bool) -> bool:
    """`model.glu_products`: one or two as given; auto is two where S4D's / S4-PTD's convolution
    runs by chunks on a GPU (faster there, slower on the FFT routes: results/bench/NOTES.md,
    lever 14), one elsewhere."""
    setting = model_cfg.get("glu_products", "auto")
    if setting not in GLU_PRODUCTS:
        raise ConfigError(f"model.glu_products={setting!r} is not one of {list(GLU_PRODUCTS)}.")
    if setting != "auto":
        return setting == "two"
    from ssm_lra.ssm import convolution_route

    return on_gpu and convolution_route(model_cfg["name"], model_cfg.get("mixer") or {}, on_gpu) == "chunked"


def build_model(model_cfg: Mapping[str, Any], spec, precision: str = "float32") -> SequenceClassifier:
    """The classifier for a task from the `model` config group; raises ConfigError on bad choices.

    precision "bfloat16" runs the dense layers in bfloat16 (mixed precision); the SSM, the norms
    and the residual stream stay float32.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision!r} is not one of {list(PRECISIONS)}.")
    for key, allowed in (("norm", NORMS), ("activation", ACTIVATIONS), ("pooling", POOLINGS)):
        if model_cfg[key] not in allowed:
            raise ConfigError(f"model.{key}={model_cfg[key]!r} is not one of {list(allowed)}.")
    if model_cfg["d_model"] < 1 or model_cfg["n_layers"] < 1:
        raise ConfigError("model.d_model and model.n_layers must be positive integers.")
    if not 0.0 <= model_cfg["dropout"] < 1.0:
        raise ConfigError(f"model.dropout={model_cfg['dropout']} must be in [0, 1).")
    from ssm_lra.ssm import check_mixer_config

    mixer_config = dict(model_cfg["mixer"])
    check_mixer_config(model_cfg["name"], int(model_cfg["d_model"]), mixer_config)
    from ssm_lra.ssm.pallas_common import fused_scan_available

    split = glu_split(model_cfg, on_gpu=fused_scan_available())
    return SequenceClassifier(
        num_classes=spec.num_classes,
        vocab_size=spec.vocab_size,
        mixer=model_cfg["name"],
        mixer_config=mixer_config,
        d_model=int(model_cfg["d_model"]),
        n_layers=int(model_cfg["n_layers"]),
        norm=model_cfg["norm"],
        prenorm=bool(model_cfg["prenorm"]),
        activation=model_cfg["activation"],
        dropout=float(model_cfg["dropout"]),
        pooling=model_cfg["pooling"],
        dual=bool(getattr(spec, "dual", False)),
        dtype=PRECISIONS[precision],
        glu_split=split,
    )
