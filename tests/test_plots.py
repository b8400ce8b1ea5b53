"""Learning curves (`python -m ssm_lra.plot_runs`): time derived from the logged throughput, the
figure files, W&B logging of the figures."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssm_lra.plot_runs import derived_train_time, load_curves, log_figures_to_wandb, main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_valid_png(path: Path, max_bytes: int = 300_000) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE and 0 < len(data) < max_bytes, (path, len(data))
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size[0] > 100 and image.size[1] > 100


def write_run(run_dir: Path, model: str, steps_per_epoch=4, epochs=2, rate=80.0, batch_size=8, time_s=False):
    """A run directory with metrics.jsonl and summary.json as the training loop writes them."""
    run_dir.mkdir(parents=True)
    lines = []
    step = 0
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            step += 1
            record = {"split": "train", "step": step, "epoch": epoch, "seq_per_s": "nan" if step == 1 else rate,
                      "loss": 1.0 / step, "accuracy": 0.5 + 0.01 * step, "grad_norm": 1.0}
            if time_s:
                record["time_s"] = 10.0 * step
            lines.append(record)
        lines.append({"split": "validation", "step": step, "epoch": epoch, "loss": 0.9 / (epoch + 1), "accuracy": 0.6 + 0.1 * epoch, "examples": 16})
    lines.append({"split": "test", "step": step, "epoch": epochs - 1, "loss": 0.5, "accuracy": 0.7, "examples": 16})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (run_dir / "summary.json").write_text(json.dumps({"model": model, "task": "pathfinder", "batch_size": batch_size}))
    return run_dir


def test_training_time_is_derived_from_the_logged_rate():
    """Constant rate r and batch b: step s of the first epoch ends (s - 1) b / r seconds after the
    (untimed, compiling) first step; each later epoch adds its own steps at b / r each."""
    b, r = 8, 80.0
    records = [{"split": "train", "step": s, "epoch": (s - 1) // 4, "seq_per_s": "nan" if s == 1 else r} for s in range(1, 9)]
    times = derived_train_time(records, b)
    expected = [(s - 1) * b / r if s <= 4 else 3 * b / r + (s - 4) * b / r for s in range(1, 9)]
    np.testing.assert_allclose(times, expected)


def test_logged_time_is_used_when_present(tmp_path):
    curves = load_curves(write_run(tmp_path / "run", "s4d", time_s=True))
    assert curves.time_logged
    np.testing.assert_allclose(curves.train["time"], 10.0 * curves.train["step"])
    np.testing.assert_allclose(curves.validation["time"], [40.0, 80.0])
    curves = load_curves(write_run(tmp_path / "run2", "s4d"))
    assert not curves.time_logged and curves.validation["time"][-1] == pytest.approx(7 * 8 / 80.0)
    assert curves.test["accuracy"][0] == 0.7


def test_many_runs_grouped_by_model_to_png_and_svg(tmp_path, capsys):
    runs = [write_run(tmp_path / f"s4d_{i}", "s4d", rate=80 + i) for i in range(2)] + [write_run(tmp_path / "s5", "s5_ptd")]
    out = tmp_path / "figs"
    assert main([*map(str, runs), "--out", str(out)]) == 0
    assert_valid_png(out / "curves.png")
    root = ET.parse(out / "curves.svg").getroot()
    assert root.tag.endswith("svg")
    # A sweep folder stands for the runs inside it.
    assert main([str(tmp_path), "--out", str(tmp_path / "sweep"), "--name", "all"]) == 0
    assert_valid_png(tmp_path / "sweep" / "all.png")


def test_not_a_run_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no metrics.jsonl" in err


def test_log_figures_to_wandb_logs_every_png(tmp_path):
    import wandb

    class FakeRun:
        def __init__(self):
            self.logged = []

        def log(self, payload):
            self.logged.append(payload)

    run_dir = write_run(tmp_path / "run", "s4d")
    (run_dir / "figures").mkdir()
    Image.new("RGB", (120, 110)).save(run_dir / "figures" / "kernels.png")
    fake = FakeRun()
    keys = log_figures_to_wandb(run_dir, fake, kernels=False)
    assert keys == ["figures/curves", "figures/kernels"]
    (payload,) = fake.logged
    assert sorted(payload) == keys and all(isinstance(v, wandb.Image) for v in payload.values())
