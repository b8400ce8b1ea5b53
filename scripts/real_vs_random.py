"""Does the input pipeline keep the device busy? A training run's step rate on real data against the
bench's rate on random inputs for the same preset (the speed issue asks for 5% or less apart).

    python scripts/real_vs_random.py --metrics RUN/metrics.jsonl --bench results/bench/<file>.json \
        --experiment s5_ptd/pathfinder [--from-step K] [--out results/bench/real-vs-random.md]

Real rate: from the `time_s` of consecutive training records in metrics.jsonl (seconds inside the
training loop), so each window is (steps between the records) x batch / (seconds between them).
Left out: the first window (before the first record: compilation) and every window that holds an
evaluation (a validation record between its two training records). The first window after a
resume also holds a compilation and is not recognized as such, but one slow window among many does
not move the median. --from-step K keeps only windows after step K (one segment of a resumed run).
The bench's rate is its back-to-back rate on one random batch (steps queued without a wait, as
training runs them), or, in bench files from before that was measured, batch / median waited step.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ssm_lra import atomic


def training_windows(records: list[dict], batch_size: int, from_step: int = 0) -> list[float]:
    """Sequences/s of each window between two consecutive training records with no evaluation
    between, both after from_step."""
    rates, previous = [], None
    for record in records:
        if record.get("step", 0) <= from_step:
            continue
        if record.get("split") != "train" or record.get("time_s") is None:
            previous = None if record.get("split") in ("validation", "test") else previous
            continue
        if previous is not None and record["time_s"] > previous["time_s"]:
            rates.append((record["step"] - previous["step"]) * batch_size / (record["time_s"] - previous["time_s"]))
        previous = record
    return rates


def compare(rates: list[float], bench_rate: float) -> dict:
    if not rates:
        raise ValueError("no clean training window in the metrics (too short a run?)")
    r = np.asarray(rates)
    median = float(np.median(r))
    return {
        "windows": len(rates),
        "real_median": median,
        "real_p10": float(np.percentile(r, 10)),
        "real_p90": float(np.percentile(r, 90)),
        "bench": bench_rate,
        "ratio": median / bench_rate,
        "within_5_percent": median >= 0.95 * bench_rate,
    }


def bench_rate(row: dict) -> tuple[float, str]:
    """The bench row's rate to compare training with, and what it is."""
    step = row["step"]
    if step.get("back_to_back_seq_per_s"):
        return step["back_to_back_seq_per_s"], "back to back"
    return step["seq_per_s"], "waited steps"


def bench_row(bench: dict, experiment: str) -> dict:
    rows = [row for row in bench["rows"] if row["experiment"] == experiment and row.get("status") == "ok"]
    if not rows:
        raise SystemExit(f"error: the bench file has no finished row for {experiment}")
    return rows[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--metrics", type=Path, required=True, help="a run's metrics.jsonl")
    p.add_argument("--bench", type=Path, required=True, help="a python -m ssm_lra.bench JSON file")
    p.add_argument("--experiment", required=True, help="<model>/<task>, as the bench names it")
    p.add_argument("--from-step", type=int, default=0, help="only windows after this step (default 0: all)")
    p.add_argument("--out", type=Path, help="append a Markdown line here")
    args = p.parse_args(argv)
    records = [json.loads(line) for line in args.metrics.read_text().splitlines() if line.strip()]
    row = bench_row(json.loads(args.bench.read_text()), args.experiment)
    rate, kind = bench_rate(row)
    result = compare(training_windows(records, row["batch_size"], args.from_step), rate)
    line = (
        f"| {args.experiment} | {result['windows']} | {result['real_median']:,.0f} "
        f"({result['real_p10']:,.0f}-{result['real_p90']:,.0f}) | {result['bench']:,.0f} ({kind}) | {result['ratio']:.3f} | "
        f"{'yes' if result['within_5_percent'] else 'no'} | `{args.metrics}` vs `{args.bench.name}` |"
    )
    print("| experiment | windows | real seq/s median (p10-p90) | bench seq/s | ratio | within 5% | files |")
    print(line)
    if args.out:
        previous = args.out.read_text() if args.out.is_file() else ""
        atomic.write_text(args.out, previous + line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
