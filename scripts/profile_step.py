"""Where a training step's device time goes: a profile of a preset's full training step, summed
per XLA operation and per part of the model.

    python scripts/profile_step.py --experiment s4d/pathfinder [--steps 5] [--out DIR] [overrides...]

Builds the step as the bench does (random batch of the preset's shapes, the state donated), runs
it a few times, then traces --steps more steps back to back with jax.profiler. From the trace's
device events (kernels and copies on the GPU's streams) it prints and writes
`<DIR>/profile-<experiment>.md`:

- device busy time per step (the union of the kernels' intervals) against the wall time per step:
  the difference is time the device sat idle (launch gaps, host work);
- the time per step of each HLO operation (a fusion, a cuFFT call, a matmul, a Triton kernel), with
  its kind and the model code it came from (the `op_name` in XLA's metadata);
- the same summed by model part: each op's op_name cut to the Flax module path with the layer
  index dropped, forward and backward (transpose) apart;
- with --hlo, the optimized HLO itself (`.hlo.txt.gz`): what each fusion computes, in which layout.
  `scripts/hlo_traffic.py` reads it next to this profile: bytes and bandwidth per operation.

Needs a device whose profile has device events (GPU); on a CPU the tables are empty.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ssm_lra import atomic
from ssm_lra.bench import hlo


def model_part(op_name: str) -> str:
    """A short, layer-independent label of where an op came from: the Flax module path with layer
    indices dropped, and whether it belongs to the backward pass (jax's `transpose`)."""
    if not op_name:
        return "(no metadata: library kernels in a command buffer, parameters)"
    backward = "transpose(" in op_name
    path = re.sub(r"^jit\([^)]*\)/", "", op_name)
    wrapper = re.compile(r"\b(jvp|transpose|vmap|remat|checkpoint|pjit|jit)\(([^()]*)\)")
    while wrapper.search(path):  # innermost first: transpose(jvp(M)) -> M
        path = wrapper.sub(r"\2", path)
    path = path.replace("SequenceClassifier/", "")
    path = re.sub(r"_\d+\b", "", path)  # layers_3 -> layers
    parts = [p for p in path.split("/") if p]
    # The module (or jitted helper) path without the primitive at its end; bare primitives are
    # the loss, the optimizer update and the finiteness guard.
    label = "/".join(parts[:-1][:5]) or "(outside modules)"
    return ("bwd " if backward else "fwd ") + label


def device_events(trace: dict) -> list[dict]:
    """Complete events on the device's processes (a GPU: kernels, memcpys), with hlo_op args."""
    names = {}
    for e in trace.get("traceEvents", []):
        if e.get("ph") == "M" and e.get("name") == "process_name":
            names[e["pid"]] = e.get("args", {}).get("name", "")
    device_pids = {pid for pid, name in names.items() if "/device:" in name and "CPU" not in name}
    return [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and e.get("pid") in device_pids]


def busy_time_us(events: list[dict]) -> float:
    """The union of the events' intervals (kernels on several streams may overlap)."""
    spans = sorted((e["ts"], e["ts"] + e.get("dur", 0.0)) for e in events)
    total, end = 0.0, float("-inf")
    for start, stop in spans:
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def event_op(event: dict) -> str:
    """The HLO instruction a device event ran. Inside a command buffer (a CUDA graph of several
    instructions) `hlo_op` names the buffer, and the kernel's own name is the fusion's, with
    dots as underscores; library kernels (cuFFT, cuBLAS) keep their library names there."""
    args = event.get("args", {})
    op = str(args.get("hlo_op") or "")
    if op and not op.startswith("command_buffer"):
        return op
    return kernel_key(event.get("name", "?"))


def kernel_key(name: str) -> str:
    return re.sub(r"[.\-]", "_", name)


def summarize(events: list[dict], ops: dict[str, dict], steps: int) -> dict:
    per_op = collections.defaultdict(lambda: {"us": 0.0, "count": 0, "kernels": set()})
    for e in events:
        entry = per_op[event_op(e)]
        entry["us"] += e.get("dur", 0.0)
        entry["count"] += 1
        entry["kernels"].add(e.get("name", "?")[:60])
    by_kernel_name = {kernel_key(name): info for name, info in ops.items()}
    rows = []
    for op, entry in per_op.items():
        info = ops.get(op) or by_kernel_name.get(op) or {"opcode": "library kernel", "detail": "", "op_name": ""}
        rows.append({
            "op": op,
            "ms_per_step": entry["us"] / 1e3 / steps,
            "launches_per_step": entry["count"] / steps,
            "kind": (info["opcode"] + (" " + info["detail"] if info["detail"] else "")).strip(),
            "part": model_part(info["op_name"]),
            "kernels": sorted(entry["kernels"])[:3],
        })
    rows.sort(key=lambda r: -r["ms_per_step"])
    by_part = collections.defaultdict(lambda: [0.0, 0.0])
    by_kind = collections.defaultdict(lambda: [0.0, 0.0])
    for r in rows:
        by_part[r["part"]][0] += r["ms_per_step"]
        by_part[r["part"]][1] += r["launches_per_step"]
        by_kind[r["kind"]][0] += r["ms_per_step"]
        by_kind[r["kind"]][1] += r["launches_per_step"]
    return {
        "kernel_ms_per_step": sum(r["ms_per_step"] for r in rows),
        "busy_ms_per_step": busy_time_us(events) / 1e3 / steps,
        "launches_per_step": len(events) / steps,
        "ops": rows,
        "parts": sorted(([p, v[0], v[1]] for p, v in by_part.items()), key=lambda r: -r[1]),
        "kinds": sorted(([k, v[0], v[1]] for k, v in by_kind.items()), key=lambda r: -r[1]),
    }


def markdown(summary: dict, header: dict, top: int) -> str:
    lines = [f"# Profile of {header['experiment']} {' '.join(header['overrides'])}".rstrip(), ""]
    lines += [f"- {k}: {v}" for k, v in header.items() if k not in ("experiment", "overrides")]
    lines += [
        f"- device kernels: {summary['kernel_ms_per_step']:.3f} ms per step summed, "
        f"{summary['busy_ms_per_step']:.3f} ms busy (union), {summary['launches_per_step']:.0f} launches per step",
        "",
        "## By kind of operation",
        "",
        "| kind | ms per step | launches per step |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {ms:.3f} | {n:.0f} |" for k, ms, n in summary["kinds"]]
    lines += ["", "## By model part", "", "| part | ms per step | launches per step |", "|---|---|---|"]
    lines += [f"| `{p}` | {ms:.3f} | {n:.0f} |" for p, ms, n in summary["parts"][:top]]
    lines += ["", f"## Top {top} operations", "", "| op | kind | ms per step | launches | part | kernels |", "|---|---|---|---|---|---|"]
    for r in summary["ops"][:top]:
        lines.append(
            f"| {r['op']} | {r['kind']} | {r['ms_per_step']:.3f} | {r['launches_per_step']:.0f} | `{r['part']}` | {', '.join(r['kernels'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", required=True)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--top", type=int, default=80)
    p.add_argument("--out", default="results/bench/profiles")
    p.add_argument("--hlo", action="store_true", help="also write the optimized HLO (.hlo.txt.gz): which ops each fusion holds, and their layouts")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)

    import jax

    from ssm_lra.bench.measure import NUM_TRAIN, compose_config, random_batch, time_back_to_back
    from ssm_lra.engine.setup import build_state, check_config
    from ssm_lra.engine.steps import make_train_step

    plan = check_config(compose_config(args.experiment, args.overrides))
    _, tx, state = build_state(plan, NUM_TRAIN)
    batch = random_batch(plan.spec, plan.trainer["batch_size"])
    compiled = make_train_step(plan.model, tx).lower(state, batch).compile()
    ops = hlo.instructions(compiled.as_text())
    state, metrics, _ = time_back_to_back(compiled, state, batch, args.warmup)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            state, metrics, wall_s = time_back_to_back(compiled, state, batch, args.steps)
        found = glob.glob(f"{trace_dir}/**/perfetto_trace.json.gz", recursive=True)
        trace = json.load(gzip.open(found[0])) if found else {}
    events = device_events(trace)
    summary = summarize(events, ops, args.steps)
    header = {
        "experiment": args.experiment,
        "overrides": args.overrides,
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall ms per step (traced, back to back)": f"{wall_s / args.steps * 1e3:.3f}",
        "batch": plan.trainer["batch_size"],
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "command": "python scripts/profile_step.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    text = markdown(summary, header, args.top)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = args.experiment.replace("/", "-") + ("-" + "-".join(o.split(".")[-1] for o in args.overrides) if args.overrides else "")
    atomic.write_text(out / f"profile-{slug}.md", text)
    if args.hlo:
        atomic.write_bytes(out / f"profile-{slug}.hlo.txt.gz", gzip.compress(compiled.as_text().encode()))
    if events[:3]:
        print("sample device events:", json.dumps(events[:3])[:1500])
    return 0


if __name__ == "__main__":
    sys.exit(main())
