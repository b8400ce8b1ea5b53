"""Reproduction tables: our runs' accuracy per model and task, beside the published numbers.

    python -m ssm_lra.tables RUN_DIR... [--out FILE.md] [--published results/published.yaml]

Each RUN_DIR is a run directory (it holds summary.json) or any folder above run directories (a
multirun folder, outputs/): summary.json files are found recursively. Runs are grouped into the
rows of results/published.yaml: a run of model=<m> goes to the row whose `model` is m and whose
`ssm_init` (if the row names one) equals the run's model.mixer.ssm_init, read from the run's
.hydra/config.yaml; otherwise to the row of m marked `default: true`, or to a row named after m
itself when the paper tables have none (e.g. our own settings). Each cell is
"mean ± sample std (n runs)" in percent; beside it the published number (* = unverified by the
reference) and our mean minus it. Missing cells are a dash. W&B projects are not read: runs log
summary.json locally whatever the logger, so the run directories are the one input.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml

from ssm_lra.errors import UserError

DEFAULT_PUBLISHED = Path(__file__).resolve().parents[1] / "results" / "published.yaml"
TASK_TITLES = {
    "listops": "ListOps",
    "text": "Text",
    "retrieval": "Retrieval",
    "image": "Image",
    "pathfinder": "Pathfinder",
    "pathx": "Path-X",
}
METRICS = ("test_accuracy", "best_val_accuracy")
DASH = "–"


@dataclass(frozen=True)
class Run:
    path: Path
    model: str
    task: str
    seed: int | None
    accuracy: float  # in [0, 1], as summary.json stores it
    ssm_init: str | None


# ----------------------------------------------------------------------------------------------
# Reading


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Every folder holding a summary.json at or below the given paths, sorted, without repeats."""
    found: set[Path] = set()
    for given in paths:
        path = Path(given).expanduser()
        if not path.exists():
            raise UserError(f"{given}: no such file or folder (give run directories or folders above them).")
        if path.is_file():
            if path.name != "summary.json":
                raise UserError(f"{given} is a file but not a summary.json; give run directories or folders above them.")
            found.add(path.parent.resolve())
            continue
        found.update(p.parent.resolve() for p in path.rglob("summary.json"))
    if not found:
        raise UserError(
            f"no runs found: no summary.json in or below {', '.join(map(str, paths))}. "
            "A run writes summary.json when it finishes (python -m ssm_lra.train ...); unfinished runs have none."
        )
    return sorted(found)


def read_run(run_dir: Path, metric: str = "test_accuracy") -> Run:
    summary_path = run_dir / "summary.json"
    try:
        summary = json.loads(summary_path.read_text())
    except OSError as e:
        raise UserError(f"cannot read {summary_path}: {e.strerror}.") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{summary_path} is not valid JSON ({e.msg}, line {e.lineno}); was the run interrupted while writing it?") from None
    if not isinstance(summary, dict):
        raise UserError(f"{summary_path} does not hold a JSON object.")
    missing = [k for k in ("model", "task", metric) if k not in summary]
    if missing:
        raise UserError(f"{summary_path} lacks {missing}; it was not written by python -m ssm_lra.train.")
    value = summary[metric]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise UserError(f"{summary_path}: {metric} must be a number in [0, 1], got {value!r}.")
    return Run(
        path=run_dir,
        model=str(summary["model"]),
        task=str(summary["task"]),
        seed=summary.get("seed"),
        accuracy=float(value),
        ssm_init=read_ssm_init(run_dir),
    )


