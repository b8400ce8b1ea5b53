"""Fourier-mode noise robustness: `python -m ssm_lra.robustness RUN... [--eps 0.5 1] [--freqs 0 1 2 4]
[--worst-case K] [--out DIR]`.

Evaluates each trained run on its test inputs with a sinusoid added to every sequence,

    x'[t] = x[t] + eps * std(x) * sin(2 pi f t / n + phase),   t = 0 .. n-1 (n: the sequence's length),

for a sweep of frequencies f (cycles per sequence), where std(x) is the example's own standard
deviation over its real positions and phase is uniform random per example (seeded, the same for
every f, eps and run). A random phase keeps a frequency from being hidden by where its zeros fall
(at f = n/2 a zero phase would add nothing). --worst-case K adds the K frequencies at which the
model's own first SSM layer amplifies such an input the most (its learned transfer function, see
`ssm_lra.inspect_kernels.first_layer_gain`).

Writes robustness.json (accuracy per eps and frequency, per run) and robustness.png (one panel per
run, side by side) into --out (default: RUN/figures for one run, ./robustness for several).
Real-valued inputs only (image with task.input=real, pathfinder, pathx).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from ssm_lra.errors import UserError

DEFAULT_EPS = (0.5,)


# ----------------------------------------------------------------------------------------------
# The noise: a pure function.


def fourier_noise(x, mask, eps: float, freq: float, phase):
    """eps * std(x) * sin(2 pi freq t / n + phase) at each example's real positions, 0 in padding.

    x (B, L, C) real, mask (B, L) with 1 at the n real positions of each row (at the start),
    phase (B,). std(x) is taken per example over its real positions and channels. Returns an array
    of x's shape (numpy in, numpy out).
    """
    x = np.asarray(x, np.float64)
    mask = np.asarray(mask, np.float64)
    n = np.maximum(mask.sum(axis=1), 1.0)  # (B,)
    weights = mask[..., None] * np.ones_like(x)
    mean = (x * weights).sum(axis=(1, 2)) / weights.sum(axis=(1, 2)).clip(1.0)
    var = (((x - mean[:, None, None]) ** 2) * weights).sum(axis=(1, 2)) / weights.sum(axis=(1, 2)).clip(1.0)
    t = np.arange(x.shape[1], dtype=np.float64)[None, :]
    wave = np.sin(2.0 * np.pi * freq * t / n[:, None] + np.asarray(phase, np.float64)[:, None])  # (B, L)
    noise = eps * np.sqrt(var)[:, None] * wave * mask
    return noise[..., None] * np.ones((1, 1, x.shape[2]))


def noise_phases(num_examples: int, seed: int) -> np.ndarray:
    """One phase in [0, 2 pi) per example of the split, from the seed alone."""
    return np.random.default_rng(seed).uniform(0.0, 2.0 * np.pi, size=num_examples)


def default_frequencies(seq_len: int) -> list[int]:
    """0 (a constant shift) and the powers of two up to the highest frequency n/2."""
    freqs = [0]
    f = 1
    while f <= seq_len // 2:
        freqs.append(f)
        f *= 2
    return freqs


# ----------------------------------------------------------------------------------------------
# Sweeps.


def noisy_accuracy(run, split: str, eps: float, freq: float, phases: np.ndarray, limit, predict, bar) -> float:
    """Accuracy of a loaded run on `split` with the Fourier-mode noise added to its inputs."""
    from ssm_lra.evaluate import predict_split

    def add_noise(inputs, mask, first):
        phase = phases[first : first + len(inputs)]
        phase = np.pad(phase, (0, len(inputs) - len(phase)))  # the weight-0 filler rows of a last batch
        return (np.asarray(inputs) + fourier_noise(inputs, mask, eps, freq, phase)).astype(np.float32)

    transform = None if eps == 0 else add_noise
    logits, labels = predict_split(
        run, split, transform=transform, limit=limit, predict=predict, bar=bar, description=f"eps {eps:g}, f {freq:g}"
    )
    return float((logits.argmax(-1) == labels).mean())


def sweep_run(run_dir, eps_values, freqs, worst_case: int, split: str, kind: str, seed: int, limit, overrides, bar) -> dict:
    from ssm_lra.data.loading import hold_splits_in_memory
    from ssm_lra.evaluate import load_run, make_predict, run_plan

    # Judged from the config alone, before any data is read or checkpoint restored.
    spec = run_plan(Path(run_dir).expanduser(), overrides).spec
    if spec.tokens:
        raise UserError(
            f"{run_dir} is a {spec.name} run with token inputs: additive noise needs real-valued inputs "
            "(task=image with task.input=real, pathfinder, pathx)."
        )
    run = load_run(run_dir, kind, overrides)
    # The sweep reads the split once per (eps, frequency) pair: decode it once where it fits.
    held = hold_splits_in_memory(run.data, run.plan.data.get("in_memory", "auto"), candidates=(split,))
    run = dataclasses.replace(run, data=held)
    L = spec.seq_len
    freqs = list(freqs) if freqs else default_frequencies(L)
    bad = [f for f in freqs if not 0 <= f <= L / 2]
    if bad:
        raise UserError(f"frequencies {bad} are outside 0 .. {L // 2} (half the sequence length {L}: above it they alias).")
    predict = make_predict(run.plan.model)
    phases = noise_phases(len(run.data.splits[split]), seed)
    clean = noisy_accuracy(run, split, 0.0, 0.0, phases, limit, predict, bar)
    record = {
        "run_dir": str(run.run_dir),
        "label": run.label,
        "model": run.model_name,
        "task": spec.name,
        "checkpoint": kind,
        "step": run.step,
        "seq_len": L,
        "clean_accuracy": clean,
        "freqs": freqs,
        "accuracy": {f"{eps:g}": [noisy_accuracy(run, split, eps, f, phases, limit, predict, bar) for f in freqs] for eps in eps_values},
    }
    if worst_case:
        from ssm_lra.inspect_kernels import first_layer_gain, peak_frequencies

        gain = first_layer_gain(run)
        peaks = peak_frequencies(gain, worst_case)
        record["worst_case"] = {
            "freqs": peaks,
            "first_layer_gain": [float(gain[f]) for f in peaks],
            "accuracy": {f"{eps:g}": [noisy_accuracy(run, split, eps, f, phases, limit, predict, bar) for f in peaks] for eps in eps_values},
        }
    return record


def plot_robustness(records: Sequence[dict], path: Path) -> list[Path]:
    """One panel per run, side by side, sharing the accuracy axis: a line per eps against f
    (symlog: f = 0 included), the clean accuracy dashed, worst-case frequencies as triangles."""
    import matplotlib.pyplot as plt

    from ssm_lra.plot_runs import save_figure

    fig, axes = plt.subplots(1, len(records), figsize=(4.2 * len(records) + 0.5, 3.4), squeeze=False, sharey=True)
    eps_keys = list(records[0]["accuracy"])
    colours = {e: plt.cm.plasma(i / max(len(eps_keys), 2)) for i, e in enumerate(eps_keys)}
    for ax, record in zip(axes[0], records):
        for eps in record["accuracy"]:
            ax.plot(record["freqs"], record["accuracy"][eps], "o-", ms=3, color=colours.get(eps), label=f"eps {eps}")
        ax.axhline(record["clean_accuracy"], color="k", ls="--", lw=0.8, label="no noise")
        worst = record.get("worst_case")
        if worst:
            for eps in worst["accuracy"]:
                ax.plot(worst["freqs"], worst["accuracy"][eps], "v", ms=6, color=colours.get(eps), mec="k", mew=0.5)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_title(f"{record['label']}, step {record['step']}", fontsize=9)
        ax.set_xlabel("noise frequency f (cycles per sequence)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    axes[0, 0].set_ylabel("test accuracy", fontsize=8)
    handles, _ = axes[0, 0].get_legend_handles_labels()
    if any(r.get("worst_case") for r in records):
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], marker="v", ls="", color="0.5", mec="k", label="worst case (transfer peaks)"))
    fig.legend(handles=handles, loc="upper right", fontsize=7, ncol=len(handles))
    fig.suptitle(f"{records[0]['task']}: additive eps * std(x) * sin(2 pi f t / n + phase)", fontsize=9, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return save_figure(fig, path)


def robustness(
    run_dirs: Sequence[str | Path],
    eps_values: Sequence[float] = DEFAULT_EPS,
    freqs: Sequence[float] | None = None,
    worst_case: int = 0,
    out: str | Path | None = None,
    split: str = "test",
    kind: str = "best",
    seed: int = 0,
    limit: int | None = None,
    overrides: Sequence[str] = (),
) -> tuple[dict, list[Path]]:
    """Run the sweeps and write robustness.json and robustness.png; returns (result, paths)."""
    from ssm_lra import atomic
    from ssm_lra.engine.logging import progress_bar
    from ssm_lra.plot_runs import use_headless_backend

    use_headless_backend()
    if not run_dirs:
        raise UserError("name at least one run directory.")
    if any(e < 0 for e in eps_values):
        raise UserError(f"--eps values must be >= 0, got {list(eps_values)}.")
    with progress_bar() as bar:
        records = [sweep_run(r, eps_values, freqs, worst_case, split, kind, seed, limit, overrides, bar) for r in run_dirs]
    out = Path(out) if out else (Path(run_dirs[0]) / "figures" if len(run_dirs) == 1 else Path("robustness"))
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "noise": "x + eps * std(x) * sin(2 pi f t / n + phase), phase uniform per example",
        "split": split,
        "seed": seed,
        "eps": list(eps_values),
        "runs": records,
    }
    atomic.write_json(out / "robustness.json", result)
    paths = [out / "robustness.json", *plot_robustness(records, out / "robustness.png")]
    return result, paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ssm_lra.robustness",
        description="Accuracy of trained runs under additive Fourier-mode noise, against its frequency.",
    )
    parser.add_argument("runs", nargs="+", help="run directories (real-valued tasks: image, pathfinder, pathx)")
    parser.add_argument("--eps", type=float, nargs="+", default=list(DEFAULT_EPS), help="noise amplitudes in units of std(x) (default 0.5)")
    parser.add_argument("--freqs", type=float, nargs="+", help="frequencies in cycles per sequence (default: 0, 1, 2, 4, .. L/2)")
    parser.add_argument("--worst-case", type=int, default=0, metavar="K", help="also the K frequencies where the first layer's transfer function peaks")
    parser.add_argument("--out", help="output folder (default: RUN/figures for one run, ./robustness for several)")
    parser.add_argument("--split", default="test", choices=("test", "validation", "train"))
    parser.add_argument("--checkpoint", default="best", choices=("best", "latest"))
    parser.add_argument("--seed", type=int, default=0, help="seed of the random phases")
    parser.add_argument("--limit-batches", type=int, default=None, help="evaluate at most this many batches (default: the run's trainer.limit_eval_batches; 0: all)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. data.root=PATH (repeatable)")
    args = parser.parse_args(argv)
    try:
        from ssm_lra.evaluate import parse_key_values

        _, overrides = parse_key_values(args.overrides, {})
        result, paths = robustness(
            args.runs, args.eps, args.freqs, args.worst_case, args.out, args.split, args.checkpoint, args.seed, args.limit_batches, overrides
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for record in result["runs"]:
        print(f"{record['label']}: clean accuracy {record['clean_accuracy']:.4f}")
        for eps, accs in record["accuracy"].items():
            cells = ", ".join(f"f={f:g}: {a:.3f}" for f, a in zip(record["freqs"], accs))
            print(f"  eps {eps}: {cells}")
        if "worst_case" in record:
            for eps, accs in record["worst_case"]["accuracy"].items():
                cells = ", ".join(f"f={f}: {a:.3f}" for f, a in zip(record["worst_case"]["freqs"], accs))
                print(f"  eps {eps}, worst case: {cells}")
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
