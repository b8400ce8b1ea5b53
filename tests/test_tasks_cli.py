"""Text, Retrieval and Image end to end through the real entry point, on fixtures in the users' formats.

The runs of one kind are started together (subprocesses in parallel) to keep the file quick, and
each trains a model of one layer: the sources and the input paths are what is tested here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures import lra_sources as fx

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300


def start(args, cache_dir, cwd, tfds_dir):
    env = {**os.environ, "SSM_LRA_CACHE": str(cache_dir), "TFDS_DATA_DIR": str(tfds_dir), "WANDB_SILENT": "true"}
    env.pop("SSM_LRA_DATA", None)
    cmd = [sys.executable, "-m", "ssm_lra.train", "trainer=smoke", "model.n_layers=1", "logger=none", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs: dict) -> dict:
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
        out[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return out


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A TFDS-prepared imdb_reviews (tfrecord, as `tfds build` writes it), CIFAR-10 python batches and
    the release's AAN TSV files; and an empty TFDS folder."""
    base = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(0)

    def review(i):
        return {"text": rng.integers(32, 127, int(rng.integers(5, 600))).astype(np.uint8).tobytes(), "label": i % 2}

    imdb = {"train": [review(i) for i in range(16)], "test": [review(i) for i in range(6)]}
    fx.write_catalog_tfrecord(base / "tfds", "imdb_reviews", "plain_text", "1.0.0", imdb)
    train = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 20)
    test = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 6)
    fx.write_cifar_python(base / "data", train, test)

    def pairs(n):
        return [
            fx.aan_line(float(i % 2), f"A{i}", f"B{i}", "cites " * (i * 7 % 50), "paper " * (i % 9)) for i in range(n)
        ]

    fx.write_aan(base / "data" / "lra_release" / "tsv_data", {"train": pairs(16), "eval": pairs(4), "test": pairs(5)})
    (base / "empty").mkdir()
    return base


RUNS = {
    # task: (overrides, test examples)
    "text": (["task=text", "task.seq_len=256", "task.tfds_dir={base}/tfds"], 6),
    "retrieval": (["task=retrieval", "task.seq_len=128", "data.root={base}/data/lra_release"], 5),
    "image": (["task=image", "data.root={base}/data", "task.tfds_dir={base}/empty"], 6),
}


def test_smoke_run_on_each_source_writes_a_summary(sources, tmp_path):
    """One test for the three runs (started together), so that xdist workers do not each repeat them."""
    procs = {
        task: start(
            [*(a.format(base=sources) for a in args), f"hydra.run.dir={tmp_path / task}"],
            tmp_path / "cache",
            tmp_path,
            sources / "empty",
        )
        for task, (args, _) in RUNS.items()
    }
    for task, result in finish(procs).items():
        assert result.returncode == 0, (task, result.stderr[-3000:])
        assert "Traceback" not in result.stderr, task
        summary = json.loads((tmp_path / task / "summary.json").read_text())
        assert summary["task"] == task and summary["steps"] == 4 and summary["model"] == "s4d"
        assert summary["test_examples"] == RUNS[task][1], task
        assert 0.0 <= summary["test_accuracy"] <= 1.0 and 0.0 <= summary["best_val_accuracy"] <= 1.0
        assert summary["params"] > 0 and summary["train_seq_per_s"] > 0
        assert summary["seq_len"] == {"text": 256, "retrieval": 128, "image": 1024}[task]
        records = [json.loads(line) for line in (tmp_path / task / "metrics.jsonl").read_text().splitlines()]
        assert {r["split"] for r in records} == {"train", "validation", "test"}, task
        assert all(np.isfinite(r["loss"]) for r in records if "loss" in r), task


def test_missing_datasets_are_one_error_line(sources, tmp_path):
    empty = sources / "empty"
    cases = {
        "text": (["task=text", f"task.tfds_dir={empty}"], "text (IMDB reviews) data not found"),
        "image": (
            ["task=image", f"task.tfds_dir={empty}", f"data.root={tmp_path / 'nowhere'}"],
            "image (CIFAR-10) data not found",
        ),
        "retrieval": (["task=retrieval", f"data.root={tmp_path / 'nowhere'}"], "retrieval files not found"),
    }
    procs = {}
    for task, (args, _) in cases.items():
        run_dir = tmp_path / task
        run_dir.mkdir()
        procs[task] = start([*args, f"hydra.run.dir={run_dir}"], tmp_path / "cache", tmp_path, empty)
    for task, result in finish(procs).items():
        assert result.returncode == 2, (task, result.stderr[-2000:])
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and cases[task][1] in lines[0], (task, result.stderr)
        assert "Traceback" not in result.stdout + result.stderr
        assert not (tmp_path / task / "checkpoints").exists()


def test_image_tokens_input_through_the_cli(sources, tmp_path):
    result = finish(
        {
            "tokens": start(
                [
                    "task=image",
                    "task.input=tokens",
                    f"data.root={sources / 'data'}",
                    f"task.tfds_dir={sources / 'empty'}",
                    f"hydra.run.dir={tmp_path / 'run'}",
                ],
                tmp_path / "cache",
                tmp_path,
                sources / "empty",
            )
        }
    )["tokens"]
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["task"] == "image" and summary["test_examples"] == 6
