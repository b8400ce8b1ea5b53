"""Which memory layout the FFT convolution of S4/S4D should run in: a lever measurement for the speed issue.

    python scripts/bench_conv_layout.py [--out results/bench/levers] [--steps 20]

The layers hold activations as (B, L, H). XLA's FFT transforms the minor-most axis, so an FFT along
L of a (B, L, H) array makes XLA transpose around it; whether it fuses those transposes with the
padding and the slicing is up to its layout assignment. This times the bidirectional FFT
convolution (forward + backward: the vjp with respect to the input and both kernels) at the S4D
presets' shapes in two ways, and writes a table:

- `time-axis`: `jnp.fft.rfft(u, axis=-2)` on (B, L, H), the layout left to XLA;
- `channels-first`: an explicit transpose to (B, H, L), FFTs along the last axis, and back.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax
import jax.numpy as jnp

from ssm_lra.atomic import write_text
from ssm_lra.bench.measure import time_calls
from ssm_lra.bench.report import device_slug, markdown_table
from ssm_lra.bench.roofline import summarize_times
from ssm_lra.ssm.conv import bidirectional_circular_kernel, fft_length

# (name, batch, length, channels): the S4D presets' training shapes.
SHAPES = [("listops", 50, 2048, 256), ("pathfinder", 64, 1024, 256), ("pathx", 16, 16384, 256)]


def conv_time_axis(u, k_circ):
    L, n = u.shape[-2], k_circ.shape[-1]
    u_f = jnp.fft.rfft(u, n=n, axis=-2)
    k_f = jnp.fft.rfft(k_circ, n=n, axis=-1).T
    return jnp.fft.irfft(u_f * k_f, n=n, axis=-2)[..., :L, :]


def conv_channels_first(u, k_circ):
    L, n = u.shape[-2], k_circ.shape[-1]
    u_f = jnp.fft.rfft(jnp.swapaxes(u, -1, -2), n=n, axis=-1)  # (B, H, n/2+1)
    k_f = jnp.fft.rfft(k_circ, n=n, axis=-1)
    y = jnp.fft.irfft(u_f * k_f, n=n, axis=-1)[..., :L]
    return jnp.swapaxes(y, -1, -2)


VARIANTS = {"time-axis": conv_time_axis, "channels-first": conv_channels_first}


def fwd_bwd(conv):
    def run(u, k_fwd, k_bwd, cotangent):
        def f(u, k_fwd, k_bwd):
            n = fft_length(u.shape[-2])
            return conv(u, bidirectional_circular_kernel(k_fwd, k_bwd, n))

        y, pull = jax.vjp(f, u, k_fwd, k_bwd)
        return y, pull(cotangent)

    return jax.jit(run)


def measure(name, B, L, H, steps):
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    u = jax.random.normal(keys[0], (B, L, H))
    k_fwd = jax.random.normal(keys[1], (H, L)) / L
    k_bwd = jax.random.normal(keys[2], (H, L)) / L
    g = jax.random.normal(keys[3], (B, L, H))
    rows, outputs = [], {}
    for variant, conv in VARIANTS.items():
        fn = fwd_bwd(conv)
        compiled = fn.lower(u, k_fwd, k_bwd, g).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        outputs[variant] = compiled(u, k_fwd, k_bwd, g)
        times = summarize_times(time_calls(compiled, (u, k_fwd, k_bwd, g), warmup=3, reps=steps))
        rows.append({
            "shape": name, "B": B, "L": L, "H": H, "variant": variant,
            "median_ms": times["median"] * 1e3, "p10_ms": times["p10"] * 1e3, "p90_ms": times["p90"] * 1e3,
            "xla_gb": float(cost.get("bytes accessed", 0.0)) / 1e9,
        })
    # Both variants compute the same thing: check it, so a faster wrong layout cannot win.
    ref, other = (jax.tree.leaves(outputs[v]) for v in VARIANTS)
    err = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(a)) + 1e-30)) for a, b in zip(ref, other))
    for row in rows:
        row["max_rel_diff"] = err
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "levers")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--shapes", default=",".join(s[0] for s in SHAPES))
    args = p.parse_args(argv)
    wanted = args.shapes.split(",")
    rows = [r for s in SHAPES if s[0] in wanted for r in measure(*s, args.steps)]
    device = jax.devices()[0]
    header = ["shape", "B x L x H", "variant", "median ms (p10-p90)", "XLA GB", "max rel diff"]
    table = markdown_table(header, [
        [r["shape"], f"{r['B']} x {r['L']} x {r['H']}", r["variant"],
         f"{r['median_ms']:.3f} ({r['p10_ms']:.3f}-{r['p90_ms']:.3f})", f"{r['xla_gb']:.2f}", f"{r['max_rel_diff']:.1e}"]
        for r in rows
    ])
    print(table)
    stem = f"conv-layout-{device_slug(device.device_kind)}-{dt.datetime.now():%Y-%m-%d_%H%M%S}"
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"device": device.device_kind, "jax": jax.__version__, "command": " ".join(sys.argv), "rows": rows}
    write_text(args.out / f"{stem}.json", json.dumps(meta, indent=1) + "\n")
    write_text(args.out / f"{stem}.md", f"# FFT convolution layout, {device.device_kind}\n\njax {jax.__version__}; "
               f"command: `{meta['command']}`. Forward + backward of the bidirectional FFT conv.\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
