"""Does Mamba's fused selective scan compile and agree with the XLA route on this machine's GPU?

    python scripts/check_fused_scan.py [--shape B,L,E,N] [--steps 10]

Compiles forward + backward of both routes at one shape, reports the largest relative difference
of the output and of each gradient, and the median time of each (forward + backward, one
direction). Exits 1 if the two disagree by more than 1e-3 relative (float32).
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from ssm_lra.ssm.mamba import batched_selective_scan


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="4,2048,224,16", help="B,L,E,N (default 4,2048,224,16)")
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args(argv)
    Bz, L, E, N = map(int, args.shape.split(","))
    k = jax.random.split(jax.random.PRNGKey(0), 6)
    inputs = (
        jax.random.normal(k[0], (Bz, L, E)),
        jnp.exp(jax.random.uniform(k[1], (Bz, L, E), minval=np.log(1e-3), maxval=np.log(1e-1))),
        -jnp.broadcast_to(jnp.arange(1.0, N + 1), (E, N)),
        jax.random.normal(k[2], (Bz, L, N)),
        jax.random.normal(k[3], (Bz, L, N)),
        jax.random.normal(k[4], (E,)),
    )
    cotangent = jax.random.normal(k[5], (Bz, L, E))
    fused = "fused" if jax.default_backend() == "gpu" else "fused_interpret"
    results = {}
    for scan in ("xla", fused):
        f = partial(batched_selective_scan, scan=scan, chunk_size=512 if L > 4096 else None)

        def run(*a):
            y, pull = jax.vjp(f, *a)
            return (y, *pull(cotangent))

        start = time.perf_counter()
        compiled = jax.jit(run).lower(*inputs).compile()
        compile_s = time.perf_counter() - start
        out = jax.block_until_ready(compiled(*inputs))
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            jax.block_until_ready(compiled(*inputs))
            times.append(time.perf_counter() - start)
        results[scan] = out
        print(f"{scan}: compile {compile_s:.1f} s, forward + backward median {np.median(times) * 1e3:.3f} ms", flush=True)
    names = ("y", "du", "ddt", "dA", "dB", "dC", "dD")
    worst = 0.0
    for name, a, b in zip(names, results[fused], results["xla"]):
        rel = float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
        worst = max(worst, rel)
        print(f"  {name}: max relative difference {rel:.2e}")
    print("agree" if worst < 1e-3 else "DISAGREE")
    return 0 if worst < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
