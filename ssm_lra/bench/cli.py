"""`python -m ssm_lra.bench`: time the training step of experiment presets, and one layer's roofline.

    python -m ssm_lra.bench --experiments s5/listops,s4d/pathfinder
    python -m ssm_lra.bench --models s5,s4d --tasks listops,pathx --steps 20 --warmup 3
    python -m ssm_lra.bench --smoke --experiments s4d/listops --steps 3 --warmup 1   # CPU check
    python -m ssm_lra.bench --experiments mamba/listops model.mixer.chunk_size=1024  # Hydra overrides

This process never touches the device: a first worker process reads the device, the versions and
its measured ceilings (bandwidth, matrix rates), then each experiment runs in a fresh worker
(ssm_lra.bench.worker), so that peak memory is per experiment and an out-of-memory error or a
crash is one row of the table, not the end of the bench. Results: <out>/<device>-<date>.json and .md,
rewritten after every experiment.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ssm_lra import atomic
from ssm_lra.bench import report

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# Cheap tasks first, so that a time budget cuts the expensive ones (Path-X) rather than the many.
TASK_ORDER = ("listops", "image", "pathfinder", "text", "retrieval", "pathx")
# Tiny sizes for CPU checks of the bench itself; numbers at these sizes mean nothing.
SMOKE_OVERRIDES = ("model.d_model=16", "model.n_layers=1", "task.seq_len=64", "trainer.batch_size=4")


# An experiment is not started with less time than this left in --max-minutes: it could only time out.
MIN_START_S = 20


class BenchError(Exception):
    """A bad command line: printed as one `error:` line."""


# ----------------------------------------------------------------------------------------------
# Which experiments.


def available_experiments(conf_dir: Path = CONF_DIR) -> list[str]:
    """Every `<model>/<task>` preset in conf/experiment/ (top-level presets like quickstart are not model x task)."""
    return sorted(f"{p.parent.name}/{p.stem}" for p in (conf_dir / "experiment").glob("*/*.yaml"))


def split_list(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def task_sort_key(task: str) -> tuple:
    return (TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER), task)


def select_experiments(
    available: Sequence[str], experiments: Sequence[str], models: Sequence[str], tasks: Sequence[str]
) -> tuple[list[str], list[str]]:
    """(experiments to run, model x task combinations asked for that have no preset).

    Explicit experiments must all exist. Otherwise every model (default: all with a preset) is
    crossed with every task (default: all with a preset); combinations without a preset are
    returned as missing, so the bench works with whatever presets exist. Order: task by task
    (cheap tasks first unless --tasks gives an order), models in the order given.
    """
    if experiments and (models or tasks):
        raise BenchError("give either --experiments or --models/--tasks, not both.")
    if experiments:
        unknown = [e for e in experiments if e not in available]
        if unknown:
            raise BenchError(f"no experiment preset {', '.join(unknown)}. Available: {', '.join(available)}.")
        return list(dict.fromkeys(experiments)), []
    preset_models = list(dict.fromkeys(e.split("/")[0] for e in available))
    preset_tasks = sorted({e.split("/")[1] for e in available}, key=task_sort_key)
    for kind, asked, known in (("model", models, preset_models), ("task", tasks, preset_tasks)):
        unknown = [name for name in asked if name not in known]
        if unknown:
            raise BenchError(f"no experiment preset for {kind}(s) {', '.join(unknown)}. With presets: {', '.join(known)}.")
    selected, missing = [], []
    for task in tasks or preset_tasks:
        for model in models or preset_models:
            name = f"{model}/{task}"
            (selected if name in available else missing).append(name)
    # Without an explicit list, a combination nobody asked for is not "missing".
    return selected, missing if (models and tasks) else []


def experiment_overrides(smoke: bool, batch_size: int | None, overrides: Sequence[str]) -> list[str]:
    """Hydra overrides for every experiment: smoke sizes, then the batch size, then the user's (last wins)."""
    out = list(SMOKE_OVERRIDES) if smoke else []
    if batch_size is not None:
        out.append(f"trainer.batch_size={batch_size}")
    return out + list(overrides)


