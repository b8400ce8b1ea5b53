"""`python -m ssm_lra.evaluate`: the reported accuracy is reproduced from the checkpoint, per-class
accuracy adds up, and run directories that do not fit end in one clear error."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from omegaconf import OmegaConf

from ssm_lra.evaluate import classification_metrics, main
from tests.trained_run import REPO, run_env, shared_smoke_run


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    return shared_smoke_run(tmp_path_factory)


def test_evaluate_reproduces_the_runs_own_test_accuracy(smoke):
    """summary.json's test_accuracy is the test split at the best checkpoint, with the run's
    trainer.limit_eval_batches: evaluate honours the same limit and must give the same numbers."""
    run_dir, cache_dir = smoke
    result = subprocess.run(
        [sys.executable, "-m", "ssm_lra.evaluate", f"run_dir={run_dir}"],
        cwd=REPO, env=run_env(cache_dir), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    record = json.loads((run_dir / "eval_test.json").read_text())
    assert record["checkpoint"] == "best" and record["step"] == summary["best_step"] and record["split"] == "test"
    assert record["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-9)
    assert record["loss"] == pytest.approx(summary["test_loss"], rel=1e-4)
    assert record["examples"] == summary["test_examples"]
    per_class = record["per_class"]
    assert len(per_class) == 2 and sum(c["examples"] for c in per_class) == record["examples"]
    weighted = sum(c["accuracy"] * c["examples"] for c in per_class if c["examples"]) / record["examples"]
    assert weighted == pytest.approx(record["accuracy"])
    assert f"accuracy {record['accuracy']:.4f}" in result.stdout


def test_whole_split_and_latest_checkpoint(smoke, capsys):
    run_dir, cache_dir = smoke
    code = main([
        f"run_dir={run_dir}", "split=validation", "checkpoint=latest",
        f"data.cache_dir={cache_dir}", "trainer.limit_eval_batches=null",
    ])
    assert code == 0, capsys.readouterr().err
    record = json.loads((run_dir / "eval_validation.json").read_text())
    # trainer=smoke evaluates 2 batches of 8; the whole tiny validation split is 20 examples.
    assert record["examples"] == record["split_examples"] == 20 and record["limit_eval_batches"] is None
    assert record["checkpoint"] == "latest" and record["step"] == 4


def copy_config(run_dir, target, edit=None):
    (target / ".hydra").mkdir(parents=True)
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    if edit:
        edit(cfg)
    OmegaConf.save(cfg, target / ".hydra" / "config.yaml")
    return target


def drop_d_model(cfg):
    del cfg.model["d_model"]


def rename_model(cfg):
    cfg.model.name = "s7"


def unknown_mixer_key(cfg):
    cfg.model.mixer.colour = "red"


@pytest.mark.parametrize(
    "make,args,message",
    [
        (lambda run, tmp: tmp / "nowhere", [], "not a run directory (no such folder)"),
        (lambda run, tmp: copy_config(run, tmp / "r"), [], "has no 'best' checkpoint"),
        (lambda run, tmp: copy_config(run, tmp / "r", drop_d_model), [], "does not fit this version"),
        (lambda run, tmp: copy_config(run, tmp / "r", rename_model), [], "unknown model 's7'"),
        (lambda run, tmp: copy_config(run, tmp / "r", unknown_mixer_key), [], "unknown key(s) ['colour']"),
        (lambda run, tmp: run, ["checkpoint=first"], "checkpoint='first' is not one of"),
        (lambda run, tmp: run, ["split=dev"], "split='dev' is not one of"),
        (lambda run, tmp: run, ["model.d_model=64"], "unknown argument 'model.d_model'"),
    ],
)
def test_runs_that_do_not_fit_give_one_clear_error(smoke, tmp_path, capsys, make, args, message):
    run_dir = make(smoke[0], tmp_path)
    before = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else None
    assert main([f"run_dir={run_dir}", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    if before is not None:
        assert sorted(p.name for p in run_dir.iterdir()) == before  # nothing created (no checkpoints/ folder)


def test_checkpoint_from_another_model_is_a_clear_error(smoke, tmp_path, capsys):
    """Same config keys, other sizes: the checkpoint's arrays do not fit the model."""
    run_dir, cache_dir = smoke
    target = copy_config(run_dir, tmp_path / "r", lambda cfg: setattr(cfg.model, "d_model", 16))
    shutil.copytree(run_dir / "checkpoints", target / "checkpoints")
    assert main([f"run_dir={target}", f"data.cache_dir={cache_dir}"]) == 2
    err = capsys.readouterr().err
    assert "does not fit the model" in err and "Traceback" not in err


def test_classification_metrics_by_hand():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 0.0]])
    labels = np.array([0, 1, 1, 1])
    m = classification_metrics(logits, labels, num_classes=3)
    assert m["accuracy"] == 0.5 and m["examples"] == 4
    assert [c["accuracy"] for c in m["per_class"]] == [1.0, 1 / 3, None]
    assert [c["examples"] for c in m["per_class"]] == [1, 3, 0]
    expected = np.mean([np.log1p(np.exp(-2)), np.log1p(np.exp(-1)), np.log1p(np.exp(3)), np.log(2)])
    assert m["loss"] == pytest.approx(expected)
