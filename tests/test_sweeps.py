"""Sweeps: the SLURM and local submitit launchers, per-task resources, the paper-table sweeps."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
TASKS = sorted(p.stem for p in (CONF / "task").glob("*.yaml"))
EXPERIMENTS = sorted(str(p.relative_to(CONF / "experiment").with_suffix("")) for p in (CONF / "experiment").glob("*/*.yaml"))


def composed(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def launcher(overrides):
    """The submitit launcher as Hydra builds it (it resolves its parameters on construction)."""
    return instantiate(composed(overrides).hydra.launcher)


def launcher_params(overrides):
    return launcher(overrides).params


def sweep_jobs(cfg):
    """The job overrides Hydra's basic sweeper expands hydra.sweeper.params into."""
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()])
    axes = [[f"{o.get_key_element()}={value}" for value in o.sweep_string_iterator()] for o in parsed]
    return list(itertools.product(*axes))


@pytest.mark.parametrize("task", TASKS)
def test_slurm_launcher_takes_the_tasks_resources(task):
    resources = composed([f"task={task}"]).task.resources
    built = launcher(["hydra/launcher=slurm", f"task={task}"])
    assert type(built).__name__ == "SlurmLauncher"
    params = built.params
    assert params["timeout_min"] == resources.timeout_min > 0
    assert params["gpus_per_node"] == resources.gpus >= 1
    assert params["mem_gb"] == resources.mem_gb and params["cpus_per_task"] == resources.cpus
    # What requeueing on time limits needs: a warning signal before the limit, and retries.
    assert params["signal_delay_s"] >= 60 and params["max_num_timeout"] >= 1


def test_experiment_presets_bring_their_tasks_resources():
    params = launcher_params(["hydra/launcher=slurm", "experiment=s5_ptd/pathx"])
    assert params["timeout_min"] == composed(["task=pathx"]).task.resources.timeout_min
    assert params["timeout_min"] > composed(["task=listops"]).task.resources.timeout_min


def test_local_launcher_resolves():
    built = launcher(["hydra/launcher=local", "task=text"])
    assert type(built).__name__ == "LocalLauncher"
    params = built.params
    assert params["timeout_min"] == composed(["task=text"]).task.resources.timeout_min


def test_paper_table_sweep_covers_every_preset_and_three_seeds():
    cfg = composed(["+sweep=paper_table", "hydra/launcher=slurm"])
    jobs = sweep_jobs(cfg)
    experiments = {job[0].split("=", 1)[1] for job in jobs}
    seeds = {job[1] for job in jobs}
    assert experiments == set(EXPERIMENTS) and seeds == {"seed=0", "seed=1", "seed=2"}
    assert len(jobs) == 3 * len(EXPERIMENTS)
    # One array, one request: the largest task's.
    largest = max(composed([f"task={t}"]).task.resources.timeout_min for t in TASKS)
    assert instantiate(cfg.hydra.launcher).params["timeout_min"] == largest


@pytest.mark.parametrize("task", TASKS)
def test_per_task_sweeps_use_their_tasks_resources(task):
    cfg = composed([f"+sweep=paper_{task}", "hydra/launcher=slurm"])
    jobs = sweep_jobs(cfg)
    assert {job[0].split("=", 1)[1] for job in jobs} == {e for e in EXPERIMENTS if e.endswith(f"/{task}")}
    assert instantiate(cfg.hydra.launcher).params["timeout_min"] == composed([f"task={task}"]).task.resources.timeout_min
    # A job of the sweep composes, and lands in <task>/<model>/seed_<seed>.
    job = composed([f"+sweep=paper_{task}", f"experiment=s5/{task}", "seed=2"])
    assert job.task.name == task and job.model.name == "s5"
    assert job.hydra.sweep.subdir == f"{task}/s5/seed_2"


@pytest.mark.slow
def test_local_submitit_multirun_runs_two_jobs(tmp_path):
    """Two smoke runs through the submitit local launcher, each in its own process, end to end."""
    sweep = tmp_path / "sweep"
    env = {**os.environ, "SSM_LRA_CACHE": str(tmp_path / "cache"), "WANDB_SILENT": "true"}
    env.pop("SSM_LRA_DATA", None)
    cmd = [
        sys.executable, "-m", "ssm_lra.train", "-m", "hydra/launcher=local", "seed=0,1", "trainer=smoke",
        # The tiny task's length (task.seq_len would be replaced by task.tiny.seq_len) and one layer:
        # the launcher is what is tested.
        "task.tiny.seq_len=64", "model.n_layers=1", "logger=none", f"hydra.sweep.dir={sweep}",
    ]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    assert len(summaries) == 2 and {s["seed"] for s in summaries} == {0, 1}
    assert all(s["steps"] == 4 and s["seq_len"] == 64 for s in summaries)
    # submitit's own logs: one per job, under the sweep directory.
    assert len(list((sweep / ".submitit").glob("*/*_log.out"))) == 2
