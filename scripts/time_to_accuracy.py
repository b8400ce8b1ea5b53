"""Wall-clock time until validation accuracy first reaches a target, through the real training CLI.

    python scripts/time_to_accuracy.py --models s5_ptd,s4d --data /tmp/pf32 --generate 60000 --workers 16 \
        --target 0.8 --max-minutes 30 --eval-every 500 --out results/tta [hydra overrides, e.g. trainer.epochs=20]

For each model: `python -m ssm_lra.train experiment=<model>/pathfinder data.root=DATA logger=none
trainer.eval_every_steps=K hydra.run.dir=...` in its own process; this script watches the run's
metrics.jsonl and, at the first validation record with accuracy >= target, records the time and
stops the run (SIGTERM: the run saves a checkpoint and exits). A run still short of the target at
--max-minutes is stopped and recorded as "not reached".

Timing, two clocks per record: the engine's own `time_s` (seconds inside the training loop:
compilation and evaluations included, process start-up and data preparation not), the primary
figure where records carry it; and when this script saw the record appear in metrics.jsonl
(polled every --poll seconds; the file is line-buffered), from the start of the training process,
so start-up and data preparation included (the first run on a dataset converts it once, which
the next model does not pay). Data generation is timed apart.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ssm_lra import atomic
from ssm_lra.bench.report import command_block, device_slug, markdown_table

TASK = "pathfinder"


# ----------------------------------------------------------------------------------------------
# Pure functions.


def split_lines(buffer: str, chunk: str) -> tuple[list[str], str]:
    """Complete lines of buffer + chunk, and the unfinished rest (a record being written)."""
    text = buffer + chunk
    *lines, rest = text.split("\n")
    return [line for line in lines if line.strip()], rest


def record_time(record: dict, seen_s: float) -> tuple[float, str]:
    """Seconds to a record: the engine's own time_s (seconds inside the training loop: compilation
    and evaluations included, process start-up and data preparation not) where it writes one,
    else when this script saw the record, from the start of the training process."""
    if record.get("time_s") is not None:
        return float(record["time_s"]), "record time_s (training loop)"
    return seen_s, "seen in metrics.jsonl, from process start"


# ----------------------------------------------------------------------------------------------
# Running.


def preset_exists(model: str) -> bool:
    return (REPO / "conf" / "experiment" / model / f"{TASK}.yaml").is_file()


def train_command(
    model: str, data: Path, run_dir: Path, eval_every: int, overrides: Sequence[str], resume: bool = False
) -> list[str]:
    return [
        sys.executable, "-m", "ssm_lra.train", f"experiment={model}/{TASK}", f"data.root={data}", "logger=none",
        f"trainer.eval_every_steps={eval_every}", f"trainer.resume={str(resume).lower()}", f"hydra.run.dir={run_dir}",
        *overrides,
    ]


def stop(proc: subprocess.Popen, grace_s: float = 120) -> None:
    """SIGTERM (the run checkpoints and exits between two steps), then SIGKILL after `grace_s`."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class MetricsTail:
    """The records of a growing JSON-lines file, each read once: every `read` returns those
    completed since the last one."""

    def __init__(self, path: Path):
        self.path, self.offset, self.buffer = path, 0, ""

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with open(self.path) as f:
            f.seek(self.offset)
            chunk = f.read()
            self.offset = f.tell()
        lines, self.buffer = split_lines(self.buffer, chunk)
        return [json.loads(line) for line in lines]


def take(records: list[dict], seen: list, now: float, target: float) -> bool:
    """Append the train and validation records to `seen` (with the seconds `now` they were read
    at); whether a validation accuracy among them reaches the target."""
    reached = False
    for record in records:
        if record.get("split") in ("train", "validation"):
            seen.append((record, now))
        reached = reached or (record.get("split") == "validation" and float(record["accuracy"]) >= target)
    return reached


def follow(proc, tail: MetricsTail, seen: list, target: float, max_s: float, poll_s: float, started: float) -> str | None:
    """Read new records until a validation accuracy reaches the target ("target"), the time is up
    ("time limit") or the run ends (None). Appends each train and validation record to `seen`,
    with the seconds since `started` at which it was read."""
    while True:
        exited = proc.poll() is not None
        now = time.perf_counter() - started
        if take(tail.read(), seen, now, target):
            return "target"
        if exited:
            return None
        if now > max_s:
            return "time limit"
        time.sleep(poll_s)


