"""Evaluate a trained run on one split: `python -m ssm_lra.evaluate run_dir=RUN [split=test] [checkpoint=best]`.

The model is rebuilt from the run's own saved config (`.hydra/config.yaml`), the checkpoint is
restored into the structure of the step-0 state `build_state` makes, and the split is read the way
training reads it. By default the run's own evaluation settings (trainer.eval_batch_size,
trainer.limit_eval_batches) are used, so the numbers match what the run reported for the same
checkpoint; `trainer.limit_eval_batches=null` evaluates the whole split. `data.root=...` and
`data.cache_dir=...` may point at the data on this machine.

Prints the metrics and writes them to RUN/eval_<split>.json: accuracy, loss, examples, per-class
accuracy, and which checkpoint (kind, step) was evaluated.

This module also holds what the other inspection commands (robustness, inspect_kernels) share:
reading key=value arguments, loading a run with its checkpoint, and a jitted predict function.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ssm_lra.errors import UserError

SPLITS = ("train", "validation", "test")
CHECKPOINT_KINDS = ("best", "latest")
# Config keys a user may change when evaluating: where the data is, and how much of it to evaluate.
# Anything else (model, task, sizes) must stay as trained, or the checkpoint would not fit.
OVERRIDABLE = ("data.", "trainer.eval_batch_size", "trainer.limit_eval_batches", "task.tfds_dir")


# ----------------------------------------------------------------------------------------------
# Command-line arguments: key=value, as in `python -m ssm_lra.train`.


def parse_key_values(argv: Sequence[str], known: Mapping[str, Any]) -> tuple[dict, list[str]]:
    """Split `key=value` arguments into this command's own keys (`known`, with their defaults) and
    config overrides (dotted keys such as data.root=PATH), checked against OVERRIDABLE."""
    own = dict(known)
    overrides = []
    for arg in argv:
        if "=" not in arg:
            raise UserError(f"expected key=value arguments, got {arg!r} (e.g. run_dir=outputs/pathfinder/s4d/DATE).")
        key, value = arg.split("=", 1)
        key = key.lstrip("+")
        if key in own:
            own[key] = value
        elif key.startswith(OVERRIDABLE):
            overrides.append(f"{key}={value}")
        else:
            raise UserError(
                f"unknown argument {key!r}. Valid: {', '.join(sorted(own))}, and config overrides of "
                f"{', '.join(k.rstrip('.') + ('.*' if k.endswith('.') else '') for k in OVERRIDABLE)}."
            )
    return own, overrides


def choice(name: str, value: str, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise UserError(f"{name}={value!r} is not one of {list(allowed)}.")
    return value


# ----------------------------------------------------------------------------------------------
# Loading a trained run.


@dataclasses.dataclass
class LoadedRun:
    run_dir: Path
    plan: Any  # engine.setup.Plan of the run's config
    state: Any  # the restored TrainState
    init_state: Any  # build_state's step-0 state (same seed): the untrained model
    kind: str  # checkpoint kind restored: best | latest
    step: int  # its training step
    data: Any = None  # TaskData, when asked for

    @property
    def model_name(self) -> str:
        return str(self.plan.cfg.model.name)

    @property
    def label(self) -> str:
        """A short name for plots: model and run folder."""
        return f"{self.model_name} ({self.run_dir.name})"


def require_checkpoint(run_dir: Path, kind: str) -> None:
    """Check that the run has a `kind` checkpoint without creating anything in the run directory
    (orbax's manager would create missing folders)."""
    folder = run_dir / "checkpoints" / kind
    saves = [p for p in folder.glob("*") if p.is_dir() and p.name.isdigit()] if folder.is_dir() else []
    if not saves:
        raise UserError(
            f"{run_dir} has no '{kind}' checkpoint (looked in {folder}). Checkpoints are written at each evaluation; "
            f"a run stopped before its first evaluation has only 'latest' (try checkpoint=latest)."
        )


def run_plan(run_dir: Path, overrides: Sequence[str] = ()):
    """The checked Plan of a run's saved config (+ overrides); a config from another version of the
    code (missing or unknown keys, unknown model) ends in one UserError instead of a traceback."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from ssm_lra.engine.setup import check_config, load_run_config

    cfg = load_run_config(run_dir)
    try:
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        return check_config(cfg)
    except UserError as e:
        raise UserError(f"the config saved in {run_dir}/.hydra does not fit this version of ssm_lra: {e}") from None
    except (OmegaConfBaseException, KeyError, TypeError, ValueError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"the config saved in {run_dir}/.hydra does not fit this version of ssm_lra ({type(e).__name__}: "
            f"{detail}); it was probably written by another version."
        ) from None


def load_run(run_dir: str | Path, kind: str = "best", overrides: Sequence[str] = (), with_data: bool = True) -> LoadedRun:
    """A run's model with its `kind` checkpoint restored, and (with_data) its task data.

    Without data the optimizer's schedule is built for a nominal training set: the optimizer
    state's structure, which is all the restore needs, does not depend on its size.
    """
    import jax

    from ssm_lra.engine.checkpoint import Checkpoints
    from ssm_lra.engine.setup import build_state, enable_compilation_cache

    run_dir = Path(run_dir).expanduser().resolve()  # orbax wants absolute paths
    choice("checkpoint", kind, CHECKPOINT_KINDS)
    plan = run_plan(run_dir, overrides)
    # The run's own compilation cache: evaluating a Path-X model then loads the compiled step.
    enable_compilation_cache(plan.trainer.get("compilation_cache"))
    require_checkpoint(run_dir, kind)
    data = None
    if with_data:
        from ssm_lra.data.loading import load_task_data

        data = load_task_data(plan.task, plan.data)
        num_train = len(data.splits["train"])
    else:
        num_train = int(plan.trainer["batch_size"])
    _, _, init_state = build_state(plan, num_train)
    checkpoints = Checkpoints(run_dir / "checkpoints")
    try:
        state, meta = checkpoints.restore(kind, init_state)
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"the '{kind}' checkpoint in {run_dir} does not fit the model its config describes ({detail}); "
            "it was probably written by another version of ssm_lra."
        ) from None
    finally:
        checkpoints.close()
    # The training step is in the checkpoint's metadata (orbax's own numbers count saves).
    step = int(meta["step"]) if "step" in meta else int(jax.device_get(state.step))
    return LoadedRun(run_dir, plan, state, init_state, kind, step, data)


# ----------------------------------------------------------------------------------------------
# Predictions and metrics.


def make_predict(model) -> Callable:
    """jitted (params, batch_stats, inputs, mask) -> logits, in evaluation mode."""
    import jax

    from ssm_lra.engine.steps import model_variables

    def predict(params, batch_stats, inputs, mask):
        return model.apply(model_variables(params, batch_stats), inputs, mask, train=False)

    return jax.jit(predict)


def predict_split(
    run: LoadedRun,
    split: str,
    transform: Callable | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    predict: Callable | None = None,
    description: str | None = None,
    bar=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (n, classes) and labels (n,) of the real examples of `split` (batch padding dropped).

    `transform(inputs, mask, first_index)` may change each batch's inputs before the model sees
    them (robustness: added noise); first_index is the batch's first example's index in the split.
    Batch size and limit default to the run's evaluation settings (limit 0: the whole split).
    `bar`: a rich Progress to show this evaluation in (default: a new one).
    """
    import contextlib

    import jax

    from ssm_lra.data.pipeline import batches, num_batches
    from ssm_lra.engine.logging import progress_bar
    from ssm_lra.engine.loop import eval_settings

    default_size, default_limit = eval_settings(run.plan.trainer)
    batch_size = batch_size or default_size
    limit = default_limit if limit is None else (limit or None)
    source = run.data.splits[split]
    total = num_batches(len(source), batch_size, train=False)
    total = min(total, limit) if limit else total
    predict = predict or make_predict(run.plan.model)
    logits, labels = [], []
    with progress_bar() if bar is None else contextlib.nullcontext(bar) as shown:
        task = shown.add_task(description or f"{run.model_name} {split}", total=total, info="")
        for i, batch in enumerate(batches(source, run.data.spec, batch_size, train=False, limit=limit)):
            inputs = batch["inputs"]
            if transform is not None:
                inputs = transform(inputs, batch["mask"], i * batch_size)
            out = predict(run.state.params, run.state.batch_stats, inputs, batch["mask"])
            real = batch["weight"] > 0
            logits.append(np.asarray(jax.device_get(out))[real])
            labels.append(np.asarray(batch["label"])[real])
            shown.advance(task)
        shown.remove_task(task)
    if not logits:
        raise UserError(f"the {split} split of {run.run_dir} is empty.")
    return np.concatenate(logits), np.concatenate(labels)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def classification_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """accuracy, mean cross-entropy loss, examples, and per class: its examples and accuracy (None
    for a class with no example)."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    correct = logits.argmax(axis=-1) == labels
    losses = -np.take_along_axis(log_softmax(logits), labels[:, None], axis=-1)[:, 0]
    per_class = []
    for c in range(num_classes):
        members = labels == c
        n = int(members.sum())
        per_class.append({"class": c, "examples": n, "accuracy": float(correct[members].mean()) if n else None})
    return {
        "accuracy": float(correct.mean()),
        "loss": float(losses.mean()),
        "examples": int(len(labels)),
        "per_class": per_class,
    }


def evaluate_run(run_dir: str | Path, split: str = "test", kind: str = "best", overrides: Sequence[str] = ()) -> dict:
    """Evaluate a run's checkpoint on a split; returns the record written to RUN/eval_<split>.json."""
    from ssm_lra import atomic
    from ssm_lra.engine.loop import eval_settings

    choice("split", split, SPLITS)
    run = load_run(run_dir, kind, overrides)
    logits, labels = predict_split(run, split)
    batch_size, limit = eval_settings(run.plan.trainer)
    record = {
        "run_dir": str(run.run_dir),
        "model": run.model_name,
        "task": run.data.spec.name,
        "split": split,
        "checkpoint": kind,
        "step": run.step,
        **classification_metrics(logits, labels, run.data.spec.num_classes),
        "split_examples": len(run.data.splits[split]),
        "eval_batch_size": batch_size,
        "limit_eval_batches": limit,
    }
    atomic.write_json(run.run_dir / f"eval_{split}.json", record)
    return record


def format_record(record: dict) -> str:
    lines = [
        f"{record['model']} on {record['task']} {record['split']}, '{record['checkpoint']}' checkpoint (step "
        f"{record['step']}): accuracy {record['accuracy']:.4f}, loss {record['loss']:.4f}, "
        f"{record['examples']:,} of {record['split_examples']:,} examples"
        + (f" (limit_eval_batches={record['limit_eval_batches']})" if record["limit_eval_batches"] else "")
    ]
    for c in record["per_class"]:
        acc = "-" if c["accuracy"] is None else f"{c['accuracy']:.4f}"
        lines.append(f"  class {c['class']}: accuracy {acc} ({c['examples']:,} examples)")
    return "\n".join(lines)


USAGE = (
    "usage: python -m ssm_lra.evaluate run_dir=RUN [split=test|validation|train] [checkpoint=best|latest] "
    "[data.root=PATH] [data.cache_dir=PATH] [trainer.limit_eval_batches=null]"
)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE + "\n\n" + __doc__)
        return 0
    try:
        args, overrides = parse_key_values(argv, {"run_dir": None, "split": "test", "checkpoint": "best"})
        if not args["run_dir"]:
            raise UserError(f"run_dir=RUN is required. {USAGE}")
        record = evaluate_run(args["run_dir"], args["split"], args["checkpoint"], overrides)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(format_record(record))
    print(f"Written to {Path(record['run_dir']) / ('eval_' + record['split'] + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
