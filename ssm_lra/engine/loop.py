"""The epoch loop: train, evaluate, keep the best checkpoint, test at the best one.

Host synchronisation happens only every `trainer.log_every` steps and at evaluations, so the
device is never idle waiting for Python in between.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from typing import Any, Mapping

import jax
import numpy as np

from ssm_lra.data.loading import TaskData
from ssm_lra.data.pipeline import batches, num_batches, prefetch_to_device
from ssm_lra.engine.checkpoint import Checkpoints
from ssm_lra.engine.logging import RunLogger, progress_bar
from ssm_lra.engine.steps import TrainState, make_eval_step, make_train_step
from ssm_lra.errors import ConfigError, UserError


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class Interrupted(Exception):
    """Training stopped on a signal after saving the latest checkpoint.

    `previous_handler` is the handler that was installed before training took the signal over
    (e.g. submitit's requeue handler); the caller passes the signal on to it once the run is closed.
    """

    def __init__(self, signum: int, step: int, previous_handler=None):
        self.signame = signal.Signals(signum).name
        super().__init__(f"{self.signame} at step {step}")
        self.signum = signum
        self.step = step
        self.previous_handler = previous_handler


class NonFiniteLoss(UserError):
    """A step's loss or gradients were not finite and trainer.nonfinite says stop."""


@contextlib.contextmanager
def stop_on_signals(signals=STOP_SIGNALS):
    """Turn the first Ctrl-C / SIGTERM / SIGUSR1 / SIGUSR2 into a request the loop honours between steps.

    Stopping between steps (not inside one) is what lets the loop save a consistent checkpoint;
    a second signal falls through to the previous behaviour, for users who really mean it.
    Yields a list that receives (signum, previous handler).
    """
    requested: list[tuple[int, object]] = []
    previous = {}

    def handler(signum, frame):
        requested.append((signum, previous.get(signum)))
        for s, h in previous.items():
            signal.signal(s, h)

    try:
        for s in signals:
            previous[s] = signal.signal(s, handler)
    except ValueError:  # not the main thread: leave signals alone
        previous.clear()
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@dataclasses.dataclass
class Schedule:
    """How long the run is, in steps and epochs, from the trainer config and the data size."""

    steps_per_epoch: int
    total_steps: int
    epochs: int

    @classmethod
    def from_config(cls, trainer: Mapping[str, Any], num_train: int) -> "Schedule":
        batch_size = int(trainer["batch_size"])
        per_epoch = num_batches(num_train, batch_size, train=True)
        if trainer.get("limit_train_batches"):
            per_epoch = min(per_epoch, int(trainer["limit_train_batches"]))
        if per_epoch < 1:
            raise ConfigError(
                f"trainer.batch_size={batch_size} is larger than the training set ({num_train} examples)."
            )
        total = int(trainer["max_steps"]) if trainer.get("max_steps") else int(trainer["epochs"]) * per_epoch
        if total < 1:
            raise ConfigError("trainer.epochs (or trainer.max_steps) must be at least 1.")
        return cls(per_epoch, total, math.ceil(total / per_epoch))


@dataclasses.dataclass
class Progress:
    """Where the run stands; saved with every checkpoint so that a resumed run continues exactly."""

    epoch: int = 0
    batch_in_epoch: int = 0
    best_val_accuracy: float = -1.0
    best_step: int = -1
    best_epoch: int = -1
    train_time_s: float = 0.0
    train_sequences: int = 0
    nonfinite_loss_steps: int = 0
    elapsed_s: float = 0.0  # wall-clock seconds inside the training loop, over all sessions
    eval_pending: bool = False  # stopped at a step whose evaluation had not run yet
    wandb_run_id: str | None = None

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> "Progress":
        """From a checkpoint's metadata; fields that a newer or older version wrote are tolerated."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in meta.items() if k in names})


def eval_settings(trainer: Mapping[str, Any]) -> tuple[int, int | None]:
    """(batch size, batch limit) of every evaluation: trainer.eval_batch_size (default: the training
    batch size) and trainer.limit_eval_batches (None: the whole split)."""
    batch_size = int(trainer.get("eval_batch_size") or trainer["batch_size"])
    limit = trainer.get("limit_eval_batches")
    return batch_size, (int(limit) if limit else None)


def evaluate(
    eval_step, state: TrainState, data: TaskData, split: str, trainer: Mapping[str, Any], bar=None, sharding=None
) -> dict:
    batch_size, limit = eval_settings(trainer)
    n = num_batches(len(data.splits[split]), batch_size, train=False)
    n = min(n, int(limit)) if limit else n
    task = bar.add_task(f"eval {split}", total=n, info="") if bar is not None else None
    totals = None
    local = batches(data.splits[split], data.spec, batch_size, train=False, limit=limit, **host_shard())
    for batch in prefetch_to_device(local, sharding=sharding):
        out = eval_step(state, batch)
        totals = out if totals is None else jax.tree_util.tree_map(lambda a, b: a + b, totals, out)
        if bar is not None:
            bar.advance(task)
    totals = jax.device_get(totals)
    if bar is not None:
        bar.remove_task(task)
    count = max(float(totals["count"]), 1.0)
    return {"loss": totals["loss_sum"] / count, "accuracy": totals["correct"] / count, "examples": int(totals["count"])}


def agree(stop: bool, save_due: bool, boundary: bool) -> tuple[bool, bool]:
    """(stop now, save now), decided the same way by every process.

    One process: its own signal and clock decide at once. Several (multi-host): a checkpoint save
    and the steps are collective, so a decision one process took alone would leave the others
    waiting for it forever; they pool their flags at log boundaries (every trainer.log_every
    steps) and act only there, on any process's signal or clock.
    """
    if jax.process_count() == 1:
        return stop, save_due
    if not boundary:
        return False, False
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.array([stop, save_due], dtype=np.int32))
    pooled = np.asarray(flags).reshape(-1, 2).any(axis=0)
    return bool(pooled[0]), bool(pooled[1])


def host_shard() -> dict:
    return {"process_index": jax.process_index(), "process_count": jax.process_count()}


@dataclasses.dataclass
class CheckpointPolicy:
    """When `latest` is saved besides every evaluation: every N steps and/or every M minutes."""

    every_steps: int | None = None
    every_minutes: float | None = None

    def due(self, step: int, seconds_since_save: float) -> bool:
        if self.every_steps and step % self.every_steps == 0:
            return True
        return bool(self.every_minutes) and seconds_since_save >= 60.0 * self.every_minutes


def fit(
    model,
    tx,
    state: TrainState,
    data: TaskData,
    trainer: Mapping[str, Any],
    seed: int,
    checkpoints: Checkpoints,
    logger: RunLogger,
    schedule: Schedule,
    progress: Progress,
    console=None,
    mesh=None,
) -> tuple[TrainState, Progress]:
    """Train until schedule.total_steps; returns the final state and progress (best metrics inside).

    Each step is followed, in this order, by: the epoch roll-over, a log record (every
    trainer.log_every steps), an evaluation (saving `best` and `latest`), a periodic `latest`
    save, and the reaction to a stop signal. A checkpoint thus always describes the position
    after a whole step, and a resumed run repeats nothing and skips nothing.
    """
    from ssm_lra.engine.distributed import batch_sharded

    sharding = batch_sharded(mesh) if mesh is not None else None
    accumulate = int(trainer.get("accumulate_grad_batches") or 1)
    train_step = make_train_step(model, tx, accumulate=accumulate)
    eval_step = make_eval_step(model)
    batch_size = int(trainer["batch_size"])
    log_every = max(int(trainer["log_every"]), 1)
    eval_every = trainer.get("eval_every_steps")
    nonfinite_policy = trainer.get("nonfinite", "skip")
    max_nonfinite = trainer.get("max_nonfinite_steps")
    saving = CheckpointPolicy(trainer.get("checkpoint_every_steps"), trainer.get("checkpoint_every_minutes"))
    step = int(jax.device_get(state.step))
    session_start = time.perf_counter()
    elapsed_before = progress.elapsed_s
    last_save = time.perf_counter()

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - session_start

    def checkpoint(kind: str):
        nonlocal last_save
        progress.elapsed_s = elapsed()
        checkpoints.save(kind, step, state, dataclasses.asdict(progress))
        last_save = time.perf_counter()

    def run_eval(bar):
        nonlocal progress
        metrics = evaluate(eval_step, state, data, "validation", trainer, bar, sharding)
        logger.log({"split": "validation", "step": step, "epoch": progress.epoch, "time_s": elapsed(), **metrics})
        if metrics["accuracy"] > progress.best_val_accuracy:
            progress = dataclasses.replace(
                progress, best_val_accuracy=float(metrics["accuracy"]), best_step=step, best_epoch=progress.epoch
            )
            checkpoint("best")
        checkpoint("latest")
        return metrics

    def check_finite(host_metrics, first_step: int):
        bad = [first_step + i for i, m in enumerate(host_metrics) if m["nonfinite"] > 0]
        progress.nonfinite_loss_steps += len(bad)
        too_many = max_nonfinite is not None and progress.nonfinite_loss_steps > int(max_nonfinite)
        if bad and (nonfinite_policy == "stop" or too_many):
            last = checkpoints.latest_step("latest")
            where = f"{checkpoints.directory / 'latest'} (step {last})" if last is not None else "none saved yet"
            reason = (
                "trainer.nonfinite=stop" if nonfinite_policy == "stop"
                else f"more than trainer.max_nonfinite_steps={max_nonfinite} such steps"
            )
            raise NonFiniteLoss(
                f"non-finite loss or gradients at step {bad[0]} ({reason}); the updates of such steps were not "
                f"applied. Last good checkpoint: {where}. Try a lower optimizer.lr or optimizer.grad_clip=1.0; "
                "trainer.nonfinite=skip skips such steps and counts them."
            )

    def evaluate_and_show(bar, epoch_task):
        progress.eval_pending = False
        val = run_eval(bar)
        bar.update(
            epoch_task,
            completed=progress.epoch,
            info=f"val acc {val['accuracy']:.4f}  best {progress.best_val_accuracy:.4f}",
        )

    compiled = False
    with progress_bar(console) as bar, stop_on_signals() as stop_requested:
        epoch_task = bar.add_task("epochs", total=schedule.epochs, completed=progress.epoch, info="")
        if progress.eval_pending:
            evaluate_and_show(bar, epoch_task)
        while step < schedule.total_steps:
            remaining = schedule.total_steps - step
            start = progress.batch_in_epoch
            n_batches = min(schedule.steps_per_epoch - start, remaining)
            task = bar.add_task(f"epoch {progress.epoch + 1}", total=schedule.steps_per_epoch, completed=start, info="")
            window = []
            window_start = step + 1
            timer = time.perf_counter()
            timed_steps = 0
            epoch_batches = batches(
                data.splits["train"], data.spec, batch_size, train=True, seed=seed, epoch=progress.epoch,
                start=start, limit=start + n_batches, **host_shard(),
            )
            epoch_done = False
            for batch in prefetch_to_device(epoch_batches, sharding=sharding):
                state, metrics = train_step(state, batch)
                step += 1
                progress.batch_in_epoch += 1
                window.append(metrics)
                if not compiled:
                    # The first step of a session includes compilation: keep it out of the throughput.
                    jax.block_until_ready(metrics)
                    timer = time.perf_counter()
                    compiled = True
                else:
                    timed_steps += 1
                epoch_done = progress.batch_in_epoch >= schedule.steps_per_epoch
                last_step = step == schedule.total_steps
                if step % log_every == 0 or epoch_done or last_step:
                    host = jax.device_get(window)
                    window = []
                    check_finite(host, window_start)
                    window_start = step + 1
                    record = {k: float(np.mean([m[k] for m in host])) for k in host[0] if k != "nonfinite"}
                    elapsed_epoch = time.perf_counter() - timer
                    rate = timed_steps * batch_size / elapsed_epoch if elapsed_epoch > 0 and timed_steps else float("nan")
                    logger.log({
                        "split": "train", "step": step, "epoch": progress.epoch, "time_s": elapsed(),
                        "seq_per_s": rate, **record,
                    })
                    bar.update(
                        task,
                        completed=progress.batch_in_epoch,
                        info=f"step {step}  loss {record['loss']:.4f}  acc {record['accuracy']:.3f}  {rate:,.0f} seq/s",
                    )
                if epoch_done:
                    progress.train_time_s += time.perf_counter() - timer
                    progress.train_sequences += timed_steps * batch_size
                    progress = dataclasses.replace(progress, epoch=progress.epoch + 1, batch_in_epoch=0)
                eval_due = (eval_every and step % int(eval_every) == 0) or (not eval_every and epoch_done) or last_step
                stop, save_due = agree(
                    bool(stop_requested), saving.due(step, time.perf_counter() - last_save), step % log_every == 0
                )
                if stop:
                    # Leave at once (a preemption's grace time is short); the resumed run
                    # evaluates first if this step's evaluation is owed.
                    progress.eval_pending = bool(eval_due)
                    checkpoint("latest")
                    signum, previous = stop_requested[0] if stop_requested else (signal.SIGTERM, None)
                    raise Interrupted(signum, step, previous)
                paused = time.perf_counter()
                if eval_due:
                    evaluate_and_show(bar, epoch_task)
                elif save_due:
                    checkpoint("latest")
                timer += time.perf_counter() - paused  # throughput counts training time only
            if not epoch_done:  # the run ended inside this epoch
                progress.train_time_s += time.perf_counter() - timer
                progress.train_sequences += timed_steps * batch_size
            bar.remove_task(task)
    progress.elapsed_s = elapsed()
    return state, progress
