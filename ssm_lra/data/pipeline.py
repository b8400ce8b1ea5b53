"""grain input pipeline: seeded per-epoch shuffling, padding masks, fixed-shape batches, prefetch.

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


def pad_sequence(x, seq_len: int, tokens: bool, scale: float = 1.0, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Truncate or zero-pad one sequence to `seq_len`: (inputs, mask of its real positions).

    Tokens become int32 ids (stored value + `offset` at real positions; padding stays 0). Real-valued
    inputs are stored compactly (e.g. uint8 pixels) and become float32 times `scale`, (seq_len, C).
    """
    x = np.asarray(x)
    n = min(len(x), seq_len)
    if tokens:
        inputs = np.zeros((seq_len,), np.int32)
        inputs[:n] = x[:n].astype(np.int32) + np.int32(offset)
    else:
        x = x.reshape(len(x), -1).astype(np.float32) * np.float32(scale)
        inputs = np.zeros((seq_len, x.shape[1]), np.float32)
        inputs[:n] = x[:n]
    mask = np.zeros((seq_len,), np.float32)
    mask[:n] = 1.0
    return inputs, mask


def pad_example(
    example: dict, seq_len: int, tokens: bool, scale: float = 1.0, offset: int = 0, dual: bool = False
) -> dict:
    """One example as fixed-shape arrays: inputs (L,) or (L, C), mask (L,), label, weight 1.

    `dual` (two documents per example, stored as "inputs1" and "inputs2"): inputs (2, L[, C]) and
    mask (2, L), each document truncated / padded on its own.
    """
    if dual:
        pairs = [pad_sequence(example[k], seq_len, tokens, scale, offset) for k in ("inputs1", "inputs2")]
        inputs, mask = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    else:
        inputs, mask = pad_sequence(example["inputs"], seq_len, tokens, scale, offset)
    return {"inputs": inputs, "mask": mask, "label": np.int32(example["label"]), "weight": np.float32(1.0)}


def pad_batch(batch: dict, batch_size: int) -> dict:
    """Fill a short final batch with copies of its first row, weighted 0."""
    n = len(batch["label"])
    if n == batch_size:
        return batch
    out = {}
    for key, value in batch.items():
        filler = np.repeat(value[:1], batch_size - n, axis=0)
        if key == "weight":
            filler = np.zeros_like(filler)
        out[key] = np.concatenate([value, filler], axis=0)
    return out


def num_batches(num_examples: int, batch_size: int, train: bool) -> int:
    return num_examples // batch_size if train else -(-num_examples // batch_size)


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


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

    With several processes (multi-host), each yields only its contiguous 1/process_count share of
    the rows of every batch, and reads only those examples.
    """
    ds = grain.MapDataset.source(source)
    if train:
        ds = ds.shuffle(seed=epoch_seed(seed, epoch))
    pad = functools.partial(
        pad_example,
        seq_len=spec.seq_len,
        tokens=spec.tokens,
        scale=spec.input_scale,
        offset=spec.token_offset,
        dual=spec.dual,
    )
    if process_count > 1:
        from ssm_lra.engine.distributed import host_rows

        n_rows = num_batches(len(ds), batch_size, train) * batch_size
        rows = _Rows(ds, host_rows(n_rows, batch_size, process_index, process_count))
        ds = grain.MapDataset.source(rows).map(lambda item: {**pad(item[0]), "weight": np.float32(item[1])})
        ds = ds.batch(batch_size // process_count)
    else:
        ds = ds.map(pad)
        ds = ds.batch(batch_size, drop_remainder=train)
        if not train:
            ds = ds.map(functools.partial(pad_batch, batch_size=batch_size))
    stop = len(ds) if limit is None else min(len(ds), limit)
    ds = ds.slice(slice(start, stop))
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)))


class _Rows:
    """Random access to chosen positions of a dataset: (example, weight); positions past its end
    (the padding of a final evaluation batch) repeat the last example with weight 0."""

    def __init__(self, ds, rows: np.ndarray):
        self.ds, self.rows = ds, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, j):
        i = int(self.rows[j])
        return self.ds[min(i, len(self.ds) - 1)], float(i < len(self.ds))


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
