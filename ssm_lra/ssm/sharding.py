"""Data parallelism inside the layers: operations that XLA's partitioner would run on the whole
batch on every device, made to run on each device's own rows."""

from __future__ import annotations

import jax

__all__ = ["batch_parallel"]


def batch_parallel(fn, rule: str):
    """`fn` run by each device on its own rows of the batch, under the mesh the caller set with
    `jax.set_mesh` (the training engine sets its data mesh). XLA's partitioner cannot see into a
    Pallas call, and it does not split an FFT along its untransformed axes either
    (openxla/xla#24, jax-ml/jax#15680): without this it gathers a batch-sharded input onto every
    device and runs the whole batch everywhere. Without a mesh of several devices, or with a
    batch that does not split evenly over it, `fn` runs as it is.

    A `shard_map`, not a `custom_partitioning`: the latter keeps a Python callback in the compiled
    program, which changes its compilation-cache key in every process, so multi-device runs never
    found their compiled steps in the cache.

    rule: fn's arrays, factor "b" the batch (leading in every batched operand and in every
    result), e.g. "b l e, e n -> b l e"; every other factor is kept whole on each device, so the
    per-device call sees full lengths, channels and states. fn: arrays only (bind anything static
    first).
    """
    from jax.sharding import PartitionSpec as P

    inputs, outputs = (side.split(",") for side in rule.split("->"))
    batched = [operand.split()[0] == "b" for operand in inputs]
    if not all(operand.split()[0] == "b" for operand in outputs):
        raise ValueError(f"every result of a batch_parallel rule must lead with the batch: {rule!r}")

    def run(*args):
        mesh = jax.sharding.get_abstract_mesh()
        rows = next(a.shape[0] for a, b in zip(args, batched) if b)
        if mesh.empty or mesh.size == 1 or rows % mesh.size:
            return fn(*args)
        rows_spec = P(mesh.axis_names)
        in_specs = tuple(rows_spec if b else P() for b in batched)
        # Pallas calls carry no varying-across-devices types, so that check stays off.
        return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=rows_spec, check_vma=False)(*args)

    return run
