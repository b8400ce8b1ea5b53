"""Small trained runs shared across test modules, each trained once per test session even when
pytest-xdist spreads the tests over processes (the first process trains under a file lock, the
others wait and reuse it):

- `shared_smoke_run`: a `trainer=smoke` Pathfinder run (real-valued inputs, so every inspection
  command applies: evaluate, robustness, inspect_kernels, preview);
- `shared_listops_smoke_run`: the default `trainer=smoke` run (S4D on ListOps, W&B offline), which
  the single-device reference of the two-device test and the smoke test itself read;
- `shared_multirun`: a Hydra multirun of two ListOps smoke runs (seeds 0 and 1), for the multirun
  and the results-table tests."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_env(cache_dir: Path) -> dict:
    env = {**os.environ, "SSM_LRA_CACHE": str(cache_dir), "WANDB_SILENT": "true"}
    env.pop("SSM_LRA_DATA", None)
    return env


def _shared(tmp_path_factory, name: str, args: list[str], done: str) -> tuple[Path, Path]:
    # getbasetemp().parent is common to all xdist workers of a session (each has its own basetemp).
    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    shared = root / name
    shared.mkdir(exist_ok=True)
    out_dir, cache_dir = shared / "run", shared / "cache"
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not list(out_dir.glob(done)):
            cmd = [sys.executable, "-m", "ssm_lra.train", *(a.format(out=out_dir) for a in args)]
            result = subprocess.run(cmd, cwd=REPO, env=run_env(cache_dir), capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, result.stderr[-3000:]
            (shared / "stdout.txt").write_text(result.stdout)
            (shared / "stderr.txt").write_text(result.stderr)
    return out_dir, cache_dir


def shared_smoke_run(tmp_path_factory) -> tuple[Path, Path]:
    """(run directory, data cache) of the shared smoke run."""
    return _shared(
        tmp_path_factory,
        "inspection_smoke_run",
        ["trainer=smoke", "task=pathfinder", "logger=none", "hydra.run.dir={out}"],
        "summary.json",
    )


def shared_listops_smoke_run(tmp_path_factory) -> tuple[Path, str, str]:
    """(run directory, stdout, stderr) of the shared default smoke run."""
    out_dir, _ = _shared(tmp_path_factory, "listops_smoke_run", ["trainer=smoke", "hydra.run.dir={out}"], "summary.json")
    return out_dir, (out_dir.parent / "stdout.txt").read_text(), (out_dir.parent / "stderr.txt").read_text()


def shared_multirun(tmp_path_factory) -> Path:
    """The sweep folder of the shared two-seed multirun (one run folder per job inside)."""
    return _shared(
        tmp_path_factory,
        "listops_multirun",
        ["-m", "seed=0,1", "trainer=smoke", "logger=none", "hydra.sweep.dir={out}"],
        "*/summary.json",
    )[0]
