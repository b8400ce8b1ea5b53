"""The backbone: pooling, padding invariance, config errors, the GLU's dense layer."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssm_lra.ssm.pallas_common as pallas_common
from ssm_lra.data.tasks import TaskSpec
from ssm_lra.errors import ConfigError
from ssm_lra.model import (
    GatedDense,
    build_model,
    glu_split,
    last_valid,
    masked_mean,
)

SPEC = TaskSpec("toy", seq_len=24, num_classes=3, vocab_size=11)


def model_cfg(**overrides):
    cfg = {
        "name": "s4d",
        "d_model": 8,
        "n_layers": 2,
        "norm": "batch",
        "prenorm": False,
        "activation": "glu",
        "dropout": 0.0,
        "pooling": "mean",
        "mixer": {"d_state": 8, "bidirectional": True},
    }
    cfg.update(overrides)
    return cfg


def assert_same_outputs(model, variables, tokens, other, mask):
    """The model's outputs (inference, and training with batch statistics) are equal for two
    inputs; returns the jitted inference function. Jitted because, op by op, the scans' many small
    operations take most of a minute on a CPU."""
    infer = jax.jit(model.apply)
    train_step = jax.jit(lambda v, x, m: model.apply(v, x, m, train=True, mutable=["batch_stats"])[0])
    for apply in (infer, train_step):
        a, b = apply(variables, tokens, mask), apply(variables, other, mask)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    return infer


def test_masked_mean_ignores_padding():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 10, 4)).astype(np.float32)
    lengths = [10, 4, 1]
    mask = np.zeros((3, 10), np.float32)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    out = np.asarray(masked_mean(jnp.asarray(x), jnp.asarray(mask)))
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(out[i], x[i, :n].mean(0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(last_valid(jnp.asarray(x), jnp.asarray(mask)))[1], x[1, 3])


@pytest.mark.parametrize(
    "name,norm,prenorm,activation",
    [
        ("s4d", "batch", False, "glu"),
        ("s4d", "layer", True, "half_glu1"),
        ("s4d", "batch", True, "half_glu2"),
        ("s4", "batch", True, "glu"),
        ("s5", "batch", True, "half_glu1"),
        ("mamba", "layer", True, "none"),
    ],
)
def test_logits_do_not_depend_on_padding(name, norm, prenorm, activation):
    """Whatever sits in the padded positions, and however many there are, a bidirectional model's
    outputs are unchanged."""
    mixer = {"s5": {"d_state": 8, "blocks": 2, "bidirectional": True}, "mamba": {"d_state": 4, "bidirectional": True}}
    cfg = model_cfg(name=name, norm=norm, prenorm=prenorm, activation=activation)
    cfg["mixer"] = mixer.get(name, cfg["mixer"])
    model = build_model(cfg, SPEC)
    rng = np.random.default_rng(1)
    tokens = rng.integers(2, 11, size=(4, 24)).astype(np.int32)
    mask = np.ones((4, 24), np.float32)
    mask[:, 15:] = 0
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), tokens, mask)
    garbage = tokens.copy()
    garbage[:, 15:] = rng.integers(2, 11, size=(4, 9))
    infer = assert_same_outputs(model, variables, tokens, garbage, mask)
    # Nor on how much padding there is: the same 15 tokens padded to 24 or to 40 positions. (Not for
    # S4: its stored C~ = C (I - Abar^L) ties the kernel to one length L, as in the S4 papers; every
    # batch of a task has the same length, so this never varies within a run.)
    if name == "s4":
        return
    longer = np.zeros((4, 40), np.int32)
    longer[:, :24] = tokens
    longer_mask = np.zeros((4, 40), np.float32)
    longer_mask[:, :15] = 1
    np.testing.assert_allclose(
        np.asarray(infer(variables, tokens, mask)),
        np.asarray(infer(variables, longer, longer_mask)),
        rtol=1e-4,
        atol=1e-5,
    )
    # The content of the real positions does matter.
    changed = tokens.copy()
    changed[:, :15] = rng.integers(2, 11, size=(4, 15))
    assert not np.allclose(infer(variables, tokens, mask), infer(variables, changed, mask))


def test_real_valued_inputs():
    spec = TaskSpec("toy_real", seq_len=16, num_classes=2, vocab_size=None, in_channels=1)
    model = build_model(model_cfg(), spec)
    x = np.random.default_rng(0).random((2, 16, 1)).astype(np.float32)
    mask = np.ones((2, 16), np.float32)
    logits = model.apply(model.init(jax.random.PRNGKey(0), x, mask), x, mask)
    assert logits.shape == (2, 2) and np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"norm": "group"}, "model.norm"),
        ({"activation": "relu6"}, "model.activation"),
        ({"pooling": "max"}, "model.pooling"),
        ({"dropout": 1.5}, "model.dropout"),
        ({"mixer": {"d_state": 8, "colour": "red"}}, "unknown key"),
        ({"mixer": {"d_state": 8, "ssm_init": "legt"}}, "ssm_init"),
        ({"mixer": {"d_state": 8, "dt_min": 0.5, "dt_max": 0.1}}, "dt_min"),
        ({"name": "transformer"}, "unknown model"),
        ({"glu_products": "three"}, "model.glu_products"),
    ],
)
def test_bad_model_config_is_a_config_error(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build_model(model_cfg(**overrides), SPEC)


# ---------------------------------------------------------------- the GLU's dense layer


class DenseThenGlu(nn.Module):
    """The obviously-correct form: flax's own Dense to 2H, then flax's GLU."""

    features: int

    @nn.compact
    def __call__(self, x):
        return nn.glu(nn.Dense(2 * self.features, param_dtype=jnp.float64, name="Dense_0")(x), axis=-1)


class Gated(nn.Module):
    features: int
    split: bool

    @nn.compact
    def __call__(self, x):
        return GatedDense(self.features, jnp.float64, self.split, jnp.float64, name="Dense_0")(x)


@pytest.mark.parametrize("shape,features", [((3, 7, 16), 8), ((2, 5, 4), 12), ((9, 6), 1)])
@pytest.mark.parametrize("split", [False, True])
def test_gated_dense_is_dense_then_glu(shape, features, split):
    """Same parameters from the same key (so checkpoints and inits carry over), same values and
    same gradients, with one product or two, in float64."""
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.PRNGKey(shape[0]), shape, jnp.float64)
        reference, gated = DenseThenGlu(features), Gated(features, split)
        params = reference.init(jax.random.PRNGKey(1), x)
        own = gated.init(jax.random.PRNGKey(1), x)
        assert jax.tree.structure(own) == jax.tree.structure(params)
        for a, b in zip(jax.tree.leaves(own), jax.tree.leaves(params)):
            np.testing.assert_array_equal(a, b)
        cotangent = jax.random.normal(jax.random.PRNGKey(2), shape[:-1] + (features,), jnp.float64)

        def pullback(module):
            out, vjp = jax.vjp(lambda p, u: module.apply(p, u), params, x)
            return out, vjp(cotangent)

        (want, want_grads), (got, got_grads) = pullback(reference), pullback(gated)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "overrides,on_gpu,split",
    [
        ({}, True, True),  # S4D at N 8: conv auto takes the chunks on a GPU
        ({}, False, False),  # and the FFT elsewhere
        ({"mixer": {"d_state": 64}}, True, False),  # the presets' N 64: FFT
        ({"mixer": {"d_state": 64, "conv": "chunked"}}, True, True),  # Path-X's chunks
        ({"mixer": {"d_state": 64, "conv": "chunked"}}, False, False),
        ({"mixer": {"d_state": 8, "conv": "fft"}}, True, False),
        ({"name": "s4", "mixer": {"d_state": 4}}, True, False),  # S4: always the FFT
        ({"glu_products": "two"}, False, True),
        ({"glu_products": "one"}, True, False),
    ],
)
def test_glu_products_rule(overrides, on_gpu, split):
    assert glu_split(model_cfg(**overrides), on_gpu) is split


def test_build_model_resolves_glu_products_for_the_backend(monkeypatch):
    """auto splits the GLU's product where the chunks run on a GPU: here, only when the backend
    looks like one; the parameters are the same either way."""
    tokens, mask = np.ones((2, SPEC.seq_len), np.int32), np.ones((2, SPEC.seq_len), np.float32)
    on_cpu = build_model(model_cfg(), SPEC)
    monkeypatch.setattr(pallas_common, "fused_scan_available", lambda: True)
    as_on_gpu = build_model(model_cfg(), SPEC)
    assert (on_cpu.glu_split, as_on_gpu.glu_split) == (False, True)
    shapes = [jax.eval_shape(m.init, jax.random.PRNGKey(0), tokens, mask) for m in (on_cpu, as_on_gpu)]
    assert jax.tree.structure(shapes[0]) == jax.tree.structure(shapes[1])


@pytest.mark.parametrize(
    "overrides,on_gpu,routes",
    [
        ({}, False, {"conv": "fft", "glu_products": "one"}),
        ({}, True, {"conv": "chunked", "chunk": "64", "chunk_precision": "default", "chunk_scan": "fused",
                    "glu_products": "two"}),
        ({"mixer": {"d_state": 8, "conv": "chunked", "chunk_size": 16, "chunk_scan": "xla"}}, True,
         {"conv": "chunked", "chunk": "16", "chunk_precision": "highest", "chunk_scan": "xla", "glu_products": "two"}),
        ({"mixer": {"d_state": 8, "conv": "chunked"}}, False,
         {"conv": "chunked", "chunk": "min(128, L)", "chunk_precision": "highest", "chunk_scan": "xla",
          "glu_products": "one"}),
        ({"mixer": {"d_state": 64}}, True, {"conv": "fft", "glu_products": "one"}),
        ({"name": "s4", "mixer": {"d_state": 4, "kernel_method": "powers"}}, True,
         {"kernel": "powers", "conv": "fft", "glu_products": "one"}),
        ({"name": "s5", "activation": "half_glu1", "mixer": {"d_state": 64}}, True, {"scan": "fused"}),
        ({"name": "s5", "activation": "half_glu1", "mixer": {"d_state": 16}}, True, {"scan": "lti"}),
        ({"name": "s5", "activation": "half_glu1", "mixer": {"d_state": 64}}, False, {"scan": "lti"}),
        ({"name": "mamba", "activation": "none", "mixer": {}}, True, {"scan": "fused"}),
        ({"name": "mamba", "activation": "none", "mixer": {}}, False, {"scan": "xla"}),
    ],
)
def test_routes_say_what_auto_resolves_to(monkeypatch, overrides, on_gpu, routes):
    """What the bench records and training prints: each setting left to auto as this backend
    resolves it (a GPU simulated), and what runs when a route is named."""
    from ssm_lra.ssm import s4d as s4d_module

    for module in (pallas_common, s4d_module):
        monkeypatch.setattr(module, "fused_scan_available", lambda: on_gpu)
    assert build_model(model_cfg(**overrides), SPEC).routes() == routes


# ---------------------------------------------------------------- two-document (dual) models

PAIR_SPEC = TaskSpec("pairs", seq_len=20, num_classes=2, vocab_size=11, dual=True)


def pair_batch(rng, batch=3, length=20, lengths=((20, 7), (12, 20), (5, 9))):
    tokens = rng.integers(1, 11, size=(batch, 2, length)).astype(np.int32)
    mask = np.zeros((batch, 2, length), np.float32)
    for i, (a, b) in enumerate(lengths):
        mask[i, 0, :a], mask[i, 1, :b] = 1, 1
    return tokens * mask.astype(np.int32), mask


def pooled(model, variables, tokens, mask):
    _, state = model.apply(variables, tokens, mask, mutable=["intermediates"])
    return np.asarray(state["intermediates"]["pooled"][0])


def test_pair_features_under_swapping():
    """Swapping the documents swaps the u and v blocks, keeps u * v and negates u - v."""
    from ssm_lra.model import pair_features

    rng = np.random.default_rng(0)
    u, v = (jnp.asarray(rng.normal(size=(4, 5)).astype(np.float32)) for _ in range(2))
    a, b = np.asarray(pair_features(u, v)).reshape(4, 4, 5), np.asarray(pair_features(v, u)).reshape(4, 4, 5)
    np.testing.assert_array_equal(a[:, 0], b[:, 1])
    np.testing.assert_array_equal(a[:, 1], b[:, 0])
    np.testing.assert_array_equal(a[:, 2], b[:, 2])
    np.testing.assert_array_equal(a[:, 3], -b[:, 3])
    np.testing.assert_array_equal(a[:, 0], np.asarray(u))


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_dual_model_encodes_each_document_alone(norm):
    model = build_model(model_cfg(norm=norm), PAIR_SPEC)
    assert model.dual
    rng = np.random.default_rng(0)
    tokens, mask = pair_batch(rng)
    variables = model.init(jax.random.PRNGKey(0), tokens, mask)
    logits = model.apply(variables, tokens, mask)
    assert logits.shape == (3, 2) and np.isfinite(np.asarray(logits)).all()
    both = pooled(model, variables, tokens, mask)
    assert both.shape == (3, 2, 8)
    # The same backbone for both documents: a document's embedding does not depend on its partner
    # or on its position in the pair (evaluation mode: batch norm uses its running statistics).
    swapped = pooled(model, variables, tokens[:, ::-1], mask[:, ::-1])
    np.testing.assert_allclose(swapped, both[:, ::-1], rtol=1e-5, atol=1e-6)
    other = tokens.copy()
    other[:, 1] = rng.integers(1, 11, size=other[:, 1].shape) * mask[:, 1].astype(np.int32)
    np.testing.assert_allclose(pooled(model, variables, other, mask)[:, 0], both[:, 0], rtol=1e-5, atol=1e-6)
    # ... and is the single-sequence model's pooled output for that document.
    single = model.clone(dual=False, num_classes=8)
    single_params = {k: v for k, v in variables["params"].items() if k not in ("pair_mlp", "head")}
    single_vars = {**variables, "params": {**single_params, "head": {"kernel": jnp.eye(8), "bias": jnp.zeros(8)}}}
    single_vars.pop("intermediates", None)
    flat = single.apply(single_vars, tokens.reshape(6, 20), mask.reshape(6, 20))
    np.testing.assert_allclose(np.asarray(flat).reshape(3, 2, 8), both, rtol=1e-5, atol=1e-5)
    # Swapping the documents changes the logits only through the order-dependent head.
    assert not np.allclose(model.apply(variables, tokens[:, ::-1], mask[:, ::-1]), logits)


def test_dual_logits_do_not_depend_on_padding():
    model = build_model(model_cfg(), PAIR_SPEC)
    rng = np.random.default_rng(3)
    tokens, mask = pair_batch(rng)
    variables = model.init(jax.random.PRNGKey(0), tokens, mask)
    garbage = np.where(mask > 0, tokens, rng.integers(1, 11, size=tokens.shape)).astype(np.int32)
    infer = assert_same_outputs(model, variables, tokens, garbage, mask)
    longer = np.zeros((3, 2, 33), np.int32)
    longer[..., :20] = tokens
    longer_mask = np.zeros((3, 2, 33), np.float32)
    longer_mask[..., :20] = mask
    np.testing.assert_allclose(
        np.asarray(infer(variables, tokens, mask)),
        np.asarray(infer(variables, longer, longer_mask)),
        rtol=1e-4,
        atol=1e-5,
    )


def test_dual_real_inputs_and_init_batch():
    from ssm_lra.engine.steps import dummy_batch, init_variables

    spec = TaskSpec("pairs_real", seq_len=16, num_classes=3, vocab_size=None, in_channels=1, dual=True)
    batch = dummy_batch(spec, 4)
    assert batch["inputs"].shape == (4, 2, 16, 1) and batch["mask"].shape == (4, 2, 16)
    assert dummy_batch(PAIR_SPEC, 4)["inputs"].shape == (4, 2, 20)
    model = build_model(model_cfg(), spec)
    variables = init_variables(model, spec, 4, jax.random.PRNGKey(0))
    assert variables["params"]["pair_mlp"]["kernel"].shape == (4 * 8, 8)
    x = np.random.default_rng(0).random((2, 2, 16, 1)).astype(np.float32)
    assert model.apply(variables, x, np.ones((2, 2, 16), np.float32)).shape == (2, 3)
    with pytest.raises(ValueError, match=r"mask \(B, 2, L\)"):
        model.apply(variables, x[:, 0], np.ones((2, 16), np.float32))