# ----------------------------------------------------------------------------------------------
# Worker processes.


def run_worker(job: dict, timeout_s: float, verbose: bool) -> tuple[dict | None, str, str | None]:
    """Run one job in a fresh process: (result or None, stderr tail, why it ended early or None)."""
    with tempfile.TemporaryDirectory(prefix="ssm_lra_bench_") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "ssm_lra.bench.worker", json.dumps(job), str(out)]
        ended = None
        try:
            proc = subprocess.run(
                cmd, check=False, timeout=timeout_s, text=True, stdout=None if verbose else subprocess.PIPE,
                stderr=None if verbose else subprocess.PIPE, cwd=CONF_DIR.parent,
            )
            stderr = proc.stderr or ""
            if proc.returncode < 0:
                ended = f"killed by signal {-proc.returncode}" + (" (host out of memory?)" if proc.returncode == -9 else "")
            elif proc.returncode != 0:
                ended = f"worker exited with code {proc.returncode}"
        except subprocess.TimeoutExpired as e:
            stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
            ended = f"timeout after {timeout_s:.0f} s"
        result = json.loads(out.read_text()) if out.is_file() else None
    return result, stderr[-1500:], ended


def finish_row(experiment: str, result: dict | None, stderr_tail: str, ended: str | None) -> dict:
    """The table row of one experiment, whatever state its worker left it in: a worker stopped
    early (timeout, signal, crash) marks the part it was in as "timeout" or "crashed"."""
    row = result or {"experiment": experiment, "status": "failed"}
    if ended is None:
        return row
    cause = "timeout" if ended.startswith("timeout") else "crashed"
    why = f"{ended}; stderr tail: {stderr_tail.strip()[-600:]}" if stderr_tail.strip() else ended
    row["ended"] = ended
    if row.get("status") in ("running", "failed") and not row.get("step"):
        row["status"] = cause
        row.setdefault("error", why)
    elif "layer_status" not in row:
        row["layer_status"] = cause
        row.setdefault("layer_error", why)
    return row


# ----------------------------------------------------------------------------------------------
# The command.


