"""What the Pallas (Triton) kernels of the SSMs share: whether they can run here, their compiler
settings, and the padding that fits arrays to their blocks."""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp


def fused_scan_available() -> bool:
    """Whether the compiled (not interpreted) kernels can run here: Pallas' Triton backend, on a GPU."""
    return jax.default_backend() == "gpu" and importlib.util.find_spec("jax.experimental.pallas") is not None


def resolve_scan(scan: str, fallback: str, kernel_pays: bool = True) -> str:
    """The scan a mixer runs. "auto" is the fused kernel where it compiles (a GPU) and pays at the
    mixer's shapes (`kernel_pays`, the mixer's judgement: measured on an H200, results/bench/NOTES.md
    levers 9 and 10), and `fallback` elsewhere (CPU, TPU); any other name is kept as given."""
    if scan != "auto":
        return scan
    return "fused" if kernel_pays and fused_scan_available() else fallback


def check_fused_scan_runs(fallback: str, option: str = "scan", value: str = "fused") -> None:
    """A ValueError naming `fallback` if `option` `value` (a Pallas GPU kernel) cannot run here (a
    mixer's option check)."""
    if not fused_scan_available():
        raise ValueError(
            f"{option} '{value}' runs a Pallas (Triton) GPU kernel, and JAX's backend here is "
            f"{jax.default_backend()!r}: use {option} '{fallback}' (or '{value}_interpret', slow, to check it)"
        )


def compiler_params(interpret: bool, num_warps: int):
    """Triton settings (none when interpreted). One stage: the kernels' loops are sequential
    recurrences, whose loads they issue a chunk ahead themselves."""
    if interpret:
        return None
    from jax.experimental.pallas import triton as plgpu

    # TritonCompilerParams is the older name of the same settings.
    params = getattr(plgpu, "CompilerParams", None) or getattr(plgpu, "TritonCompilerParams")
    return params(num_warps=num_warps, num_stages=1)


def pad_axis(x, axis: int, size: int):
    """x with zeros appended along `axis` up to `size`."""
    extra = size - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths)


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def next_power_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()