def summarize_run(seen: Sequence[tuple[dict, float]], target: float, stopped_by: str | None, exit_code: int | None) -> dict:
    """The results of one run from the (record, seconds seen) pairs it wrote, in order."""
    timed = [(r, seen_s, *record_time(r, seen_s)) for r, seen_s in seen]
    train = [seen_s for r, seen_s, _, _ in timed if r.get("split") == "train"]
    validation = [(r, seen_s, t, source) for r, seen_s, t, source in timed if r.get("split") == "validation"]
    curve = [
        {"step": r["step"], "accuracy": float(r["accuracy"]), "time_s": t, "seen_s": seen_s}
        for r, seen_s, t, _ in validation
    ]
    row = {
        "stopped_by": stopped_by,
        "exit_code": exit_code,
        "first_train_record_seen_s": train[0] if train else None,
        "timing_source": validation[0][3] if validation else None,
        "best_val_accuracy": max((c["accuracy"] for c in curve), default=None),
        "validation": curve,
    }
    hit = next((c for c in curve if c["accuracy"] >= target), None)
    if hit:
        row.update(
            status="reached",
            minutes_to_target=hit["time_s"] / 60,
            minutes_to_target_from_process_start=hit["seen_s"] / 60,
            step_at_target=hit["step"],
            accuracy_at_target=hit["accuracy"],
        )
    elif stopped_by == "time limit":
        row["status"] = "not reached (time limit)"
    elif exit_code == 0:
        row["status"] = "not reached (training ended)"
    else:
        row["status"] = f"failed (exit code {exit_code})"
    return row


def watch_run(cmd: list[str], run_dir: Path, log_path: Path, target: float, max_s: float, poll_s: float) -> dict:
    """Run `cmd`, follow run_dir/metrics.jsonl, stop at the target or at max_s; the row of results."""
    seen: list[tuple[dict, float]] = []
    tail = MetricsTail(run_dir / "metrics.jsonl")
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            stopped_by = follow(proc, tail, seen, target, max_s, poll_s, started)
        finally:
            stop(proc)  # also when this script is interrupted: never leave a run behind
    # A run stopped at the time limit finishes its step (an evaluation too) and checkpoints before
    # it exits: what it wrote after the last poll still counts, at its own time_s.
    take(tail.read(), seen, time.perf_counter() - started, target)
    # A run we stopped ends with SIGTERM's exit status; only an unprompted end says how it went.
    row = summarize_run(seen, target, stopped_by, proc.returncode if stopped_by is None else None)
    row["wall_s"] = time.perf_counter() - started
    row["log"] = str(log_path)
    if row["status"].startswith("failed"):
        row["log_tail"] = log_path.read_text(errors="replace")[-1500:]
    return row