def read_ssm_init(run_dir: Path) -> str | None:
    """model.mixer.ssm_init from the run's saved config; None where the run saved none (or has no such key)."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"cannot read the run's config {path}: {e}") from None
    init = ((cfg.get("model") or {}).get("mixer") or {}).get("ssm_init") if isinstance(cfg, dict) else None
    return None if init is None else str(init)


def load_published(path: str | Path) -> dict:
    path = Path(path).expanduser()
    try:
        published = yaml.safe_load(path.read_text())
    except OSError as e:
        raise UserError(f"cannot read the published results {path}: {e.strerror}. Give another with --published FILE.") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(published, dict) or not isinstance(published.get("results"), dict):
        raise UserError(f"{path} has no `results` mapping (see results/published.yaml for the format).")
    return published


# ----------------------------------------------------------------------------------------------
# Grouping


def row_for(run: Run, results: dict) -> str:
    """The published row a run is compared with (see the module docstring)."""
    rows = {name: row for name, row in results.items() if row.get("model") == run.model}
    for name, row in rows.items():
        if row.get("ssm_init") is not None and row["ssm_init"] == run.ssm_init:
            return name
    for name, row in rows.items():
        if row.get("default") or row.get("ssm_init") is None:
            return name
    return run.model


def group_runs(runs: list[Run], results: dict) -> dict[str, dict[str, list[Run]]]:
    grouped: dict[str, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        grouped[row_for(run, results)][run.task].append(run)
    return grouped


def repeated_seeds(grouped: dict) -> list[str]:
    """Cells where one seed appears in several runs (e.g. a sweep run twice): worth a warning."""
    problems = []
    for row, cells in grouped.items():
        for task, runs in cells.items():
            seeds = [r.seed for r in runs if r.seed is not None]
            repeated = sorted({s for s in seeds if seeds.count(s) > 1})
            if repeated:
                problems.append(f"{row} / {task}: seed(s) {repeated} appear in more than one run")
    return problems


# ----------------------------------------------------------------------------------------------
# Rendering


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def format_ours(values_pct: list[float]) -> str:
    mean, std = mean_std(values_pct)
    spread = f" ± {std:.2f}" if std is not None else ""
    return f"{mean:.2f}{spread} ({len(values_pct)})"


def format_published(value, unverified: bool) -> str:
    if value is None:
        return DASH
    if isinstance(value, str):
        return value
    return f"{value:.2f}{'*' if unverified else ''}"


def format_difference(ours: float | None, published) -> str:
    if ours is None or not isinstance(published, (int, float)):
        return DASH
    return f"{ours - published:+.2f}"


def render_table(grouped: dict, published: dict, metric: str = "test_accuracy") -> str:
    results = published["results"]
    tasks = list(published.get("tasks") or TASK_TITLES)
    order = [name for name in results if name in grouped] + sorted(set(grouped) - set(results))
    header = ["model"]
    for task in tasks:
        header += [TASK_TITLES.get(task, task), "pub.", "Δ"]
    header += ["Avg", "pub.", "Δ"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    any_unverified = False
    for name in order:
        row = results.get(name, {})
        unverified = bool(row.get("unverified"))
        pub_acc = row.get("accuracy") or {}
        cells = [name if name in results else f"{name} (no published row)"]
        means = {}
        for task in tasks:
            runs = grouped[name].get(task, [])
            values = [100.0 * r.accuracy for r in runs]
            means[task] = statistics.fmean(values) if values else None
            pub = pub_acc.get(task)
            any_unverified |= unverified and isinstance(pub, (int, float))
            cells += [format_ours(values) if values else DASH, format_published(pub, unverified), format_difference(means[task], pub)]
        # Our average only when every task has runs: a partial average is not comparable.
        ours_avg = statistics.fmean(means.values()) if all(m is not None for m in means.values()) else None
        pub_avg = row.get("average")
        cells += [
            f"{ours_avg:.2f}" if ours_avg is not None else DASH,
            format_published(pub_avg, False),
            format_difference(ours_avg, pub_avg),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    what = "test accuracy at the best-validation checkpoint" if metric == "test_accuracy" else "best validation accuracy"
    notes = [
        "",
        (
            f"Ours: {what} in %, mean ± sample standard deviation over runs (number of runs). "
            "pub.: published test accuracy; Δ: our mean minus the published number. "
            f"Avg: mean over the {len(tasks)} tasks, only when every task has runs."
        ),
    ]
    if any_unverified:
        notes.append("* unverified: the reference could not check this number against the paper's own table.")
    sources = [f"{name}: {results[name].get('source', '?')}" for name in order if name in results]
    if sources:
        notes.append("Sources: " + "; ".join(sources) + ".")
    return "\n".join(lines + notes) + "\n"


def make_table(paths: list[str | Path], published_path: str | Path = DEFAULT_PUBLISHED, metric: str = "test_accuracy") -> tuple[str, list[str]]:
    """(Markdown table, warnings) for the runs at or below `paths`."""
    if metric not in METRICS:
        raise UserError(f"metric {metric!r} is not one of {list(METRICS)}.")
    published = load_published(published_path)
    runs = [read_run(d, metric) for d in find_run_dirs(paths)]
    grouped = group_runs(runs, published["results"])
    warnings = repeated_seeds(grouped)
    tasks = set(published.get("tasks") or TASK_TITLES)
    unknown = sorted({r.task for r in runs} - tasks)
    if unknown:
        warnings.append(f"runs of task(s) {unknown} have no column and are left out")
    return render_table(grouped, published, metric), warnings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ssm_lra.tables",
        description="Markdown table of our runs (mean ± std over seeds per model and task) beside the published numbers.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories, or folders above them (searched recursively)")
    parser.add_argument("--out", metavar="FILE.md", help="write the table here (default: print it)")
    parser.add_argument("--published", default=str(DEFAULT_PUBLISHED), metavar="FILE", help="published results (default: %(default)s)")
    parser.add_argument("--metric", default="test_accuracy", choices=METRICS, help="summary.json key to tabulate (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        table, warnings = make_table(args.run_dirs, args.published, args.metric)
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if args.out:
            out = Path(args.out).expanduser()
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(table)
            except OSError as e:
                raise UserError(f"cannot write {out}: {e.strerror}.") from None
            print(f"Wrote {out}")
        else:
            print(table, end="")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
