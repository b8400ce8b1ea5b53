"""The benchmark's tables: one set of cells for the terminal (rich) and the Markdown file."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

STEP_COLUMNS = [
    "experiment", "status", "B x L", "params", "compile s", "step ms (p10-p90)", "seq/s", "seq/s back to back", "tokens/s",
    "peak GiB",
    "XLA temp GiB",
]
LAYER_COLUMNS = [
    "experiment", "layer GFLOP", "layer MB (XLA)", "MB floor", "bound", "roofline ms", "measured ms (p10-p90)",
    "achieved", "floor ms", "of floor",
]


def device_slug(device_kind: str | None) -> str:
    """A file-name-safe device name: "NVIDIA H200" -> "nvidia-h200", None -> "unknown-device"."""
    if not device_kind:
        return "unknown-device"
    slug = re.sub(r"[^a-z0-9]+", "-", device_kind.lower()).strip("-")
    return slug or "unknown-device"


def _get(row: dict, *path: str) -> Any:
    for key in path:
        if not isinstance(row, dict) or row.get(key) is None:
            return None
        row = row[key]
    return row


def fmt(value, spec: str = "", scale: float = 1.0) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return format(value * scale if scale != 1.0 else value, spec)


def back_to_back_cell(step: dict) -> str:
    """The median round's rate, and the slowest and fastest rounds' where there were several."""
    rate = fmt(step.get("back_to_back_seq_per_s"), ",.0f")
    rounds = step.get("back_to_back_rounds_s") or []
    if len(rounds) < 2:
        return rate
    sequences = step["batch_size"] * step["back_to_back_steps"]
    return f"{rate} ({sequences / max(rounds):,.0f}-{sequences / min(rounds):,.0f})"


def step_cells(row: dict) -> list[str]:
    step = row.get("step") or {}
    times = step.get("step_s") or {}
    peak = step.get("peak_memory_bytes")
    spread = (
        f"{times['median'] * 1e3:.2f} ({times['p10'] * 1e3:.2f}-{times['p90'] * 1e3:.2f})" if times else "-"
    )
    status = row.get("status", "-")
    if status == "ok" and step.get("loss_finite") is False:
        status = "ok (loss not finite)"
    shape = f"{row['batch_size']} x {row['seq_len']}" if row.get("batch_size") else "-"
    return [
        row["experiment"],
        status,
        shape,
        fmt(step.get("params"), ","),
        fmt(step.get("compile_s"), ".1f"),
        spread,
        fmt(step.get("seq_per_s"), ",.0f"),
        back_to_back_cell(step),
        fmt(step.get("tokens_per_s"), ",.0f"),
        fmt(peak, ".2f", 1 / 2**30),
        fmt(_get(step, "step_cost", "memory", "temp_bytes"), ".2f", 1 / 2**30),
    ]


def layer_cells(row: dict) -> list[str]:
    layer = row.get("layer")
    if not layer:
        return [row["experiment"], row.get("layer_status", "-"), *["-"] * (len(LAYER_COLUMNS) - 2)]
    times = layer["measured_s"]
    flops = _get(layer, "xla", "flops")
    loops = " (loop: undercount)" if _get(layer, "xla", "has_loops") else ""
    xla_bytes = _get(layer, "xla", "bytes_accessed")
    kernel_bytes = _get(layer, "xla", "kernel_io_bytes")
    bytes_cell = fmt(xla_bytes, ",.1f", 1e-6)
    if _get(layer, "xla", "kernels"):
        loops += " (kernels' FLOPs not counted)"
        if kernel_bytes is not None and xla_bytes is not None:
            bytes_cell = f"{(xla_bytes + kernel_bytes) * 1e-6:,.1f} (kernels' I/O {kernel_bytes * 1e-6:,.1f})"
        else:
            bytes_cell += " (kernels not counted)"
    return [
        row["experiment"],
        fmt(flops, ".3f", 1e-9) + loops,
        bytes_cell,
        fmt(layer.get("compulsory_bytes"), ",.1f", 1e-6),
        fmt(_get(layer, "roofline", "bound")),
        fmt(_get(layer, "roofline", "time_s"), ".3f", 1e3),
        f"{times['median'] * 1e3:.3f} ({times['p10'] * 1e3:.3f}-{times['p90'] * 1e3:.3f})",
        fmt(_get(layer, "roofline", "achieved_fraction"), ".1%"),
        fmt(_get(layer, "floor", "time_s"), ".3f", 1e3),
        fmt(_get(layer, "floor", "achieved_fraction"), ".1%"),
    ]


def format_routes(routes: dict) -> str:
    """{"conv": "fft", "glu_products": "one"} -> "conv=fft, glu_products=one" (bench tables, and the
    line training prints at its start)."""
    return ", ".join(f"{key}={value}" for key, value in routes.items())


def command_block(command: str) -> list[str]:
    """Markdown lines giving the exact command that produced a results file, then a blank line."""
    return ["Command:", "", "```", command, "```", ""]


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in r) + " |" for r in rows]
    return "\n".join(lines)


def ceilings_understated(env: dict) -> bool:
    """Ceilings measured at CPU-test sizes on an accelerator: far below its peaks."""
    return env.get("ceiling_size") == "small" and env.get("platform") not in (None, "cpu")


def ceilings_lines(env: dict) -> list[str]:
    ceilings = env.get("ceilings") or {}
    if not ceilings:
        return ["Ceilings: not measured (" + env.get("error", "environment probe failed") + ")."]
    bw = ceilings["bandwidth"]
    lines = [
        (
            f"- memory bandwidth: {bw['bytes_per_s'] / 1e9:,.0f} GB/s (y = 1.0001 x over "
            f"{bw['array_bytes'] / 2**20:,.0f} MiB of float32, bytes read + written, median of 20"
            + "".join(
                f"; {c['array_bytes'] / 2**20:,.0f} MiB: {c['bytes_per_s'] / 1e9:,.0f} GB/s"
                for c in ceilings.get("bandwidth_by_size", []) if c is not bw
            )
            + ")"
        ),
    ]
    for key, label in (
        ("matmul_f32_default", "float32 matmul, default precision (the model's)"),
        ("matmul_f32_highest", "float32 matmul, precision highest"),
        ("matmul_bf16", "bfloat16 matmul"),
    ):
        m = ceilings[key]
        lines.append(f"- {label}: {m['flops_per_s'] / 1e12:,.2f} TFLOP/s ({m['n']}^3, random data, median of 10)")
    if ceilings_understated(env):
        lines.append(
            "- measured at small sizes (--ceiling-size small): on this device they understate its peaks, so "
            "the rooflines below are too long and the achieved fractions too high (above 100% is possible); "
            "compare the step rates, or rerun with --ceiling-size full."
        )
    return lines


def markdown(doc: dict) -> str:
    env = doc.get("environment") or {}
    rows = doc["rows"]
    parts = [
        f"# Benchmark: {env.get('device_kind', 'unknown device')}, {doc['started'][:10]}",
        "",
        (
            f"Device: {env.get('device_kind', '-')} ({env.get('platform', '-')}, {env.get('device_count', '-')} "
            f"device(s); the bench uses the first); jax {env.get('jax_version', '-')}, jaxlib "
            f"{env.get('jaxlib_version', '-')}, flax {env.get('flax_version', '-')}, optax {env.get('optax_version', '-')}, "
            f"python {env.get('python_version', '-')}; commit {doc.get('git_commit', '-')}."
        ),
        "",
        *command_block(doc["command"]),
        (
            f"Settings: {doc['settings']['warmup']} warm-up + {doc['settings']['steps']} timed steps per experiment "
            "after compilation, random inputs of the task's shapes; each experiment in its own process. "
            f"Wall time {doc.get('wall_s', 0):.0f} s."
        ),
        "",
        "Measured ceilings:",
        "",
        *ceilings_lines(env),
        "",
        "## Training step (forward, backward, optimizer update)",
        "",
        (
            "Step ms: each step waited for before the next starts (median, p10-p90 of the timed steps); seq/s = "
            "batch / median. 'seq/s back to back': the same number of steps queued without a wait, one wait at "
            "the end, as the training loop runs them (the device never waits for the host between steps); the "
            "median of a few such rounds (slowest-fastest round in brackets)."
        ),
        "",
        markdown_table(STEP_COLUMNS, [step_cells(r) for r in rows]),
        "",
        "## One residual block, forward + backward: roofline",
        "",
        (
            "FLOPs and bytes from XLA's cost analysis of the compiled block (batch, length and width of the "
            "experiment); roofline = max(FLOPs / matmul rate (float32 at default precision; bfloat16 with "
            "trainer.precision=bfloat16), bytes / bandwidth); achieved = roofline / measured "
            "median. Floor: the same with the compulsory bytes only (inputs read once, outputs written once). "
            "'loop: undercount' marks a program with a while loop, whose body XLA counts once. XLA's cost analysis does "
            "not see into Pallas kernels: their FLOPs are not counted, and their bytes are their operands read "
            "and results written once (a lower bound), added to XLA's ('kernels' I/O'). See NOTES.md."
        ),
        "",
        markdown_table(LAYER_COLUMNS, [layer_cells(r) for r in rows]),
    ]
    looped = [r for r in rows if _get(r, "layer", "xla", "loops")]
    if looped:
        parts += ["", "While loops in the compiled block (XLA counts each body once; where they come from):", ""]
        for r in looped:
            loops = r["layer"]["xla"]["loops"]
            described = "; ".join(f"...{lp['op'] or '?'} ({lp['trips'] or '?'} trips)" for lp in loops[:4])
            parts.append(f"- {r['experiment']}: {len(loops)} loop(s): {described}" + (" ..." if len(loops) > 4 else ""))
    routed = [r for r in rows if r.get("routes")]
    if routed:
        parts += ["", "Routes each experiment ran (settings such as `auto`, as resolved on this device):", ""]
        parts += [f"- {r['experiment']}: {format_routes(r['routes'])}" for r in routed]
    flagged = [r for r in rows if r.get("xla_flags")]
    if flagged:
        parts += ["", "XLA_FLAGS each experiment ran with (the environment's and its config's: trainer.triton_gemm, trainer.dot_merger):", ""]
        parts += [f"- {r['experiment']}: `{r['xla_flags']}`" for r in flagged]
    failures = [r for r in rows if r.get("error") or r.get("layer_error")]
    if failures:
        parts += ["", "## Failures", ""]
        for r in failures:
            for key in ("error", "layer_error"):
                if r.get(key):
                    parts.append(f"- {r['experiment']} ({'step' if key == 'error' else 'layer'}): `{r[key]}`")
    if doc.get("missing_presets"):
        parts += ["", "No preset (not run): " + ", ".join(doc["missing_presets"]) + "."]
    return "\n".join(parts) + "\n"


def print_tables(doc: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    # Not a terminal (a log, a device's output): rich would squeeze the tables into 80 columns.
    console.width = max(console.width, 170)
    understated = ceilings_understated(doc.get("environment") or {})
    for title, columns, cells, caption in (
        ("training step", STEP_COLUMNS, step_cells, None),
        ("one block fwd+bwd: roofline", LAYER_COLUMNS, layer_cells,
         "ceilings measured at small sizes (--ceiling-size small): rooflines too long, fractions too high; "
         "compare the step rates" if understated else None),
    ):
        table = Table(title=title, caption=caption)
        for c in columns:
            table.add_column(c, justify="left" if c == "experiment" else "right")
        for r in doc["rows"]:
            table.add_row(*cells(r))
        console.print(table)
