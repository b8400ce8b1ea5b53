"""Train a sequence model on an LRA task: `python -m ssm_lra.train model=s4d task=listops`.

The story of a run: check the config and the run directory, open the data, build the model and the
optimizer, resume if the run directory has a checkpoint, train with evaluation every epoch, then
test at the best-validation checkpoint and write summary.json.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ssm_lra.errors import UserError


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def output_dir_problem(argv: list[str], cwd: Path) -> str | None:
    """Why the run's output directory cannot be created, judged from the command line alone.

    Hydra creates the directory before any of our code runs and answers a failure with a
    traceback, so the obvious cases (an explicit hydra.run.dir / hydra.sweep.dir, or the default
    under the current folder) are checked here first.
    """
    keys = ("hydra.sweep.dir=",) if ("-m" in argv or "--multirun" in argv) else ("hydra.run.dir=",)
    explicit = [arg.split("=", 1)[1] for arg in argv if arg.startswith(keys)]
    if explicit:
        targets = [Path(t).expanduser() for t in explicit if "${" not in t]
    else:
        targets = [cwd / "outputs"]
    for target in targets:
        target = target if target.is_absolute() else cwd / target
        existing = _nearest_existing(target)
        if not existing.is_dir():
            return f"cannot create the run directory {target}: {existing} is a file, not a folder."
        if not os.access(existing, os.W_OK | os.X_OK):
            return f"cannot create the run directory {target}: {existing} is not writable."
    return None


def check_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write_test.{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(
            f"cannot write to the run directory {run_dir} ({e.strerror}). Choose another with hydra.run.dir=PATH."
        ) from None


def git_commit() -> str:
    """The code's commit (+ "-dirty"); SSM_LRA_GIT_COMMIT names it where the copy has no .git."""
    if os.environ.get("SSM_LRA_GIT_COMMIT"):
        return os.environ["SSM_LRA_GIT_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def majority_class_rate(source) -> float:
    """The accuracy of always answering the most frequent class: the floor a model must beat."""
    labels = np.array([int(source[i]["label"]) for i in range(len(source))])
    return float(np.bincount(labels).max() / max(len(labels), 1))


def peak_device_memory_gib() -> list[float] | None:
    """Peak bytes each local device's allocator has handed out, in GiB (GPU/TPU; None where not reported)."""
    import jax

    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
    return None if not all(peaks) else [p / 2**30 for p in peaks]


def run(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    check_run_dir(run_dir)

    # Join the other hosts first (multi-host jobs): the device count decides what is valid.
    from ssm_lra.engine.distributed import initialize_multihost

    initialize_multihost(cfg.trainer.get("multihost", "auto"))

    # Everything the config decides is checked before data is prepared or anything is compiled.
    from ssm_lra.engine.setup import build_state, check_config, enable_compilation_cache

    plan = check_config(cfg)
    enable_compilation_cache(plan.trainer.get("compilation_cache"))
    spec, model, trainer = plan.spec, plan.model, plan.trainer

    # Data.
    from ssm_lra.data.loading import hold_splits_in_memory, load_task_data

    data = load_task_data(plan.task, plan.data)
    data = hold_splits_in_memory(data, plan.data.get("in_memory", "auto"))

    # Model, optimizer, state: replicated over a data-parallel mesh of every visible device.
    import jax

    from ssm_lra.bench.report import format_routes
    from ssm_lra.engine.checkpoint import CheckpointMismatch, Checkpoints
    from ssm_lra.engine.distributed import batch_sharded, data_mesh, replicated
    from ssm_lra.engine.logging import RunLogger
    from ssm_lra.engine.loop import Progress, evaluate, fit
    from ssm_lra.engine.steps import count_params, make_eval_step

    schedule, tx, state = build_state(plan, len(data.splits["train"]))
    mesh = data_mesh()
    state = jax.device_put(state, replicated(mesh))

    checkpoints = Checkpoints(run_dir / "checkpoints")
    progress = Progress()
    if trainer.get("resume") and checkpoints.latest_step("latest") is not None:
        try:
            state, meta = checkpoints.restore("latest", state)
        except CheckpointMismatch as e:
            raise UserError(
                f"{run_dir} holds a checkpoint of another model ({e}), so this run cannot resume it. Give the new "
                "run a directory of its own (hydra.run.dir=PATH); the checkpoint is left as it is."
            ) from None
        progress = Progress.from_meta(meta)
        print(
            f"Resuming from {checkpoints.directory / 'latest'} at step {int(state.step)}. "
            f"(epoch {progress.epoch + 1}, batch {progress.batch_in_epoch}, best validation accuracy so far "
            f"{max(progress.best_val_accuracy, 0.0):.4f})",
            flush=True,
        )

    n_params = count_params(state.params)
    routes = model.routes()
    print(
        f"{cfg.model.name} on {spec.name}: {n_params:,} parameters, {len(data.splits['train']):,} training examples, "
        f"{schedule.total_steps:,} steps ({schedule.epochs} epochs x {schedule.steps_per_epoch} batches of "
        f"{trainer['batch_size']}), devices: {jax.device_count()} x {jax.devices()[0].platform}"
        + (f", routes: {format_routes(routes)}" if routes else "")
        + f". Run directory: {run_dir}",
        flush=True,
    )

    logger = RunLogger(
        run_dir,
        OmegaConf.to_container(cfg.logger, resolve=True),
        OmegaConf.to_container(cfg, resolve=True),
        resume_id=progress.wandb_run_id,
        enabled=jax.process_index() == 0,
    )
    progress.wandb_run_id = logger.wandb_run_id
    try:
        # Traced under the mesh: the layers split their FFTs and kernels over it (ssm/sharding.py).
        with jax.set_mesh(mesh):
            state, progress = fit(
                model, tx, state, data, trainer, cfg.seed, checkpoints, logger, schedule, progress, mesh=mesh
            )
            # Test (and re-check validation) at the best-validation checkpoint.
            best_state, _ = checkpoints.restore("best", state)
            eval_step = make_eval_step(model)
            test = evaluate(eval_step, best_state, data, "test", trainer, sharding=batch_sharded(mesh))
        logger.log({"split": "test", "step": progress.best_step, "epoch": progress.best_epoch, **test})
        steps = int(jax.device_get(state.step))
        peaks = peak_device_memory_gib()
        summary = {
            "model": cfg.model.name,
            "task": spec.name,
            "steps": steps,
            "epochs": round(steps / schedule.steps_per_epoch, 3),
            "best_val_accuracy": progress.best_val_accuracy,
            "best_step": progress.best_step,
            "test_accuracy": test["accuracy"],
            "test_loss": test["loss"],
            "test_examples": test["examples"],
            "test_majority_class_rate": majority_class_rate(data.splits["test"]),
            "params": n_params,
            "routes": routes,
            "wall_time_s": time.perf_counter() - started,
            "train_seq_per_s": progress.train_sequences / progress.train_time_s if progress.train_time_s else None,
            "batch_size": trainer["batch_size"],
            "accumulate_grad_batches": trainer.get("accumulate_grad_batches", 1),
            "precision": trainer.get("precision", "float32"),
            "seq_len": spec.seq_len,
            "nonfinite_loss_steps": progress.nonfinite_loss_steps,
            "train_elapsed_s": progress.elapsed_s,
            "peak_memory_gib": max(peaks) if peaks else None,  # the fullest device
            "peak_memory_gib_per_device": peaks,
            "devices": jax.device_count(),
            "processes": jax.process_count(),
            "platform": jax.devices()[0].platform,
            "device_kind": jax.devices()[0].device_kind,
            "jax_version": jax.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),  # with the config's own (trainer.triton_gemm, trainer.dot_merger)
            "git_commit": git_commit(),
            "seed": cfg.seed,
            "run_dir": str(run_dir),
            "wandb_run_id": logger.wandb_run_id,
        }
        logger.summary(summary)
        figures = cfg.logger.get("figures", "none")
        if logger.wandb_run is not None and figures != "none":
            from ssm_lra.plot_runs import log_figures_to_wandb

            log_figures_to_wandb(run_dir, logger.wandb_run, kernels=figures == "all")
    finally:
        logger.close()
        checkpoints.close()
    print(
        f"Done in {summary['wall_time_s']:.0f} s: best validation accuracy {summary['best_val_accuracy']:.4f} "
        f"(step {summary['best_step']}), test accuracy {summary['test_accuracy']:.4f} at that checkpoint "
        f"(always guessing the most frequent class: {summary['test_majority_class_rate']:.4f}). "
        f"Summary: {run_dir / 'summary.json'}",
        flush=True,
    )
    return summary


def requeue_slurm_job(environ=os.environ) -> bool:
    """Put this SLURM job back in the queue (it resumes from the checkpoint); False outside SLURM."""
    job = environ.get("SLURM_ARRAY_JOB_ID") and f"{environ['SLURM_ARRAY_JOB_ID']}_{environ.get('SLURM_ARRAY_TASK_ID')}"
    job = job or environ.get("SLURM_JOB_ID")
    if not job:
        return False
    try:
        subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        print(f"could not requeue SLURM job {job}: {e}", file=sys.stderr, flush=True)
        return False
    return True


def after_interruption(e, run_dir: str, requeue: bool) -> int:
    """Report a stop on a signal, pass the signal on, and say how the run resumes; the exit code.

    A handler installed before training (submitit's, when launched by hydra/launcher=slurm) gets
    the signal now that the checkpoint is safe: it requeues the job. Plain SLURM jobs requeue
    themselves on SIGUSR1/SIGUSR2 (the time-limit warning of `sbatch --signal`), never on
    SIGTERM or Ctrl-C, which scancel and users send to stop; in a multi-host job, process 0 asks.
    """
    import signal

    import jax

    print(
        f"\nStopped by {e.signame} at step {e.step}; the latest checkpoint is saved in {run_dir}/checkpoints. "
        f"Resume with the same command plus hydra.run.dir={run_dir}",
        file=sys.stderr,
        flush=True,
    )
    if callable(e.previous_handler):
        e.previous_handler(e.signum, None)
    elif requeue and e.signum in (signal.SIGUSR1, signal.SIGUSR2) and jax.process_index() == 0 and requeue_slurm_job():
        print("Requeued the SLURM job; it resumes from this checkpoint.", file=sys.stderr, flush=True)
    return 128 + e.signum


def out_of_memory_message(error: Exception, cfg: DictConfig) -> str:
    """What to change when a step does not fit on the device, with XLA's own first line."""
    first = next((line for line in str(error).splitlines() if "RESOURCE_EXHAUSTED" in line), str(error)[:300])
    batch = cfg.trainer.batch_size
    hints = [
        f"trainer.accumulate_grad_batches=2 (the same batch of {batch} as 2 micro-batches: same gradient, about half the activations)",
        "trainer.precision=bfloat16 (dense layers in bfloat16)",
    ]
    if cfg.model.name == "mamba":
        hints.append("a smaller model.mixer.chunk_size")
    return f"out of device memory: {first.strip()}\nThe training step does not fit on the device. Try " + "; or ".join(hints) + "."


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from ssm_lra.engine.loop import Interrupted, NonFiniteLoss

    try:
        return run(cfg)["best_val_accuracy"]
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(3)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except Interrupted as e:
        sys.exit(after_interruption(e, HydraConfig.get().runtime.output_dir, bool(cfg.trainer.get("requeue", True))))
    except Exception as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        print(f"error: {out_of_memory_message(e, cfg)}", file=sys.stderr, flush=True)
        sys.exit(4)


def cli() -> None:
    problem = output_dir_problem(sys.argv[1:], Path.cwd())
    if problem:
        print(f"error: {problem} Choose another with hydra.run.dir=PATH (hydra.sweep.dir=PATH with -m).", file=sys.stderr)
        sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
