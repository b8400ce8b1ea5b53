"""Do the fused scan kernels compile and agree with the XLA routes on this machine's GPU?

    python scripts/check_fused_scan.py [--mamba B,L,E,N] [--s5 B,L,P] [--s4d B,L,H,N] [--steps 10]

Mamba's selective scan (ssm/mamba_kernel.py), S5's time-invariant scan (ssm/lti_kernel.py) and
S4D's bidirectional convolution as a recurrence (ssm/diagonal_scan.py, against the FFT route):
compiles forward + backward of the XLA route and of the kernel at one shape each, reports the
largest relative difference of the outputs and of each gradient, and the median time of each
(forward + backward, one direction). Exits 1 if any pair disagrees by more than 1e-3 relative
(float32). Off a GPU the kernels run interpreted (slow; use small shapes).
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import jax.numpy as jnp
import numpy as np

from bench_levers import (  # noqa: E402 (scripts/, beside this file)
    mamba_scan_inputs,
    mamba_scan_variants,
    s4d_conv_inputs,
    s4d_conv_variants,
    s4d_scan,
)

from ssm_lra.ssm.diagonal_scan import GRADS
from ssm_lra.ssm.lti_kernel import lti_scan_fused
from ssm_lra.ssm.scan import lti_scan

FUSED = "fused" if jax.default_backend() == "gpu" else "fused_interpret"


def mamba_case(Bz, L, E, N):
    """(names of the results, {route: function}, inputs, cotangent): bench_levers' mamba-scan lever."""
    inputs, cotangent = mamba_scan_inputs(Bz, L, E, N)
    return ("y", "du", "ddt", "dA", "dB", "dC", "dD"), mamba_scan_variants(Bz, L, E, N), inputs, cotangent


def s5_case(Bz, L, P):
    """S5's scan in both representations: complex for `scan.lti_scan`, parts for the kernel."""
    k = jax.random.split(jax.random.PRNGKey(1), 5)
    radius = jax.random.uniform(k[0], (P,), minval=0.9, maxval=0.9999)
    angle = jax.random.uniform(k[1], (P,), maxval=3.0)
    inputs = (radius * jnp.cos(angle), radius * jnp.sin(angle),
              jax.random.normal(k[2], (Bz, L, P)), jax.random.normal(k[3], (Bz, L, P)))

    def xla(lr, li, br, bi):
        x = lti_scan(jax.lax.complex(lr, li), jax.lax.complex(br, bi), axis=1)
        return x.real, x.imag

    routes = {"xla (lti)": xla, FUSED: partial(lti_scan_fused, interpret=FUSED == "fused_interpret")}
    cotangent = tuple(jax.random.normal(key, (Bz, L, P)) for key in jax.random.split(k[4]))
    return ("x_re", "x_im", "dlam_re", "dlam_im", "db_re", "db_im"), routes, inputs, cotangent


def s4d_case(Bz, L, H, N):
    """bench_levers' s4d-conv lever: the FFT route (what `conv=fft` runs) against the recurrence
    kernel (`conv=scan`) with each of its backward passes, from S4D's parameters."""
    inputs, cotangent = s4d_conv_inputs(Bz, L, H, N)
    suffix = "" if FUSED == "fused" else " (interpreted)"
    routes = {"fft": s4d_conv_variants(Bz, L, H, N)["kernel + fft"], **{f"scan, {g} grads{suffix}": s4d_scan(g) for g in GRADS}}
    return ("y", "du", "dlog_dt", "dlog_A_real", "dA_imag", "dB", "dC"), routes, inputs, cotangent


def compare(title, names, routes, inputs, cotangent, steps) -> float:
    print(title, flush=True)
    results = {}
    for route, f in routes.items():

        def run(*a):
            y, pull = jax.vjp(f, *a)
            return (*jax.tree.leaves(y), *pull(cotangent))

        start = time.perf_counter()
        compiled = jax.jit(run).lower(*inputs).compile()
        compile_s = time.perf_counter() - start
        out = jax.block_until_ready(compiled(*inputs))
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            jax.block_until_ready(compiled(*inputs))
            times.append(time.perf_counter() - start)
        results[route] = out
        print(f"  {route}: compile {compile_s:.1f} s, forward + backward median {np.median(times) * 1e3:.3f} ms", flush=True)
    first, *others = routes
    worst = 0.0
    for route in others:  # each against the first
        print(f"  {route} against {first}:")
        for name, a, b in zip(names, results[route], results[first]):
            rel = float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
            worst = max(worst, rel)
            print(f"    {name}: max relative difference {rel:.2e}")
    print("  agree" if worst < 1e-3 else "  DISAGREE", flush=True)
    return worst


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mamba", default="4,2048,224,16", help="B,L,E,N (default 4,2048,224,16)")
    p.add_argument("--s5", default="8,16384,256", help="B,L,P (default 8,16384,256)")
    p.add_argument("--s4d", default="64,1024,256,64", help="B,L,H,N (default 64,1024,256,64: Pathfinder)")
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args(argv)
    worst = 0.0
    cases = (
        ("Mamba selective scan", mamba_case, args.mamba),
        ("S5 time-invariant scan", s5_case, args.s5),
        ("S4D convolution as a recurrence", s4d_case, args.s4d),
    )
    for title, case, shape in cases:
        dims = tuple(map(int, shape.split(",")))
        try:
            worst = max(worst, compare(f"{title} {dims}", *case(*dims), args.steps))
        except Exception as e:  # a kernel that does not compile: say so and check the other one
            print(f"  FAILED: {type(e).__name__}: {str(e)[:2000]}", flush=True)
            worst = float("inf")
    return 0 if worst < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
