"""Learning curves of one or many runs: `python -m ssm_lra.plot_runs RUN... [--out DIR]`.

Draws train and validation loss and accuracy against the training step and against time, one
colour per model (runs of the same model, e.g. seeds, share it), and the test accuracy at the best
checkpoint as a star; writes curves.png and curves.svg. A RUN may also be a sweep folder
(`multirun/...`): its run directories are plotted.

Time: records with a `time_s` field are plotted against it. metrics.jsonl files without it are
plotted against the training time derived from the logged throughput (seq_per_s is the rate of the
current epoch so far, from its first timed step): compilation and evaluation are not in it, and the
axis says so.

`log_figures_to_wandb(run_dir, wandb_run)` writes these figures (and the kernel figures) for a run
and logs every PNG of RUN/figures to W&B, for the end of a training run.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ssm_lra.errors import UserError

MAX_PNG_DPI = 110  # README-sized figures stay well under 300 KB


def save_figure(fig, path: Path, formats: Sequence[str] | None = None) -> list[Path]:
    """Save a matplotlib figure atomically (a reader never sees half a file) and close it. The
    format is the path's suffix, or each of `formats` next to it."""
    import matplotlib.pyplot as plt

    from ssm_lra import atomic

    path = Path(path)
    paths = [path.with_suffix("." + f) for f in formats] if formats else [path]
    for target in paths:
        buffer = io.BytesIO()
        fig.savefig(buffer, format=target.suffix.lstrip("."), dpi=MAX_PNG_DPI)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(target, buffer.getvalue())
    plt.close(fig)
    return paths


def use_headless_backend() -> None:
    """No display on servers and in tests: draw into files only."""
    import matplotlib

    matplotlib.use("Agg")


# ----------------------------------------------------------------------------------------------
# Reading runs.


def read_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run directory: {path} is missing (it is written by `python -m ssm_lra.train`).")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                # A run killed mid-write leaves at most a torn last line: skip it, keep the rest.
                print(f"note: {path} line {number} is not JSON; skipped.", file=sys.stderr)
    return records


def as_float(value: Any) -> float:
    """Metric values as floats; the logger writes NaN and inf as strings."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def derived_train_time(train_records: Sequence[dict], batch_size: int) -> list[float]:
    """Cumulative training seconds at each train record, from its `seq_per_s`.

    The loop's rate at a record is (timed steps of this epoch so far) x batch_size / (seconds since
    the epoch's timer started), and the very first step of a run (compilation) is not timed. So the
    seconds into the epoch are timed_steps x batch_size / rate; earlier epochs add their last value.
    An epoch starts after the previous epoch's last logged step (the loop always logs an epoch's
    last step). Evaluation and compilation time are not included.
    """
    times = []
    finished = 0.0  # seconds of the epochs before the current one
    epoch, epoch_start, elapsed, previous_step = None, 0, 0.0, 0
    for record in train_records:
        if record.get("epoch") != epoch:
            if epoch is not None:
                finished += elapsed
                epoch_start = previous_step
            epoch, elapsed = record.get("epoch"), 0.0
        step = int(record["step"])
        timed = step - epoch_start - (1 if epoch_start == 0 else 0)
        rate = as_float(record.get("seq_per_s"))
        if timed > 0 and math.isfinite(rate) and rate > 0:
            elapsed = timed * batch_size / rate
        times.append(finished + elapsed)
        previous_step = step
    return times


@dataclasses.dataclass
class RunCurves:
    run_dir: Path
    model: str
    task: str
    train: dict  # step, time, loss, accuracy: arrays
    validation: dict  # step, time, loss, accuracy
    test: dict | None  # step, accuracy, loss (at the best checkpoint)
    time_logged: bool  # True: time_s from the records; False: derived training time


def run_batch_size(run_dir: Path) -> int | None:
    summary = run_dir / "summary.json"
    if summary.is_file():
        batch_size = json.loads(summary.read_text()).get("batch_size")
        if batch_size:
            return int(batch_size)
    config = run_dir / ".hydra" / "config.yaml"
    if config.is_file():
        from omegaconf import OmegaConf

        return int(OmegaConf.load(config).trainer.batch_size)
    return None


def run_names(run_dir: Path) -> tuple[str, str]:
    """(model, task) of a run, from its summary or its saved config."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        return str(data.get("model", "?")), str(data.get("task", "?"))
    config = run_dir / ".hydra" / "config.yaml"
    if config.is_file():
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(config)
        return str(cfg.model.name), str(cfg.task.name)
    return "?", "?"


def load_curves(run_dir: str | Path) -> RunCurves:
    run_dir = Path(run_dir).expanduser()
    records = read_records(run_dir)
    train = [r for r in records if r.get("split") == "train"]
    validation = [r for r in records if r.get("split") == "validation"]
    tests = [r for r in records if r.get("split") == "test"]
    time_logged = bool(train) and all("time_s" in r for r in train)
    if time_logged:
        train_time = [as_float(r["time_s"]) for r in train]
    else:
        train_time = derived_train_time(train, run_batch_size(run_dir) or 1)
    steps = np.array([int(r["step"]) for r in train])

    def time_at(step: int, record: dict) -> float:
        if time_logged and "time_s" in record:
            return as_float(record["time_s"])
        # The training time of the last train record at or before this step.
        i = np.searchsorted(steps, step, side="right") - 1
        return train_time[i] if i >= 0 else 0.0

    def columns(rs, with_time=True):
        out = {
            "step": np.array([int(r["step"]) for r in rs]),
            "loss": np.array([as_float(r.get("loss")) for r in rs]),
            "accuracy": np.array([as_float(r.get("accuracy")) for r in rs]),
        }
        if with_time:
            out["time"] = np.array([time_at(int(r["step"]), r) for r in rs])
        return out

    train_cols = columns(train, with_time=False)
    train_cols["time"] = np.array(train_time)
    model, task = run_names(run_dir)
    return RunCurves(
        run_dir, model, task, train_cols, columns(validation), columns(tests[-1:]) if tests else None, time_logged
    )


