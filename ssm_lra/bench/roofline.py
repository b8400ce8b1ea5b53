"""Roofline arithmetic (pure), XLA cost-analysis reading, and the device's measured ceilings.

The roofline of a piece of work is the larger of two floors: its floating-point operations at the
device's matrix rate, and its bytes at the device's memory bandwidth. No implementation runs much
faster; measured time over the roofline says how far a kernel is from its ceiling.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------------------------
# Pure functions.


def summarize_times(times_s: Sequence[float]) -> dict:
    """Median, p10, p90, mean, min, max and count of a list of durations in seconds."""
    if len(times_s) == 0:
        raise ValueError("no timings to summarize")
    t = np.asarray(times_s, dtype=np.float64)
    return {
        "median": float(np.median(t)),
        "p10": float(np.percentile(t, 10)),
        "p90": float(np.percentile(t, 90)),
        "mean": float(t.mean()),
        "min": float(t.min()),
        "max": float(t.max()),
        "n": int(t.size),
    }


def roofline(flops: float, bytes_moved: float, peak_flops_per_s: float, bandwidth_bytes_per_s: float) -> dict:
    """The roofline time of `flops` operations and `bytes_moved` bytes on a device of the given rates.

    Returns compute_s = flops / peak, memory_s = bytes / bandwidth, time_s = the larger, bound =
    which of the two it is, and intensity = flops per byte (inf when no bytes move).
    """
    if peak_flops_per_s <= 0 or bandwidth_bytes_per_s <= 0:
        raise ValueError("peak rate and bandwidth must be positive")
    if flops < 0 or bytes_moved < 0:
        raise ValueError("flops and bytes must be non-negative")
    compute_s = flops / peak_flops_per_s
    memory_s = bytes_moved / bandwidth_bytes_per_s
    return {
        "compute_s": compute_s,
        "memory_s": memory_s,
        "time_s": max(compute_s, memory_s),
        "bound": "compute" if compute_s >= memory_s else "memory",
        "intensity_flops_per_byte": flops / bytes_moved if bytes_moved else math.inf,
    }


def achieved_fraction(roofline_s: float, measured_s: float) -> float:
    """roofline / measured: 1.0 runs at the ceiling, 0.1 is ten times slower than it."""
    if measured_s <= 0:
        raise ValueError("measured time must be positive")
    return roofline_s / measured_s


def compulsory_layer_bytes(batch: int, seq_len: int, d_model: int, num_params: int, itemsize: int = 4) -> int:
    """The fewest bytes one layer's forward + backward must move through device memory.

    Read once: the input x and the output's cotangent (B, L, H), the mask (B, L), the parameters;
    written once: the output y and the input's gradient (B, L, H), the parameters' gradients.
    Everything else (activations kept for the backward pass, FFT buffers, scan states) is assumed
    to stay on chip, which no real implementation manages: this is an unattainable floor, useful
    to see how much traffic the compiled layer adds on top of it.
    """
    activations = batch * seq_len * d_model
    return itemsize * (4 * activations + batch * seq_len + 2 * num_params)


def read_cost_analysis(cost: Any) -> dict:
    """flops, bytes accessed and transcendentals from `Compiled.cost_analysis()`.

    Older jax returns a list with one dict per computation (we sum them), newer a dict; keys that
    are missing come back as None rather than 0, so that "not reported" is never read as "free".
    """
    if cost is None:
        entries: list[Mapping] = []
    elif isinstance(cost, Mapping):
        entries = [cost]
    else:
        entries = [c for c in cost if c]

    def total(key: str) -> float | None:
        values = [float(e[key]) for e in entries if key in e]
        return sum(values) if values else None

    return {
        "flops": total("flops"),
        "bytes_accessed": total("bytes accessed"),
        "transcendentals": total("transcendentals"),
    }


# ----------------------------------------------------------------------------------------------
# Measured ceilings (need jax and a device).


def _median_time(fn: Callable[[], Any], warmup: int, reps: int) -> float:
    import jax

    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure_bandwidth(num_bytes: int, reps: int = 20) -> dict:
    """Device memory bandwidth from y = x * c over a float32 array (STREAM's "scale"): each call
    reads and writes `num_bytes`, so bandwidth = 2 * num_bytes / median time. Random data, not
    zeros, and an array far larger than the cache when num_bytes is (L2 on an H200: 60 MB)."""
    import jax
    import jax.numpy as jnp

    n = num_bytes // 4
    x = jax.random.uniform(jax.random.PRNGKey(0), (n,), jnp.float32)
    scale = jax.jit(lambda v: v * jnp.float32(1.0001))
    t = _median_time(lambda: scale(x), warmup=3, reps=reps)
    return {"bytes_per_s": 2 * n * 4 / t, "array_bytes": n * 4, "median_s": t}


def measure_matmul(n: int, dtype: str, precision: str | None, reps: int = 10) -> dict:
    """FLOP/s of an n x n x n matrix product of random `dtype` matrices (2 n^3 operations).

    precision None is jax's default, which is what the model's float32 dense layers get (on Hopper
    XLA may run float32 products on the tensor cores in TF32); "highest" is true float32.
    """
    import jax
    import jax.numpy as jnp

    ka, kb = jax.random.split(jax.random.PRNGKey(1))
    a = jax.random.normal(ka, (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(kb, (n, n), jnp.float32).astype(dtype)
    matmul = jax.jit(lambda x, y: jnp.matmul(x, y, precision=precision))
    t = _median_time(lambda: matmul(a, b), warmup=3, reps=reps)
    return {"flops_per_s": 2 * n**3 / t, "n": n, "dtype": dtype, "precision": precision or "default", "median_s": t}


def measure_ceilings(small: bool) -> dict:
    """Bandwidth and matrix rates of the first device. `small` (CPU, tests): sizes that take
    milliseconds; otherwise copies of 1 and 4 GiB (the best of the two is the ceiling: at 4 GiB a
    call's launch and wait weigh four times less) and 8192^3 products, sizes that fill an H200."""
    copy_sizes = [16 * 2**20, 64 * 2**20] if small else [2**30, 4 * 2**30]
    n = 256 if small else 8192
    copies = [measure_bandwidth(size) for size in copy_sizes]
    return {
        "bandwidth": max(copies, key=lambda c: c["bytes_per_s"]),
        "bandwidth_by_size": copies,
        "matmul_f32_default": measure_matmul(n, "float32", None),
        "matmul_f32_highest": measure_matmul(n, "float32", "highest"),
        "matmul_bf16": measure_matmul(n, "bfloat16", None),
    }
