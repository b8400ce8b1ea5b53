"""Every conf/experiment/<model>/<task>.yaml composes and carries the settings results/published.yaml
records for it (the papers' settings; for Mamba, our documented choice)."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ssm_lra.engine.optim import group_names, param_labels
from ssm_lra.ssm import mixer_class

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
PUBLISHED = yaml.safe_load((REPO / "results" / "published.yaml").read_text())
TASKS = PUBLISHED["tasks"]
MODELS = [m for m in PUBLISHED["settings"]]
PAIRS = [(m, t) for m in MODELS for t in TASKS]

# published.yaml's setting names -> where the composed config keeps them.
CONFIG_PATHS = {
    "layers": "model.n_layers",
    "d_model": "model.d_model",
    "d_state": "model.mixer.d_state",
    "blocks": "model.mixer.blocks",
    "expand": "model.mixer.expand",
    "norm": "model.norm",
    "prenorm": "model.prenorm",
    "activation": "model.activation",
    "dropout": "model.dropout",
    "lr": "optimizer.lr",
    "ssm_lr": "optimizer.ssm_lr",
    "weight_decay": "optimizer.weight_decay",
    "warmup_epochs": "optimizer.warmup_epochs",
    "batch_size": "trainer.batch_size",
    "epochs": "trainer.epochs",
    "dt_min": "model.mixer.dt_min",
    "dt_max": "model.mixer.dt_max",
    "conj_sym": "model.mixer.conj_sym",
    "clip_eigs": "model.mixer.clip_eigs",
    "c_init": "model.mixer.c_init",
    "bidirectional": "model.mixer.bidirectional",
}
# Checked separately below.
DERIVED = {"lr_factor", "opt_config", "dt_global", "params_like", "params_tolerance"}


def composed(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def settings(model, task):
    return PUBLISHED["settings"][model][task]


def test_every_model_and_task_has_a_preset_and_published_settings():
    for model, task in PAIRS:
        assert (CONF / "experiment" / model / f"{task}.yaml").is_file(), (model, task)
    assert {"s4", "s4d", "s5", "s5_ptd", "mamba"} <= set(MODELS)


@pytest.mark.parametrize("model,task", PAIRS, ids=[f"{m}/{t}" for m, t in PAIRS])
def test_preset_matches_published_settings(model, task):
    cfg = composed([f"experiment={model}/{task}"])
    assert cfg.model.name == model and cfg.task.name == task
    expected = settings(model, task)
    unknown = set(expected) - set(CONFIG_PATHS) - DERIVED
    assert not unknown, f"published.yaml names settings this test does not check: {unknown}"
    for key, path in CONFIG_PATHS.items():
        if key in expected:
            actual = OmegaConf.select(cfg, path)
            if isinstance(expected[key], float):
                assert actual == pytest.approx(expected[key], rel=1e-9), (key, actual, expected[key])
            else:
                assert actual == expected[key], (key, actual, expected[key])
    if "lr_factor" in expected:  # S5: lr = lr_factor x ssm_lr
        assert math.isclose(cfg.optimizer.lr, expected["lr_factor"] * expected["ssm_lr"], rel_tol=1e-9)
    # The preset's comment names its source.
    text = (CONF / "experiment" / model / f"{task}.yaml").read_text()
    assert f"settings.{model}.{task}" in text and ("reference" in text or "run_lra_" in text)


# Where each S5 parameter must land, by the S5 scripts' opt_config and dt_global (train_helpers.py of
# the S5 repository): "ssm" = SSM lr without decay, "ssm_decay" = SSM lr with decay, "decay" = main
# lr with decay. C is always a decayed weight.
def expected_s5_groups(opt_config, dt_global):
    groups = {"Lambda_re": "ssm", "Lambda_im": "ssm", "B": "ssm", "log_dt": "ssm", "C": "decay"}
    if opt_config == "BfastandCdecay":
        groups["B"] = "decay"
    elif opt_config == "BandCdecay":
        groups["B"] = "ssm_decay"
    else:
        assert opt_config == "standard", opt_config
    if dt_global:
        groups["log_dt"] = "decay"
    return groups


S5_PAIRS = [(m, t) for m, t in PAIRS if "opt_config" in settings(m, t)]


@pytest.mark.parametrize("model,task", S5_PAIRS, ids=[f"{m}/{t}" for m, t in S5_PAIRS])
def test_s5_parameter_groups_follow_the_scripts_opt_config(model, task):
    cfg = composed([f"experiment={model}/{task}", "task.seq_len=16"])
    from ssm_lra.engine.setup import check_config
    from ssm_lra.engine.steps import init_variables

    plan = check_config(cfg)
    shapes = jax.eval_shape(lambda k: init_variables(plan.model, plan.spec, 2, k), jax.random.PRNGKey(0))["params"]
    ssm, decay = group_names(cfg.optimizer, shapes, mixer_class(model).SSM_PARAM_NAMES)
    labels = {}
    for path, label in jax.tree_util.tree_leaves_with_path(param_labels(shapes, ssm, decay)):
        labels.setdefault(path[-1].key, set()).add(label)
    want = expected_s5_groups(settings(model, task)["opt_config"], settings(model, task)["dt_global"])
    for name, group in want.items():
        assert labels[name] == {group}, (name, labels[name], group)


def param_count(overrides):
    from ssm_lra.engine.setup import check_config
    from ssm_lra.engine.steps import count_params, init_variables

    plan = check_config(composed(overrides))
    # eval_shape: shapes only, nothing is computed (Image's S5 alone has 5M parameters).
    shapes = jax.eval_shape(lambda k: init_variables(plan.model, plan.spec, 2, k), jax.random.PRNGKey(0))
    return count_params(shapes["params"])


MATCHED = [(m, t) for m, t in PAIRS if "params_like" in settings(m, t)]


@pytest.mark.parametrize("model,task", MATCHED, ids=[f"{m}/{t}" for m, t in MATCHED])
def test_unpublished_settings_match_the_parameter_count_they_claim(model, task):
    """Mamba's presets claim about S5's parameter count for the task: measure both."""
    s = settings(model, task)
    # Parameter counts do not depend on the sequence length except through the task's input kind,
    # so short token sequences keep this quick.
    short = ["task.seq_len=64"] if task in ("listops", "text", "retrieval") else []
    ours = param_count([f"experiment={model}/{task}", *short])
    theirs = param_count([f"experiment={s['params_like']}/{task}", *short])
    assert abs(ours / theirs - 1) <= s["params_tolerance"], (ours, theirs)
    # The comment quotes the measured count.
    assert f"{ours:,}" in (CONF / "experiment" / model / f"{task}.yaml").read_text()


def test_debug_smoke_shrinks_a_preset_after_its_own_settings():
    """debug=smoke composes after the experiment, so a published preset becomes a tiny run."""
    full = composed(["experiment=s5_ptd/pathx"])
    smoke = composed(["experiment=s5_ptd/pathx", "debug=smoke"])
    assert (full.trainer.batch_size, full.model.d_model) == (32, 128)
    assert (smoke.trainer.batch_size, smoke.trainer.max_steps, smoke.model.d_model, smoke.model.n_layers) == (8, 4, 32, 2)
    assert smoke.data.tiny and smoke.model.name == "s5_ptd" and smoke.model.mixer.blocks == full.model.mixer.blocks


@pytest.mark.parametrize("model,task", PAIRS, ids=[f"{m}/{t}" for m, t in PAIRS])
def test_preset_passes_the_runs_own_config_checks(model, task):
    """What `python -m ssm_lra.train experiment=...` checks before loading data: every key known,
    the mixer's options valid, the batch splitting over the devices here."""
    from ssm_lra.engine.setup import check_config

    plan = check_config(composed([f"experiment={model}/{task}"]))
    assert plan.spec.name == task and plan.model.mixer == model
