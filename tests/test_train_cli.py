"""End to end through the real entry point: `python -m ssm_lra.train ...` in a subprocess."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.trained_run import shared_listops_smoke_run, shared_multirun, shared_smoke_run

REPO = Path(__file__).resolve().parents[1]
SUMMARY_KEYS = {
    "model": str,
    "task": str,
    "steps": int,
    "epochs": (int, float),
    "best_val_accuracy": float,
    "test_accuracy": float,
    "params": int,
    "routes": dict,
    "wall_time_s": float,
    "train_seq_per_s": float,
    "devices": int,
    "jax_version": str,
    "git_commit": str,
}


# Runs that test the runner (signals, resume, a model's wiring) rather than the data: 64 tokens
# instead of the tiny ListOps' 256 shorten their compilation and steps on CPU. With data.tiny
# (trainer=smoke) the task's `tiny` values replace the full ones, so the length is set there
# (`task.seq_len=64` would be replaced by tiny.seq_len, 256).
SHORT = "task.tiny.seq_len=64"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def train(args, cache_dir, cwd, timeout=300, extra_env=None, **popen):
    env = {**os.environ, "SSM_LRA_CACHE": str(cache_dir), "WANDB_SILENT": "true", **(extra_env or {})}
    env.pop("SSM_LRA_DATA", None)
    cmd = [sys.executable, "-m", "ssm_lra.train", *args]
    if popen:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def check_summary(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    for key, kind in SUMMARY_KEYS.items():
        assert isinstance(summary[key], kind), (key, summary[key])
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and 0.0 <= summary["best_val_accuracy"] <= 1.0
    assert summary["params"] > 0 and summary["devices"] >= 1 and summary["train_seq_per_s"] > 0
    return summary


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """`trainer=smoke` with the default model, task and logger: (run directory, stdout, stderr).
    Trained once per session, also under xdist (several tests here compare against it)."""
    return shared_listops_smoke_run(tmp_path_factory)


def test_smoke_run_writes_summary_metrics_checkpoints_and_wandb(smoke_run):
    run_dir, stdout, stderr = smoke_run
    summary = check_summary(run_dir)
    assert summary["model"] == "s4d" and summary["task"] == "listops" and summary["steps"] == 4
    assert "--xla_gpu_enable_triton_gemm=false" in summary["xla_flags"]  # S4D's FFT route: triton_gemm=auto
    assert summary["routes"] == {"conv": "fft", "glu_products": "one"}  # conv=auto off a GPU
    assert "routes: conv=fft, glu_products=one." in stdout
    records = read_metrics(run_dir)
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4]
    assert {r["split"] for r in records} == {"train", "validation", "test"}
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "best").is_dir() and (run_dir / "checkpoints" / "latest").is_dir()
    # W&B ran offline (no account, no network), with a run that can be synced later.
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline and summary["wandb_run_id"] in offline[0].name
    assert list((run_dir / "figures").glob("*.png"))  # learning curves drawn and logged (logger.figures=curves)
    assert "Traceback" not in stderr
    assert "Tried to log to step" not in stdout + stderr  # W&B steps stay monotonic


def test_resuming_a_checkpoint_of_another_model_is_one_clear_error(smoke_run, cache_dir, tmp_path):
    """A run directory whose checkpoint another model wrote (here d_model 16 against the smoke
    run's): the run stops before training, says which arrays differ, and leaves the files alone."""
    run_dir, _, _ = smoke_run
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    files = lambda: sorted((str(p.relative_to(target)), p.stat().st_size) for p in (target / "checkpoints").rglob("*"))  # noqa: E731
    before = files()
    result = train(["trainer=smoke", "model.d_model=16", f"hydra.run.dir={target}"], cache_dir, tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: {target} holds a checkpoint of another model (params/"), error
    assert "the model has" in error and "hydra.run.dir=PATH" in error
    assert files() == before


def test_help_and_cfg_job(cache_dir, tmp_path):
    helped = train(["--help"], cache_dir, tmp_path)
    assert helped.returncode == 0
    for line in ("model: mamba, s4, s4_ptd, s4d, s5, s5_ptd", "trainer: default, smoke", "name: s4d"):
        assert line in helped.stdout
    cfg = train(["model=s4d", "task=listops", "trainer.epochs=3", "--cfg", "job"], cache_dir, tmp_path)
    assert cfg.returncode == 0 and "epochs: 3" in cfg.stdout and "d_state: 64" in cfg.stdout


def test_multirun_over_seeds(tmp_path_factory):
    sweep = shared_multirun(tmp_path_factory)
    summaries = [check_summary(p.parent) for p in sorted(sweep.glob("*/summary.json"))]
    assert len(summaries) == 2 and {s["seed"] for s in summaries} == {0, 1}


def slurm_job(args, cache_dir, cwd, job: int):
    """Two processes started as SLURM would start a job of 2 tasks on this host."""
    return [
        train(
            args, cache_dir, cwd, popen=True,
            extra_env={
                # jax derives the coordinator's port from the job id: unique per test.
                "SLURM_JOB_ID": str(job), "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2",
                "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_STEP_NUM_NODES": "1",
                "JAX_PLATFORMS": "cpu",
            },
        )
        for rank in (0, 1)
    ]


def finish(procs, codes=(0, 0)):
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, code, (_, stderr) in zip(procs, codes, outputs):
        assert p.returncode == code, stderr[-3000:]
    return outputs


# The multi-host test's job and its 1-device reference: long enough (60 steps; an evaluation at
# the epoch's end, step 48, and at the last step) for a signal to land mid-run, and small (one
# layer, 64 tokens) because a job of several processes compiles its steps anew every time.
MULTI_HOST = ["trainer=smoke", "trainer.max_steps=60", SHORT, "model.n_layers=1", "logger=none"]


def test_a_slurm_job_trains_as_one_multi_host_run_and_resumes_every_host_after_a_signal_to_one(
    cache_dir, tmp_path
):
    """Multi-host: two processes with SLURM's environment join through jax.distributed (gloo on CPU),
    each reads its half of every batch, and together they match the 1-device run. Preemption: only
    one process gets SIGTERM; they agree to stop at the same step (no process left waiting in a
    collective), save once, and resume together; the resumed job still matches the uninterrupted
    1-device run step for step. (One test for both: every job of two processes compiles anew.)"""
    one_dir, run_dir = tmp_path / "one", tmp_path / "run"
    one = train([*MULTI_HOST, f"hydra.run.dir={one_dir}"], cache_dir, tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    args = [*MULTI_HOST, f"hydra.run.dir={run_dir}"]
    procs = slurm_job(args, cache_dir, tmp_path, os.getpid() + 1)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 5):
        assert all(p.poll() is None for p in procs), procs[0].communicate()[1][-3000:]
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGTERM)
    outputs = finish(procs, codes=(143, 143))
    assert all("Resume with" in err for _, err in outputs)
    stopped_at = max(r["step"] for r in read_metrics(run_dir) if r["split"] == "train")
    assert stopped_at < 60
    outputs = finish(slurm_job(args, cache_dir, tmp_path, os.getpid() + 2))
    assert f"at step {stopped_at}." in outputs[0][0] and f"at step {stopped_at}." in outputs[1][0]
    summary = check_summary(run_dir)
    assert summary["processes"] == 2 and summary["devices"] == 2 and summary["steps"] == 60

    def split(run, name):
        return sorted((r for r in read_metrics(run) if r["split"] == name), key=lambda r: r["step"])

    # Every step trained once and logged once (only process 0 logs), with the 1-device run's numbers.
    two_train, one_train = split(run_dir, "train"), split(one_dir, "train")
    assert [r["step"] for r in two_train] == [r["step"] for r in one_train] == list(range(1, 61))
    np.testing.assert_allclose(
        [(r["loss"], r["grad_norm"]) for r in two_train], [(r["loss"], r["grad_norm"]) for r in one_train], rtol=1e-5
    )
    two_val, one_val = split(run_dir, "validation"), split(one_dir, "validation")
    assert [(r["step"], r["accuracy"]) for r in two_val] == [(r["step"], r["accuracy"]) for r in one_val]
    assert [r["step"] for r in one_val] == [48, 60]
    np.testing.assert_allclose([r["loss"] for r in two_val], [r["loss"] for r in one_val], rtol=1e-5)
    reference = check_summary(one_dir)
    assert reference["processes"] == 1 and reference["devices"] == 1
    for key in ("test_accuracy", "test_examples", "best_val_accuracy", "best_step"):  # evaluation reads host shares too
        assert summary[key] == pytest.approx(reference[key]), key


def write_listops(folder: Path, bad_line: str | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["Source\tTarget", "( ( ( [MAX 2 ) 9 ) ] )\t9", "( ( ( [MIN 2 ) 9 ) ] )\t2"]
    if bad_line is not None:
        rows.append(bad_line)
    for name in ("basic_train.tsv", "basic_val.tsv", "basic_test.tsv"):
        (folder / name).write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize(
    "args,message,code",
    [
        (["model=nope"], "Could not find 'model/nope'", 1),
        (["task=nope"], "Could not find 'task/nope'", 1),
        (["trainer=smoke", "data.generate=false"], "No listops data given", 2),
        (["trainer=smoke", "data.root=/nonexistent/lra_release"], "listops files not found", 2),
        (["trainer=smoke", "+model.mixer.colour=red"], "unknown key(s) ['colour']", 2),
        (["trainer=smoke", "trainer.batch_size=0"], "trainer.batch_size must be a positive integer", 2),
        (["trainer=smoke", "optimizer.schedule=linear"], "optimizer.schedule", 2),
        (["trainer=smoke", "+trainer.bach_size=4"], "unknown key(s) ['bach_size'] in trainer", 2),
        (["trainer=smoke", "trainer.batch_size=6", "trainer.accumulate_grad_batches=4"], "not divisible", 2),
    ],
)
def test_bad_input_is_one_clear_error(args, message, code, cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "keep.txt").write_text("earlier work")
    result = train([*args, "logger=none", f"hydra.run.dir={run_dir}"], cache_dir, tmp_path)
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert (run_dir / "keep.txt").read_text() == "earlier work"
    assert not (run_dir / "checkpoints").exists()  # stopped before building anything


def test_malformed_tsv_names_file_and_line(cache_dir, tmp_path):
    data = tmp_path / "listops-1000"
    write_listops(data, bad_line="( ( [MAX 2 ) ] )")  # no tab, no label
    result = train(["trainer=smoke", f"data.root={tmp_path}", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"], cache_dir, tmp_path)
    assert result.returncode == 2
    assert "basic_" in result.stderr and "line 4" in result.stderr
    assert "Traceback" not in result.stderr


def test_real_format_data_root(cache_dir, tmp_path):
    """data.root pointing at a release-style folder is read through the same path as generated data."""
    write_listops(tmp_path / "lra_release" / "listops-1000")
    run_dir = tmp_path / "run"
    args = [
        "trainer=smoke", f"data.root={tmp_path / 'lra_release'}", "trainer.batch_size=2", SHORT, "model.n_layers=1",
        "logger=none", f"hydra.run.dir={run_dir}",
    ]
    result = train(args, cache_dir, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = check_summary(run_dir)
    assert summary["test_examples"] == 2 and summary["test_majority_class_rate"] == 0.5


def test_unwritable_run_dir(cache_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = train(["trainer=smoke", f"hydra.run.dir={blocker}/run"], cache_dir, tmp_path)
    assert result.returncode == 2 and "cannot create the run directory" in result.stderr
    assert "Traceback" not in result.stderr


def saved_arrays(run_dir, kind):
    """The newest `kind` checkpoint's train state as a flat {path: numpy array}."""
    import jax
    import orbax.checkpoint as ocp

    newest = max((run_dir / "checkpoints" / kind).iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1)
    with warnings.catch_warnings():
        # Read back on the one device that wrote it, so the saved sharding is the right one.
        warnings.filterwarnings("ignore", message="Sharding info not provided when restoring")
        tree = ocp.PyTreeCheckpointer().restore(newest / "state")
    return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def compiled_train_steps(cache: Path) -> list[str]:
    """The training steps in a compilation cache. (Smaller programs are kept only when their
    compilation took over a second, which depends on the machine's load.)"""
    return sorted(p.name for p in cache.iterdir() if p.name.startswith("jit_train_step"))


EXACT_KEYS = (
    "steps", "epochs", "best_val_accuracy", "best_step", "test_accuracy", "test_loss", "test_examples",
    "nonfinite_loss_steps", "params",
)


def test_sigterm_mid_epoch_then_resume_matches_an_uninterrupted_run(cache_dir, tmp_path):
    """Exact resume: parameters, optimizer state, RNG, data position and best metrics all carry over."""
    compiled = tmp_path / "compiled"
    args = [
        "trainer=smoke", "trainer.max_steps=100", SHORT, "model.n_layers=1", "trainer.limit_eval_batches=2",
        "trainer.eval_every_steps=40", "model.dropout=0.1", "logger=none", f"trainer.compilation_cache={compiled}",
    ]
    whole_dir, run_dir = tmp_path / "whole", tmp_path / "run"
    # The uninterrupted run first: it compiles the steps, which the interrupted run then loads
    # (two runs compiling the same steps side by side would only compete for the CPU).
    whole = train([*args, f"hydra.run.dir={whole_dir}"], cache_dir, tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    proc = train([*args, f"hydra.run.dir={run_dir}"], cache_dir, tmp_path, popen=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 55):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert "Resume with" in stderr and "Traceback" not in stderr
    stopped_at = max(r["step"] for r in read_metrics(run_dir) if r["split"] == "train")
    assert stopped_at < 100 and stopped_at % 48 != 0  # 48 batches per epoch: stopped mid-epoch
    compiled_before = compiled_train_steps(compiled)
    resumed = train([*args, f"hydra.run.dir={run_dir}"], cache_dir, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # The resumed run loaded the step the first runs compiled (and it computes the same numbers).
    assert compiled_before and compiled_train_steps(compiled) == compiled_before
    assert f"Resuming from {run_dir / 'checkpoints' / 'latest'} at step {stopped_at}." in resumed.stdout
    train_steps = [r["step"] for r in read_metrics(run_dir) if r["split"] == "train"]
    assert sorted(train_steps) == list(range(1, 101))  # every step trained exactly once

    interrupted, uninterrupted = check_summary(run_dir), check_summary(whole_dir)
    assert {k: interrupted[k] for k in EXACT_KEYS} == {k: uninterrupted[k] for k in EXACT_KEYS}
    validation = [(r["step"], r["accuracy"], r["loss"]) for r in read_metrics(run_dir) if r["split"] == "validation"]
    assert validation == [(r["step"], r["accuracy"], r["loss"]) for r in read_metrics(whole_dir) if r["split"] == "validation"]
    for kind in ("latest", "best"):
        a, b = saved_arrays(run_dir, kind), saved_arrays(whole_dir, kind)
        assert a.keys() == b.keys() and len(a) > 10
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{kind} {key}")


def test_two_cpu_devices_shard_the_batch_and_match_one_device(smoke_run, cache_dir, tmp_path):
    """Data parallel over 2 (host-platform) devices: same loss trajectory as the 1-device smoke run,
    and a second run (a requeued job) loads the compiled steps instead of compiling them again; the
    multi-GPU report compares the two runs."""
    one_dir, *_ = smoke_run
    run_dir, compiled = tmp_path / "run", tmp_path / "compiled"
    env = {"XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2"}
    args = ["trainer=smoke", "logger=none", f"trainer.compilation_cache={compiled}"]
    result = train([*args, f"hydra.run.dir={run_dir}"], cache_dir, tmp_path, extra_env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    compiled_first = compiled_train_steps(compiled)
    again = train([*args, f"hydra.run.dir={tmp_path / 'again'}"], cache_dir, tmp_path, extra_env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert compiled_first and compiled_train_steps(compiled) == compiled_first
    assert "devices: 2 x cpu" in result.stdout
    summary = check_summary(run_dir)
    assert summary["devices"] == 2
    two = [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(run_dir) if r["split"] == "train"]
    one = [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(one_dir) if r["split"] == "train"]
    assert [s for s, *_ in two] == [s for s, *_ in one] == [1, 2, 3, 4]
    np.testing.assert_allclose([v for _, *v in two], [v for _, *v in one], rtol=1e-5)
    assert summary["test_accuracy"] == pytest.approx(check_summary(one_dir)["test_accuracy"])

    # The multi-GPU script's report (scripts/multigpu_report.py) on these two real runs, laid out as
    # scripts/device_multigpu.sh leaves them.
    runs, out = tmp_path / "runs", tmp_path / "report"
    runs.mkdir(), out.mkdir()
    (runs / "listops-1").symlink_to(one_dir)
    (runs / "listops-2").symlink_to(run_dir)
    report = subprocess.run([sys.executable, "scripts/multigpu_report.py", str(runs), "2", "listops", str(out), "cmd"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stderr
    row = json.loads((out / "multigpu.json").read_text())["experiments"]["listops"]
    rate_1, rate_2 = check_summary(one_dir)["train_seq_per_s"], summary["train_seq_per_s"]
    assert row["devices"] == 2 and row["loss_steps_compared"] == 4
    assert row["scaling_efficiency"] == pytest.approx(rate_2 / (2 * rate_1))
    assert row["max_relative_loss_difference"] < 1e-5
    assert "| listops |" in (out / "multigpu.md").read_text()


def test_tiny_training_run_learns_easy_listops(cache_dir, tmp_path):
    """Single-operator expressions: loss must fall and accuracy beat always guessing the top class."""
    run_dir = tmp_path / "run"
    args = [
        "task.seq_len=16", "task.generate.num=1500", "task.generate.min_length=3", "task.generate.max_length=12",
        "task.generate.max_depth=2", "data.generate=true", "model.d_model=32", "model.n_layers=2",
        "model.mixer.d_state=16", "trainer.epochs=3", "trainer.batch_size=32", "trainer.log_every=15",
        "optimizer.lr=0.005", "logger=none", f"hydra.run.dir={run_dir}",
    ]
    result = train(args, cache_dir, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"]
    assert losses[-1] < 0.8 * losses[0], losses
    summary = check_summary(run_dir)
    assert summary["test_accuracy"] > summary["test_majority_class_rate"] + 0.1, summary


@pytest.mark.parametrize("model", ["s4", "s5_ptd", "mamba"])
def test_every_model_trains_a_smoke_run(model, cache_dir, tmp_path):
    """Each mixer class through the CLI (one layer: the wiring is what is tested here). s4d is the
    smoke_run above; s4_ptd and s5 share the classes of s4d and s5_ptd and differ in the init,
    which tests/ssm checks against float64 references."""
    run_dir = tmp_path / "run"
    args = [f"model={model}", "trainer=smoke", "model.n_layers=1", SHORT, "logger=none", f"hydra.run.dir={run_dir}"]
    result = train(args, cache_dir, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = check_summary(run_dir)
    assert summary["model"] == model and summary["steps"] == 4 and summary["nonfinite_loss_steps"] == 0


@pytest.mark.parametrize("task,seq_len", [("pathfinder", 1024), ("pathx", 16384)])
def test_pathfinder_tasks_generate_and_train_a_smoke_run(task, seq_len, cache_dir, tmp_path, tmp_path_factory):
    """Generated (tiny, seeded) Pathfinder / Path-X data through the release layout, prepared and trained."""
    if task == "pathfinder":
        # `task=pathfinder trainer=smoke logger=none` is exactly the session's shared smoke run
        # (tests/trained_run.py), which the inspection tests train anyway: check that one.
        run_dir, cache_dir = shared_smoke_run(tmp_path_factory)
    else:
        run_dir = tmp_path / "run"
        # One layer: the data path is what is tested, and each layer costs most at 16,384 steps.
        args = [f"task={task}", "trainer=smoke", "model.n_layers=1", "logger=none", f"hydra.run.dir={run_dir}"]
        result = train(args, cache_dir, tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    summary = check_summary(run_dir)
    assert summary["task"] == task and summary["seq_len"] == seq_len and summary["steps"] == 4
    assert list((cache_dir / "generated").glob(f"{task}-*/curv_contour_length_14/metadata/0.npy"))