def expand_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories from the arguments; a folder without metrics.jsonl but with runs inside (a
    sweep) stands for those runs."""
    runs = []
    for path in (Path(p).expanduser() for p in paths):
        if (path / "metrics.jsonl").is_file():
            runs.append(path)
            continue
        inner = sorted(p.parent for p in path.glob("*/metrics.jsonl"))
        if not inner:
            raise UserError(f"{path} is not a run directory or a sweep folder: no metrics.jsonl in it or its subfolders.")
        runs.extend(inner)
    return runs


# ----------------------------------------------------------------------------------------------
# The figure.


def model_colours(models: Sequence[str]) -> dict:
    import matplotlib.pyplot as plt

    palette = plt.get_cmap("tab10")
    return {m: palette(i % 10) for i, m in enumerate(dict.fromkeys(models))}


def plot_curves(curves: Sequence[RunCurves], out: Path, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """2 x 2 panels (loss, accuracy) x (step, time): train thin, validation with markers, test star."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    colours = model_colours([c.model for c in curves])
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.4), sharex="col")
    all_logged = all(c.time_logged for c in curves)
    for c in curves:
        colour = colours[c.model]
        for col, x_key in enumerate(("step", "time")):
            for row, metric in enumerate(("loss", "accuracy")):
                ax = axes[row, col]
                if len(c.train["step"]):
                    ax.plot(c.train[x_key], c.train[metric], color=colour, lw=0.8, alpha=0.45)
                if len(c.validation["step"]):
                    ax.plot(c.validation[x_key], c.validation[metric], "o-", color=colour, lw=1.4, ms=3)
                if c.test is not None and metric == "accuracy":
                    x = c.test["step"] if x_key == "step" else c.validation["time"][
                        np.flatnonzero(c.validation["step"] == c.test["step"][0])[:1]
                    ] if len(c.validation["step"]) else []
                    if len(x):
                        ax.plot(x[:1], c.test["accuracy"][:1], "*", color=colour, ms=11, mec="k", mew=0.5)
    axes[0, 0].set_ylabel("loss")
    axes[1, 0].set_ylabel("accuracy")
    axes[1, 0].set_xlabel("training step")
    axes[1, 1].set_xlabel("time (s)" if all_logged else "training time (s; from logged throughput, without compilation and evaluation)")
    for ax in axes.ravel():
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    handles = [Line2D([], [], color=colour, lw=2, label=model) for model, colour in colours.items()]
    handles += [
        Line2D([], [], color="0.4", lw=0.8, alpha=0.6, label="train"),
        Line2D([], [], color="0.4", marker="o", ms=3, label="validation"),
        Line2D([], [], color="0.4", marker="*", ls="", ms=10, mec="k", label="test (best checkpoint)"),
    ]
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    tasks = sorted({c.task for c in curves})
    fig.suptitle(f"{', '.join(tasks)}: {len(curves)} run{'s' if len(curves) > 1 else ''}", fontsize=10, y=0.995, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return save_figure(fig, out, formats)


def plot_runs(run_dirs: Sequence[str | Path], out_dir: str | Path | None = None, name: str = "curves") -> list[Path]:
    """Curves of the runs into OUT/<name>.png and .svg (default OUT: the run's figures/ folder for
    one run, ./figures for several)."""
    use_headless_backend()
    runs = expand_runs(run_dirs)
    curves = [load_curves(r) for r in runs]
    if out_dir is None:
        out_dir = runs[0] / "figures" if len(runs) == 1 else Path("figures")
    return plot_curves(curves, Path(out_dir) / name)


def log_figures_to_wandb(run_dir: str | Path, wandb_run, kernels: bool = True) -> list[str]:
    """At the end of a run with W&B on: draw the learning curves (and, with `kernels`, the kernel
    figures of the best checkpoint) into RUN/figures and log every PNG there as a W&B image under
    figures/<name>. Figures are a bonus: a failure to draw one is reported, never raised, so that it
    cannot spoil a finished run. Returns the keys logged."""
    import wandb

    run_dir = Path(run_dir)
    try:
        plot_runs([run_dir], run_dir / "figures")
    except Exception as e:  # noqa: BLE001 - see the docstring
        print(f"note: learning curves not drawn ({type(e).__name__}: {e})", file=sys.stderr)
    if kernels:
        try:
            from ssm_lra.inspect_kernels import inspect_run

            inspect_run(run_dir, "best")
        except Exception as e:  # noqa: BLE001
            print(f"note: kernel figures not drawn ({type(e).__name__}: {e})", file=sys.stderr)
    images = {f"figures/{png.stem}": wandb.Image(str(png)) for png in sorted((run_dir / "figures").glob("*.png"))}
    if images:
        wandb_run.log(images)
    return sorted(images)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ssm_lra.plot_runs",
        description="Learning curves (loss, accuracy vs step and time) of runs, grouped by model: PNG and SVG.",
    )
    parser.add_argument("runs", nargs="+", help="run directories (or sweep folders holding them)")
    parser.add_argument("--out", help="output folder (default: RUN/figures for one run, ./figures for several)")
    parser.add_argument("--name", default="curves", help="file name without suffix (default: curves)")
    args = parser.parse_args(argv)
    try:
        paths = plot_runs(args.runs, args.out, args.name)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
