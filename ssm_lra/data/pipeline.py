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
from ssm_lra.errors import ConfigError


def pad_compact(sequences: Sequence, seq_len: int, tokens: bool) -> tuple[np.ndarray, np.ndarray]:
    """Truncate or zero-pad each sequence to `seq_len`, keeping the stored dtype: (padded, lengths).
    padded is (n, seq_len) for tokens, (n, seq_len, C) for real-valued inputs."""
    sequences = [np.asarray(x) for x in sequences]
    lengths = np.array([min(len(x), seq_len) for x in sequences], np.int64)
    dtype = np.result_type(*sequences) if sequences else np.float32
    if tokens:
        padded = np.zeros((len(sequences), seq_len), dtype)
    else:
        channels = sequences[0].reshape(len(sequences[0]), -1).shape[1] if sequences else 1
        padded = np.zeros((len(sequences), seq_len, channels), dtype)
    for row, x, n in zip(padded, sequences, lengths):
        row[:n] = x[:n].reshape(row[:n].shape)
    return padded, lengths


def finish_inputs(
    padded: np.ndarray, lengths: np.ndarray, seq_len: int, tokens: bool, scale: float = 1.0, offset: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Padded stored values as model inputs, with the mask of the real positions.

    Tokens become int32 ids (stored value + `offset` at real positions; padding stays 0). Real-valued
    inputs are stored compactly (e.g. uint8 pixels) and become float32 times `scale`.
    """
    mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.float32)
    if tokens:
        return padded.astype(np.int32) + np.int32(offset) * mask.astype(np.int32), mask
    return padded.astype(np.float32) * np.float32(scale), mask


def input_keys(dual: bool) -> tuple[str, ...]:
    return ("inputs1", "inputs2") if dual else ("inputs",)


def finish_batch(parts: Sequence[tuple[np.ndarray, np.ndarray]], label: np.ndarray, seq_len: int, tokens: bool,
                 scale: float = 1.0, offset: int = 0, dual: bool = False) -> dict:
    """One batch from the padded stored values and lengths of each document of `input_keys(dual)`."""
    finished = [finish_inputs(padded, lengths, seq_len, tokens, scale, offset) for padded, lengths in parts]
    if dual:
        inputs, mask = np.stack([f[0] for f in finished], axis=1), np.stack([f[1] for f in finished], axis=1)
    else:
        inputs, mask = finished[0]
    return {"inputs": inputs, "mask": mask, "label": label, "weight": np.ones(len(label), np.float32)}


def collate(
    examples: Sequence[dict], seq_len: int, tokens: bool, scale: float = 1.0, offset: int = 0, dual: bool = False
) -> dict:
    """Examples as one fixed-shape batch: inputs (n, L) or (n, L, C), mask (n, L), label, weight 1.

    `dual` (two documents per example, stored as "inputs1" and "inputs2"): inputs (n, 2, L[, C]) and
    mask (n, 2, L), each document truncated / padded on its own.
    """
    parts = [pad_compact([ex[key] for ex in examples], seq_len, tokens) for key in input_keys(dual)]
    label = np.array([ex["label"] for ex in examples], np.int32)
    return finish_batch(parts, label, seq_len, tokens, scale, offset, dual)


def read_examples(source: Sequence, indices: np.ndarray) -> list:
    """source[i] for each index, through the source's batch read where it has one (TFDS's data sources)."""
    indices = [int(i) for i in indices]
    getitems = getattr(source, "__getitems__", None)
    return list(getitems(indices)) if getitems is not None else [source[i] for i in indices]


def smallest_dtype(values: np.ndarray) -> np.ndarray:
    """Non-negative integers in the narrowest unsigned type that holds them (token ids, pixels)."""
    if values.dtype.kind not in "iu" or values.size == 0 or values.min() < 0:
        return values
    for dtype in (np.uint8, np.uint16, np.uint32):
        if values.max() <= np.iinfo(dtype).max:
            return values.astype(dtype, copy=False)
    return values


class InMemorySplit:
    """A split read once and held in memory as padded stored values (uint8 pixels, small token ids)
    and lengths: a batch is then rows picked from arrays and `finish_batch`, with no per-example
    decoding. TFDS's data sources decode every record in Python, which holds the interpreter lock:
    on an H200 host that fed S4D Pathfinder about 6,100 sequences/s, short of its bfloat16 steps
    (results/bench/NOTES.md). Same batches, same order as reading the source itself.
    """

    def __init__(self, source: Sequence, seq_len: int, tokens: bool, dual: bool, *, count: int | None = None,
                 chunk: int = 4096, progress=None):
        parts: dict[str, list] = {key: [] for key in input_keys(dual)}
        labels = []
        count = len(source) if count is None else count  # the first `count` examples only
        for start in range(0, count, chunk):
            examples = read_examples(source, np.arange(start, min(count, start + chunk)))
            for key, kept in parts.items():
                kept.append(pad_compact([ex[key] for ex in examples], seq_len, tokens))
            labels.append(np.array([ex["label"] for ex in examples], np.int32))
            if progress is not None:
                progress(len(examples))
        self.seq_len = seq_len
        self.padded = {key: smallest_dtype(np.concatenate([p for p, _ in kept])) for key, kept in parts.items()}
        self.lengths = {key: np.concatenate([n for _, n in kept]) for key, kept in parts.items()}
        self.labels = np.concatenate(labels) if labels else np.zeros(0, np.int32)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.padded.values()) + sum(a.nbytes for a in self.lengths.values())

    def batch(self, indices: np.ndarray, tokens: bool, scale: float = 1.0, offset: int = 0, dual: bool = False) -> dict:
        """The batch `collate` makes of these examples."""
        parts = [(self.padded[key][indices], self.lengths[key][indices]) for key in input_keys(dual)]
        return finish_batch(parts, self.labels[indices], self.seq_len, tokens, scale, offset, dual)


IN_MEMORY_BUDGET = 2 << 30  # data.in_memory=auto: the most bytes the held splits may take together
HELD_SPLITS = ("train", "validation")  # read every epoch / every evaluation; the test split once
IN_MEMORY_MODES = ("auto", True, False)


def in_memory_bytes(source: Sequence, spec: TaskSpec, sample: int = 64) -> int:
    """About the bytes `InMemorySplit` takes for this source, scaled up from its first examples."""
    n = len(source)
    if n == 0:
        return 0
    first = InMemorySplit(source, spec.seq_len, spec.tokens, spec.dual, count=min(n, sample))
    return first.nbytes * n // len(first)


def check_in_memory_mode(mode) -> None:
    if mode not in IN_MEMORY_MODES:
        raise ConfigError(f"data.in_memory={mode!r} is not one of auto, true, false.")


def splits_to_hold(
    splits: dict, spec: TaskSpec, mode, budget: int = IN_MEMORY_BUDGET, candidates: Sequence[str] = HELD_SPLITS
) -> list[str]:
    """Which of the `candidates` splits (by default those training reads many times: training and
    validation) to hold in memory (`InMemorySplit`), by data.in_memory: True, all of them; "auto",
    all of them if they take at most `budget` bytes together (Pathfinder, ListOps, Text, Image; not
    Path-X or Retrieval at full size); False, none."""
    check_in_memory_mode(mode)
    names = [name for name in candidates if name in splits and not isinstance(splits[name], InMemorySplit)]
    if mode is False or (mode == "auto" and sum(in_memory_bytes(splits[name], spec) for name in names) > budget):
        return []
    return names


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
    finishing = dict(tokens=spec.tokens, scale=spec.input_scale, offset=spec.token_offset, dual=spec.dual)
    if isinstance(source, InMemorySplit):
        pick = functools.partial(source.batch, **finishing)
    else:
        pick = lambda indices: collate(read_examples(source, indices), spec.seq_len, **finishing)  # noqa: E731

    def read_batch(index: int) -> dict:
        positions = rows[index]
        batch = pick(order[np.minimum(positions, n - 1)])
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
