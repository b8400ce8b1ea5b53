"""grain input pipeline: seeded per-epoch order, one batch read and vectorized padding per batch, prefetch.

Every batch has the same shape, so the jitted steps compile once: training drops the last partial
batch (as the reference code bases do), evaluation pads it with examples of weight 0 so that
every example is counted exactly once. An epoch's order depends only on (seed, epoch), and an
epoch can be started at any batch, which is all that exact resume needs.
"""

from __future__ import annotations

import functools
from typing import Iterator, Sequence

import grain
import numpy as np

from ssm_lra.data.tasks import TaskSpec


def pad_sequences(
    sequences: Sequence, seq_len: int, tokens: bool, scale: float = 1.0, offset: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Truncate or zero-pad each sequence to `seq_len`: (inputs, mask of the real positions), stacked.

    Tokens become int32 ids (stored value + `offset` at real positions; padding stays 0). Real-valued
    inputs are stored compactly (e.g. uint8 pixels) and become float32 times `scale`, (n, seq_len, C).
    """
    sequences = [np.asarray(x) for x in sequences]
    lengths = np.array([min(len(x), seq_len) for x in sequences], np.int64)
    if tokens:
        inputs = np.zeros((len(sequences), seq_len), np.int32)
    else:
        channels = sequences[0].reshape(len(sequences[0]), -1).shape[1] if sequences else 1
        inputs = np.zeros((len(sequences), seq_len, channels), np.float32)
    for row, x, n in zip(inputs, sequences, lengths):
        row[:n] = x[:n].reshape(row[:n].shape)
    mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.float32)
    if tokens:
        inputs += np.int32(offset) * mask.astype(np.int32)
    else:
        inputs *= np.float32(scale)
    return inputs, mask


def collate(
    examples: Sequence[dict], seq_len: int, tokens: bool, scale: float = 1.0, offset: int = 0, dual: bool = False
) -> dict:
    """Examples as one fixed-shape batch: inputs (n, L) or (n, L, C), mask (n, L), label, weight 1.

    `dual` (two documents per example, stored as "inputs1" and "inputs2"): inputs (n, 2, L[, C]) and
    mask (n, 2, L), each document truncated / padded on its own.
    """
    if dual:
        pairs = [pad_sequences([ex[k] for ex in examples], seq_len, tokens, scale, offset) for k in ("inputs1", "inputs2")]
        inputs, mask = np.stack([p[0] for p in pairs], axis=1), np.stack([p[1] for p in pairs], axis=1)
    else:
        inputs, mask = pad_sequences([ex["inputs"] for ex in examples], seq_len, tokens, scale, offset)
    label = np.array([ex["label"] for ex in examples], np.int32)
    return {"inputs": inputs, "mask": mask, "label": label, "weight": np.ones(len(examples), np.float32)}


def pad_example(example: dict, seq_len: int, tokens: bool, scale: float = 1.0, offset: int = 0, dual: bool = False) -> dict:
    """One example as fixed-shape arrays (`collate` of a batch of one, without the batch axis)."""
    return {key: value[0] for key, value in collate([example], seq_len, tokens, scale, offset, dual).items()}


def read_examples(source: Sequence, indices: np.ndarray) -> list:
    """source[i] for each index, through the source's batch read where it has one (TFDS's data sources)."""
    indices = [int(i) for i in indices]
    getitems = getattr(source, "__getitems__", None)
    return list(getitems(indices)) if getitems is not None else [source[i] for i in indices]


def num_batches(num_examples: int, batch_size: int, train: bool) -> int:
    return num_examples // batch_size if train else -(-num_examples // batch_size)


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def epoch_order(num_examples: int, train: bool, seed: int, epoch: int) -> np.ndarray:
    """The order an epoch reads the examples in: a permutation seeded by (seed, epoch) for training."""
    if not train:
        return np.arange(num_examples)
    return np.random.default_rng(epoch_seed(seed, epoch)).permutation(num_examples)


def batches(
    source: Sequence,
    spec: TaskSpec,
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    epoch: int = 0,
    start: int = 0,
    limit: int | None = None,
    prefetch: int = 4,
    threads: int = 2,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict]:
    """The batches of one epoch, from batch index `start`, at most `limit` of them.

    Each batch is read and padded as a whole (one batch read from the source, vectorized padding):
    per-example Python work would cost more host time than a step of the smaller models, and the
    pipeline's threads would take the interpreter lock from the loop that feeds the device. A short
    final evaluation batch is filled with copies of the last example, weighted 0. With several
    processes (multi-host), each yields only its contiguous 1/process_count share of the rows of
    every batch, and reads only those examples.
    """
    from ssm_lra.engine.distributed import host_rows

    n = len(source)
    order = epoch_order(n, train, seed, epoch)
    count = num_batches(n, batch_size, train)
    rows = host_rows(count * batch_size, batch_size, process_index, process_count).reshape(count, -1)
    pad = functools.partial(
        collate, seq_len=spec.seq_len, tokens=spec.tokens, scale=spec.input_scale, offset=spec.token_offset,
        dual=spec.dual,
    )

    def read_batch(index: int) -> dict:
        positions = rows[index]
        batch = pad(read_examples(source, order[np.minimum(positions, n - 1)]))
        batch["weight"] = (positions < n).astype(np.float32)
        return batch

    stop = count if limit is None else min(count, limit)
    ds = grain.MapDataset.range(start, stop).map(read_batch)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)))


def prefetch_to_device(iterator: Iterator[dict], size: int = 2, sharding=None) -> Iterator[dict]:
    """Keep `size` batches already on their way to the devices while the current one is used.

    The copies are asynchronous, so the host-to-device transfer of the next batches overlaps the
    running step instead of sitting in front of it. With a `sharding` (the data-parallel batch
    sharding), each process's rows become one global array split over all devices.
    """
    import collections
    import itertools

    import jax

    queue: collections.deque = collections.deque()

    def put(batch):
        if sharding is None:
            return jax.device_put(batch)
        from ssm_lra.engine.distributed import to_global

        return to_global(batch, sharding)

    def enqueue(n: int) -> None:
        for batch in itertools.islice(iterator, n):
            queue.append(put(batch))

    enqueue(size)
    while queue:
        yield queue.popleft()
        enqueue(1)