def device_kind() -> str | None:
    """The first device's name, from a short-lived process (this one never touches the device)."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", "import jax; print(jax.devices()[0].device_kind)"],
            check=False, capture_output=True, text=True, timeout=120, cwd=REPO,
        )
        return out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def generate(data: Path, num: int, contour_length: int, workers: int) -> float:
    cmd = [
        sys.executable, "-m", "ssm_lra.data", "generate", "--task", "pathfinder32", "--contour-length",
        str(contour_length), "--out", str(data), "--num", str(num), "--workers", str(workers), "--seed", "0",
        "--no-progress",
    ]
    print("tta:", shlex.join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    return time.perf_counter() - start


def markdown(doc: dict) -> str:
    columns = [
        "model", "status", "minutes to target", "from process start", "step", "val acc at target", "best val acc",
        "first train record seen s", "wall s",
    ]
    cells = []
    for r in doc["rows"]:
        cells.append([
            r["model"], r["status"],
            f"{r['minutes_to_target']:.2f}" if r.get("minutes_to_target") is not None else "-",
            f"{r['minutes_to_target_from_process_start']:.2f}" if r.get("minutes_to_target") is not None else "-",
            str(r.get("step_at_target", "-")),
            f"{r['accuracy_at_target']:.4f}" if r.get("accuracy_at_target") is not None else "-",
            f"{r['best_val_accuracy']:.4f}" if r.get("best_val_accuracy") is not None else "-",
            f"{r['first_train_record_seen_s']:.0f}" if r.get("first_train_record_seen_s") is not None else "-",
            f"{r['wall_s']:.0f}" if r.get("wall_s") is not None else "-",
        ])
    gen = doc.get("generation_s")
    lines = [
        (
            f"# Time to {doc['target']:.0%} validation accuracy on Pathfinder-32 (contour {doc['contour_length']}): "
            f"{doc.get('device_kind') or 'unknown device'}, {doc['started'][:10]}"
        ),
        "",
        (
            f"Data: {doc['data']} ({doc.get('generated_num') or 'existing'} images"
            + (f", generated in {gen:.0f} s" if gen else "")
            + f"). Limit {doc['max_minutes']} min per model; evaluation every {doc['eval_every']} steps; "
            f"overrides {' '.join(doc['overrides']) or 'none'}. Commit {doc['git_commit']}."
        ),
        "",
        *command_block(doc["command"]),
        markdown_table(columns, cells),
        "",
        (
            "'minutes to target': the engine's time_s of the first validation record at or above the target "
            "(seconds inside the training loop: compilation and evaluations included; process start-up and data "
            "preparation not), or, where records carry no time_s, the next column. 'from process start': when "
            "this script saw that record in metrics.jsonl (polled), from the start of the training process, "
            "start-up and data preparation included (the first run on a dataset also converts it once). "
            "Timing source per row in the JSON."
        ),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every run (e.g. trainer.epochs=20)")
    p.add_argument("--models", default="s5_ptd,s4d", help="comma-separated models with a <model>/pathfinder preset")
    p.add_argument("--data", type=Path, required=True, help="Pathfinder-32 folder (generated with --generate if empty)")
    p.add_argument("--generate", type=int, metavar="N", help="generate N images into --data first (unless it has files)")
    p.add_argument("--contour-length", type=int, default=14, choices=(6, 9, 14), help="difficulty (14: hard)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for generation")
    p.add_argument("--target", type=float, default=0.8, help="validation accuracy to reach (default 0.8)")
    p.add_argument("--max-minutes", type=float, default=30, help="stop a run after this long (default 30)")
    p.add_argument("--eval-every", type=int, default=500, help="trainer.eval_every_steps (default 500)")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between reads of metrics.jsonl")
    p.add_argument("--runs", type=Path, default=Path("outputs/tta"), help="run directories go here")
    p.add_argument(
        "--resume-dir", type=Path,
        help="run each model in DIR/<model>, continuing the run found there: a run in segments (e.g. one "
        "device lease each, DIR carried between them); time_s continues across segments",
    )
    p.add_argument("--out", type=Path, default=Path("results/tta"), help="JSON and Markdown results folder")
    args = p.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        p.error(f"not a Hydra override (key=value): {' '.join(bad)}")
    if not 0 < args.target <= 1:
        p.error("--target must be in (0, 1]")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    has_files = args.data.is_dir() and any(args.data.iterdir())
    generation_s = None
    if args.generate and not has_files:
        generation_s = generate(args.data, args.generate, args.contour_length, args.workers)
    elif not has_files:
        print(f"error: {args.data} holds no data; pass --generate N to generate it.", file=sys.stderr)
        return 2
    overrides = list(args.overrides)
    if args.contour_length != 14:
        overrides.insert(0, f"task.contour_length={args.contour_length}")

    from ssm_lra.train import git_commit

    started = dt.datetime.now()
    kind = device_kind()
    doc = {
        "command": shlex.join(["python", "scripts/time_to_accuracy.py", *argv]),
        "started": started.isoformat(timespec="seconds"),
        "device_kind": kind,
        "git_commit": git_commit(),
        "python_version": sys.version.split()[0],
        "data": str(args.data),
        "generated_num": args.generate if generation_s is not None else None,
        "generation_s": generation_s,
        "contour_length": args.contour_length,
        "target": args.target,
        "max_minutes": args.max_minutes,
        "eval_every": args.eval_every,
        "resume_dir": str(args.resume_dir) if args.resume_dir else None,
        "overrides": overrides,
        "rows": [],
    }
    stem = f"{device_slug(kind)}-pathfinder32-{started:%Y-%m-%d_%H%M%S}"
    args.out.mkdir(parents=True, exist_ok=True)
    args.runs.mkdir(parents=True, exist_ok=True)
    for model in models:
        row = {"model": model, "experiment": f"{model}/{TASK}"}
        if not preset_exists(model):
            row["status"] = "no preset"
        else:
            if args.resume_dir:
                run_dir = (args.resume_dir / model).resolve()
                run_dir.parent.mkdir(parents=True, exist_ok=True)
                log_path = run_dir.parent / f"{model}-{started:%Y%m%d_%H%M%S}.log"
            else:
                run_dir = (args.runs / f"{model}-{started:%Y%m%d_%H%M%S}").resolve()
                log_path = args.runs / f"{run_dir.name}.log"
            cmd = train_command(model, args.data.resolve(), run_dir, args.eval_every, overrides, bool(args.resume_dir))
            print(f"tta: {model}: {shlex.join(cmd)}", flush=True)
            row["command"] = shlex.join(cmd)
            row["run_dir"] = str(run_dir)
            row.update(watch_run(cmd, run_dir, log_path, args.target,
                                 args.max_minutes * 60, args.poll))
        doc["rows"].append(row)
        print(f"tta: {model}: {row['status']}"
              + (f" in {row['minutes_to_target']:.2f} min" if row.get("minutes_to_target") is not None else "")
              + (f" (best val acc {row['best_val_accuracy']:.4f})" if row.get("best_val_accuracy") is not None else ""),
              flush=True)
        atomic.write_json(args.out / f"{stem}.json", doc)
        atomic.write_text(args.out / f"{stem}.md", markdown(doc))
    print(markdown(doc))
    print(f"tta: wrote {args.out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