def git_commit() -> str:
    from ssm_lra.train import git_commit as commit_of_code

    return commit_of_code()


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ssm_lra.bench",
        description="Time the full training step of experiment presets (conf/experiment/<model>/<task>.yaml) on "
        "random data, and the roofline of one residual block. Each experiment runs in its own process.",
        epilog="Extra arguments key=value are Hydra overrides applied to every experiment, "
        "e.g. model.mixer.chunk_size=1024.",
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides (key=value) for every experiment")
    p.add_argument("--experiments", help="comma-separated <model>/<task> presets, e.g. s5/listops,s4d/pathx")
    p.add_argument("--models", help="comma-separated models, crossed with --tasks (default: all with presets)")
    p.add_argument("--tasks", help="comma-separated tasks, crossed with --models (default: all with presets)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per experiment (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation (default 3)")
    p.add_argument("--batch-size", type=int, help="override every preset's trainer.batch_size")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (d_model 16, 1 layer, length 64, batch 4): a CPU check")
    p.add_argument("--out", type=Path, default=Path("results/bench"), help="output folder (default results/bench)")
    p.add_argument("--name", help="file name stem (default <device>-<date>_<time>)")
    p.add_argument("--timeout", type=float, default=600, help="seconds one experiment may take (default 600)")
    p.add_argument(
        "--max-minutes", type=float, help="total budget: experiments that would start after it are recorded as skipped, "
        "and a running one is stopped at it"
    )
    p.add_argument("--ceiling-size", choices=("auto", "small", "full"), default="auto",
                   help="sizes of the ceiling measurements (auto: small on CPU, full elsewhere)")
    p.add_argument("--list", action="store_true", help="list the experiment presets and exit")
    p.add_argument("--verbose", action="store_true", help="show the workers' output")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    if args.batch_size is not None and args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        p.error(f"not a Hydra override (key=value): {' '.join(bad)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    available = available_experiments()
    if args.list:
        print("\n".join(available))
        return 0
    try:
        experiments, missing = select_experiments(
            available, split_list(args.experiments), split_list(args.models), split_list(args.tasks)
        )
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not experiments:
        print("error: no experiment preset matches.", file=sys.stderr)
        return 2
    overrides = experiment_overrides(args.smoke, args.batch_size, args.overrides)
    started_wall = time.perf_counter()
    deadline = started_wall + args.max_minutes * 60 if args.max_minutes else None

    def time_left(default: float) -> float:
        return default if deadline is None else min(default, deadline - time.perf_counter())

    print(f"bench: {len(experiments)} experiment(s): {', '.join(experiments)}", flush=True)
    if missing:
        print(f"bench: no preset for {', '.join(missing)} (skipped)", flush=True)

    env, stderr, ended = run_worker({"kind": "environment", "ceiling_size": args.ceiling_size}, time_left(300), args.verbose)
    if env is None:
        env = {"error": ended or "environment worker wrote nothing", "stderr_tail": stderr}
        print(f"bench: could not read the device ({env['error']}); continuing without ceilings", flush=True)
    else:
        print(f"bench: {env['device_kind']} ({env['platform']}), jax {env['jax_version']}", flush=True)

    started = dt.datetime.now()
    stem = args.name or f"{report.device_slug(env.get('device_kind'))}-{started:%Y-%m-%d_%H%M%S}"
    out_json, out_md = args.out / f"{stem}.json", args.out / f"{stem}.md"
    doc = {
        "command": shlex.join(["python", "-m", "ssm_lra.bench", *argv]),
        "started": started.isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "environment": env,
        "settings": {
            "steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size, "smoke": args.smoke,
            "overrides": overrides, "timeout_s": args.timeout, "max_minutes": args.max_minutes,
        },
        "missing_presets": missing,
        "rows": [],
    }

    def save():
        doc["wall_s"] = time.perf_counter() - started_wall
        doc["finished"] = dt.datetime.now().isoformat(timespec="seconds")
        args.out.mkdir(parents=True, exist_ok=True)
        atomic.write_json(out_json, doc)
        atomic.write_text(out_md, report.markdown(doc))

    for i, experiment in enumerate(experiments, 1):
        budget = time_left(args.timeout)
        if deadline is not None and deadline - time.perf_counter() < MIN_START_S:
            doc["rows"].append({"experiment": experiment, "status": "skipped (time budget)"})
            print(f"[{i}/{len(experiments)}] {experiment}: skipped (time budget)", flush=True)
            continue
        job = {
            "kind": "experiment", "experiment": experiment, "overrides": overrides,
            "warmup": args.warmup, "steps": args.steps, "ceilings": env.get("ceilings"),
        }
        result, stderr, ended = run_worker(job, budget, args.verbose)
        row = finish_row(experiment, result, stderr, ended)
        doc["rows"].append(row)
        save()
        cells = dict(zip(report.STEP_COLUMNS, report.step_cells(row)))
        print(
            f"[{i}/{len(experiments)}] {experiment}: {cells['status']}, step {cells['step ms (p10-p90)']} ms, "
            f"{cells['seq/s']} seq/s ({cells['seq/s back to back']} back to back), peak {cells['peak GiB']} GiB, layer {row.get('layer_status', '-')}",
            flush=True,
        )
    save()
    report.print_tables(doc)
    print(f"bench: wrote {out_json} and {out_md}")
    skipped = [r["experiment"] for r in doc["rows"] if r["status"].startswith("skipped")]
    if skipped:
        print(f"bench: skipped for time: {','.join(skipped)} (run them with --experiments {','.join(skipped)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
