"""Data parallelism inside the layers: operations that XLA's partitioner would run on the whole
batch on every device, made to run on each device's own rows."""

from __future__ import annotations

import jax

__all__ = ["batch_parallel"]


def batch_parallel(fn, rule: str):
    """`fn` made splittable along its batch by XLA's partitioner, each device running it on its
    own share. The partitioner cannot see into a Pallas call, and it does not split an FFT along
    its untransformed axes either (openxla/xla#24, jax-ml/jax#15680): without this it gathers a
    batch-sharded input onto every device and runs the whole batch everywhere. Not
    differentiable by itself: callers wrap it in a custom_vjp.

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
