"""Compare 1-GPU and N-GPU runs of scripts/device_multigpu.sh: rates, scaling efficiency, peak
memory per GPU and the loss trajectories; writes multigpu.json and multigpu.md.

    python scripts/multigpu_report.py RUNS_DIR N EXPERIMENTS OUT_DIR COMMAND
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def train_losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def compare(one: Path, many: Path, n: int) -> dict:
    s1, sn = (json.loads((r / "summary.json").read_text()) for r in (one, many))
    l1, ln = train_losses(one), train_losses(many)
    common = sorted(set(l1) & set(ln))
    worst = max((abs(l1[k] - ln[k]) / max(abs(l1[k]), 1e-12) for k in common), default=float("nan"))
    rate1, raten = s1["train_seq_per_s"], sn["train_seq_per_s"]
    return {
        "devices": sn["devices"],
        "batch_size": s1["batch_size"],
        "seq_len": s1["seq_len"],
        "seq_per_s_1": rate1,
        f"seq_per_s_{n}": raten,
        "steps_per_s_1": rate1 / s1["batch_size"],
        f"steps_per_s_{n}": raten / sn["batch_size"],
        "scaling_efficiency": raten / (n * rate1),
        "peak_gib_per_gpu_1": s1.get("peak_memory_gib_per_device"),
        f"peak_gib_per_gpu_{n}": sn.get("peak_memory_gib_per_device"),
        "loss_steps_compared": len(common),
        "max_relative_loss_difference": worst,
        "final_loss_1": l1[common[-1]] if common else None,
        f"final_loss_{n}": ln[common[-1]] if common else None,
    }


def main(runs: str, n: str, experiments: str, out: str, command: str) -> None:
    n_gpus, runs_dir = int(n), Path(runs)
    rows = {}
    for exp in experiments.split(","):
        name = exp.replace("/", "-")
        try:
            rows[exp] = compare(runs_dir / f"{name}-1", runs_dir / f"{name}-{n_gpus}", n_gpus)
        except (OSError, KeyError, ValueError) as e:
            rows[exp] = {"error": f"{type(e).__name__}: {e}"}
    doc = {"command": command, "gpus": n_gpus, "experiments": rows}
    Path(out, "multigpu.json").write_text(json.dumps(doc, indent=2))
    lines = [
        f"# Data parallel on {n_gpus} GPUs", "", f"Command: `{command}`", "",
        f"| experiment | batch x length | seq/s 1 GPU | seq/s {n_gpus} GPUs | scaling efficiency | peak GiB per GPU (1 / {n_gpus}) | max rel. loss diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for exp, r in rows.items():
        if "error" in r:
            lines.append(f"| {exp} | {r['error']} | | | | | |")
            continue
        peaks = lambda p: "-" if not p else ", ".join(f"{x:.1f}" for x in p)  # noqa: E731
        lines.append(
            f"| {exp} | {r['batch_size']} x {r['seq_len']} | {r['seq_per_s_1']:,.0f} | {r[f'seq_per_s_{n_gpus}']:,.0f} | "
            f"{r['scaling_efficiency']:.2f} | {peaks(r['peak_gib_per_gpu_1'])} / {peaks(r[f'peak_gib_per_gpu_{n_gpus}'])} | "
            f"{r['max_relative_loss_difference']:.1e} ({r['loss_steps_compared']} points) |"
        )
    Path(out, "multigpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(*sys.argv[1:6])
