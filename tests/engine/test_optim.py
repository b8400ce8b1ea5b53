"""Optimizer parameter groups and schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_lra.data.tasks import TaskSpec
from ssm_lra.engine.optim import build_optimizer, make_schedule, param_labels
from ssm_lra.errors import ConfigError
from ssm_lra.model import build_model
from ssm_lra.ssm.s4d import SSM_PARAM_NAMES

OPT = {
    "lr": 0.01,
    "ssm_lr": 0.001,
    "weight_decay": 0.5,
    "ssm_weight_decay": 0.0,
    "betas": [0.9, 0.999],
    "eps": 1e-8,
    "schedule": "constant",
    "warmup_epochs": 0,
    "warmup_steps": 0,
    "grad_clip": None,
}


def s4d_params():
    spec = TaskSpec("toy", seq_len=8, num_classes=3, vocab_size=5)
    cfg = {
        "name": "s4d", "d_model": 4, "n_layers": 1, "norm": "layer", "prenorm": True,
        "activation": "glu", "dropout": 0.0, "pooling": "mean", "mixer": {"d_state": 4},
    }
    model = build_model(cfg, spec)
    x = jnp.zeros((1, 8), jnp.int32)
    return model.init(jax.random.PRNGKey(0), x, jnp.ones((1, 8)))["params"]


def flat_labels(params):
    labels = param_labels(params, SSM_PARAM_NAMES)
    return {"/".join(str(getattr(k, "key", k)) for k in path): v for path, v in jax.tree_util.tree_leaves_with_path(labels)}


def test_groups():
    labels = flat_labels(s4d_params())
    by_leaf = {}
    for path, label in labels.items():
        by_leaf.setdefault(path.split("/")[-1], set()).add(label)
    for name in ("log_dt", "log_A_real", "A_imag", "B"):
        assert by_leaf[name] == {"ssm"}, name
    assert by_leaf["C"] == {"decay"}  # C keeps the main lr and weight decay (the S4 regression)
    assert by_leaf["D"] == {"no_decay"}
    assert by_leaf["bias"] == {"no_decay"}
    assert by_leaf["scale"] == {"no_decay"}
    assert by_leaf["kernel"] == {"decay"}


def test_ssm_group_uses_ssm_lr_and_no_decay():
    """One step from zero gradients isolates weight decay; a unit gradient isolates the lr."""
    params = s4d_params()
    tx = build_optimizer(OPT, params, SSM_PARAM_NAMES, total_steps=10, steps_per_epoch=10)
    labels = param_labels(params, SSM_PARAM_NAMES)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    for u, p, label in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(labels)):
        if label == "decay":
            np.testing.assert_allclose(u, -OPT["lr"] * OPT["weight_decay"] * p, rtol=1e-5, atol=1e-9)
        else:
            np.testing.assert_allclose(u, 0.0, atol=1e-12)
    ones = jax.tree_util.tree_map(jnp.ones_like, params)
    updates, _ = tx.update(ones, tx.init(params), params)
    for u, label in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(labels)):
        if label == "ssm":
            np.testing.assert_allclose(u, -OPT["ssm_lr"], rtol=1e-4)
        elif label == "no_decay":
            np.testing.assert_allclose(u, -OPT["lr"], rtol=1e-4)


def test_warmup_cosine_schedule():
    sched = make_schedule(1.0, total_steps=100, warmup_steps=10, kind="cosine")
    values = np.array([float(sched(i)) for i in range(101)])
    assert values[0] == 0.0
    np.testing.assert_allclose(values[10], 1.0)
    assert np.all(np.diff(values[:11]) > 0) and np.all(np.diff(values[10:]) <= 1e-7)
    np.testing.assert_allclose(values[100], 0.0, atol=1e-7)
    np.testing.assert_allclose(values[55], 0.5, atol=1e-6)  # halfway through the decay


@pytest.mark.parametrize("key,value", [("schedule", "linear"), ("lr", 0.0), ("ssm_lr", -1.0), ("weight_decay", -0.1), ("grad_clip", 0.0)])
def test_bad_optimizer_config(key, value):
    with pytest.raises(ConfigError, match=f"optimizer.{key}"):
        build_optimizer({**OPT, key: value}, {"w": jnp.ones(2)}, frozenset(), 10, 10)


# ----------------------------------------------------------------------------------------------
# optimizer.ssm_param_names / decay_param_names: the S5 scripts' per-task parameter groups.


def s5_like_params():
    """Leaves named as S5's, with S5's ranks (B and C are (P, H, 2) / (H, P, 2) real pairs)."""
    return {
        "mixer": {
            "Lambda_re": jnp.full((4,), -0.5), "Lambda_im": jnp.arange(4.0), "log_dt": jnp.full((4,), -3.0),
            "B": jnp.full((4, 3, 2), 0.7), "C": jnp.full((3, 4, 2), 0.3), "D": jnp.ones(3),
        },
        "dense": {"kernel": jnp.full((3, 3), 0.2), "bias": jnp.zeros(3)},
    }


S5_NAMES = frozenset({"Lambda_re", "Lambda_im", "B", "log_dt"})


def labels_by_name(params, cfg):
    from ssm_lra.engine.optim import group_names

    ssm, decay = group_names(cfg, params, S5_NAMES)
    return {path[-1].key: label for path, label in jax.tree_util.tree_leaves_with_path(param_labels(params, ssm, decay))}


@pytest.mark.parametrize(
    "options,expected",
    [
        ({}, {"B": "ssm", "log_dt": "ssm", "Lambda_re": "ssm", "C": "decay", "D": "no_decay", "bias": "no_decay"}),
        # BfastandCdecay: B joins the weight matrices.
        ({"ssm_param_names": ["Lambda_re", "Lambda_im", "log_dt"]}, {"B": "decay", "log_dt": "ssm", "C": "decay"}),
        # BandCdecay: B keeps the SSM lr but is decayed.
        ({"decay_param_names": ["B"]}, {"B": "ssm_decay", "log_dt": "ssm", "C": "decay"}),
        # dt_global: the step trains at the main lr with weight decay although it is a vector.
        ({"ssm_param_names": ["Lambda_re", "Lambda_im", "B"], "decay_param_names": ["log_dt"]},
         {"B": "ssm", "log_dt": "decay", "D": "no_decay"}),
    ],
)
def test_group_options_place_parameters(options, expected):
    labels = labels_by_name(s5_like_params(), {**OPT, **options})
    for name, label in expected.items():
        assert labels[name] == label, (name, labels[name], label)


def test_group_options_set_each_groups_lr_and_decay():
    """Zero gradients isolate weight decay (update = -lr * wd * p), unit gradients the lr, per group."""
    params = s5_like_params()
    opt = {**OPT, "ssm_param_names": ["Lambda_re", "Lambda_im", "log_dt"], "decay_param_names": ["log_dt"]}
    tx = build_optimizer(opt, params, S5_NAMES, total_steps=10, steps_per_epoch=10)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    m = updates["mixer"]
    np.testing.assert_allclose(m["B"], -OPT["lr"] * OPT["weight_decay"] * params["mixer"]["B"], rtol=1e-5)  # main lr, decayed
    np.testing.assert_allclose(m["log_dt"], -OPT["ssm_lr"] * OPT["weight_decay"] * params["mixer"]["log_dt"], rtol=1e-5)
    np.testing.assert_allclose(m["Lambda_re"], 0.0, atol=1e-12)  # SSM group: no decay
    ones = jax.tree_util.tree_map(jnp.ones_like, params)
    updates, _ = tx.update(ones, tx.init(params), params)
    m = updates["mixer"]
    # Adam's first step moves each weight by lr (sign of the gradient), plus the decay term.
    np.testing.assert_allclose(m["Lambda_re"], -OPT["ssm_lr"], rtol=1e-4)
    np.testing.assert_allclose(
        m["log_dt"], -OPT["ssm_lr"] * (1 + OPT["weight_decay"] * params["mixer"]["log_dt"]), rtol=1e-4
    )
    np.testing.assert_allclose(m["B"], -OPT["lr"] * (1 + OPT["weight_decay"] * params["mixer"]["B"]), rtol=1e-4)


def test_default_options_keep_the_optimizer_state_structure():
    """Without the options, no fourth group: checkpoints written before them still restore."""
    params = s5_like_params()
    plain = build_optimizer(OPT, params, S5_NAMES, 10, 10).init(params)
    explicit_null = build_optimizer({**OPT, "ssm_param_names": None, "decay_param_names": []}, params, S5_NAMES, 10, 10).init(params)
    assert jax.tree_util.tree_structure(plain) == jax.tree_util.tree_structure(explicit_null)
    assert set(plain.inner_states) == {"ssm", "no_decay", "decay"}


@pytest.mark.parametrize(
    "options,match",
    [
        ({"ssm_param_names": ["Lambda_re", "Bx"]}, r"optimizer.ssm_param_names lists \['Bx'\]"),
        ({"decay_param_names": ["nope"]}, r"optimizer.decay_param_names lists \['nope'\]"),
        ({"ssm_param_names": "B"}, "optimizer.ssm_param_names must be a list"),
        ({"decay_param_names": [1]}, "optimizer.decay_param_names must be a list"),
    ],
)
def test_bad_group_options_are_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        build_optimizer({**OPT, **options}, s5_like_params(), S5_NAMES, 10, 10)
