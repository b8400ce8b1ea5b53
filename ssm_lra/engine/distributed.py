"""Data parallelism over every visible device, on one host or many.

One mesh axis, "data", spans all devices (of all processes). Batches are sharded along it,
parameters and optimizer state are replicated, and jit inserts the gradient all-reduce; batch
norm statistics are likewise reduced over the global batch, so a run on N devices computes what
a run on one device computes (up to float summation order). Each process reads only its own rows
of every global batch (`host_rows`).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ssm_lra.errors import ConfigError

AXIS = "data"


def slurm_process_count(environ=os.environ) -> int:
    return int(environ.get("SLURM_NTASKS", "1") or 1)


def initialize_multihost(mode, environ=os.environ) -> bool:
    """Join the other processes of a multi-host job (trainer.multihost: auto | true | false).

    auto: when SLURM started more than one task for the job (jax reads the coordinator address,
    process count and index from the SLURM environment). Returns whether it initialized.
    """
    if mode == "auto":
        mode = slurm_process_count(environ) > 1
    if not mode:
        return False
    if jax.distributed.is_initialized():
        return True
    jax.distributed.initialize()
    return True


def data_mesh(devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    return Mesh(np.array(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(AXIS))


def check_batch_sizes(batch_size: int, eval_batch_size: int, accumulate: int, devices: int, processes: int) -> None:
    """Every device must get whole rows of every (micro-)batch; say how to fix it if not."""
    if accumulate < 1:
        raise ConfigError(f"trainer.accumulate_grad_batches must be >= 1, got {accumulate}.")
    if batch_size % accumulate:
        raise ConfigError(
            f"trainer.batch_size={batch_size} is not divisible by trainer.accumulate_grad_batches={accumulate}."
        )
    micro = batch_size // accumulate
    if micro % devices:
        raise ConfigError(
            f"each micro-batch of {micro} (trainer.batch_size={batch_size} / accumulate_grad_batches={accumulate}) "
            f"cannot be split evenly over {devices} devices: choose a batch size that is a multiple of "
            f"{devices * accumulate}, or limit the visible devices (e.g. CUDA_VISIBLE_DEVICES)."
        )
    if eval_batch_size % devices:
        raise ConfigError(
            f"trainer.eval_batch_size={eval_batch_size} cannot be split evenly over {devices} devices: "
            f"choose a multiple of {devices}."
        )
    if batch_size % processes or eval_batch_size % processes:
        raise ConfigError(f"the batch sizes must be divisible by the number of processes ({processes}).")


def host_rows(num_rows: int, batch_size: int, process_index: int, process_count: int) -> np.ndarray:
    """Positions (in the epoch's order) that one process reads: its contiguous share of every
    global batch. Over all processes they cover each batch once, in order."""
    local = batch_size // process_count
    batches = -(-num_rows // batch_size)
    starts = np.arange(batches)[:, None] * batch_size + process_index * local
    return (starts + np.arange(local)[None, :]).reshape(-1)


def to_global(local_batch: dict, sharding: NamedSharding) -> dict:
    """This process's rows of a batch -> one global array per key, sharded along the batch axis."""
    return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
