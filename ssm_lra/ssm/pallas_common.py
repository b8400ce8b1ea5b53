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


def check_fused_scan_runs(fallback: str) -> None:
    """A ValueError naming `fallback` if scan "fused" cannot run here (a mixer's option check)."""
    if not fused_scan_available():
        raise ValueError(
            f"scan 'fused' runs a Pallas (Triton) GPU kernel, and JAX's backend here is "
            f"{jax.default_backend()!r}: use scan '{fallback}' (or 'fused_interpret', slow, to check it)"
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


def batch_parallel(fn, rule: str):
    """`fn` made splittable along its batch by XLA's partitioner, each device running it on its
    own share: a Pallas call is otherwise opaque to the partitioner, which would gather a
    batch-sharded input onto every device and run the whole batch everywhere.

    rule: the Shardy sharding rule of fn's arrays, factor "b" the batch (leading in every batched
    operand and in every result), e.g. "b l e, e n -> b l e": the other factors are kept whole
    (replicated), so the per-device call sees full lengths, channels and states. fn: arrays only
    (bind anything static first).
    """
    from jax.experimental.custom_partitioning import custom_partitioning
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    inputs = rule.split("->")[0].split(",")
    batched = [operand.split()[0] == "b" for operand in inputs]
    # Every factor but the batch, in the order the rule first names them (Shardy wants them so).
    factors = rule.replace(",", " ").replace("->", " ").split()
    others = [f for i, f in enumerate(factors) if f != "b" and f not in factors[:i]]

    def batch_axis(arg_shapes):
        for shape, is_batched in zip(arg_shapes, batched):
            sharding = getattr(shape, "sharding", None)
            if is_batched and isinstance(sharding, NamedSharding) and len(sharding.spec):
                return sharding.spec[0]
        return None

    def shardings(mesh, arg_shapes, result_shape):
        axis = batch_axis(arg_shapes)
        args = tuple(NamedSharding(mesh, P(axis) if b else P()) for b in batched)
        results = jax.tree.map(lambda _: NamedSharding(mesh, P(axis)), result_shape)
        return args, results

    def infer_sharding_from_operands(mesh, arg_shapes, result_shape):
        return shardings(mesh, arg_shapes, result_shape)[1]

    def partition(mesh, arg_shapes, result_shape):
        args, results = shardings(mesh, arg_shapes, result_shape)
        return mesh, fn, results, args

    wrapped = custom_partitioning(fn)
    wrapped.def_partition(
        partition=partition,
        infer_sharding_from_operands=infer_sharding_from_operands,
        sharding_rule=rule,
        need_replication_factors=tuple(others),
    )
    return wrapped
