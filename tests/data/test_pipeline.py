"""The grain pipeline: padding, masks, per-epoch shuffling, exact coverage in evaluation."""

import numpy as np

from ssm_lra.data.pipeline import batches, collate, num_batches
from ssm_lra.data.tasks import TaskSpec

SPEC = TaskSpec("toy", seq_len=6, num_classes=10, vocab_size=20)


def pad_example(example, seq_len, tokens, **options):
    """One example as `collate` makes it in a batch of one, without the batch axis."""
    return {key: value[0] for key, value in collate([example], seq_len, tokens, **options).items()}


def source(n=23):
    rng = np.random.default_rng(0)
    return [{"inputs": np.arange(1, 1 + rng.integers(1, 9), dtype=np.int32) + i, "label": i % 10} for i in range(n)]


def test_pad_and_truncate():
    short = pad_example({"inputs": np.array([5, 6], np.int32), "label": 3}, 6, tokens=True)
    np.testing.assert_array_equal(short["inputs"], [5, 6, 0, 0, 0, 0])
    np.testing.assert_array_equal(short["mask"], [1, 1, 0, 0, 0, 0])
    long = pad_example({"inputs": np.arange(10, dtype=np.int32), "label": 1}, 6, tokens=True)
    np.testing.assert_array_equal(long["inputs"], np.arange(6))
    assert long["mask"].sum() == 6
    real = pad_example({"inputs": np.ones((3, 1), np.float32) * 0.5, "label": 0}, 4, tokens=False)
    assert real["inputs"].shape == (4, 1) and real["inputs"].dtype == np.float32
    np.testing.assert_array_equal(real["mask"], [1, 1, 1, 0])


def test_eval_counts_every_example_once():
    src = source(23)
    seen = []
    for batch in batches(src, SPEC, 5, train=False):
        assert batch["inputs"].shape == (5, 6)
        seen += [int(x) for x, w in zip(batch["inputs"][:, 0], batch["weight"]) if w > 0]
    assert sorted(seen) == sorted(int(ex["inputs"][0]) for ex in src)
    assert num_batches(23, 5, train=False) == 5


def first_tokens(it):
    return [tuple(b["inputs"][:, 0]) for b in it]


def test_train_shuffle_is_seeded_per_epoch_and_resumable():
    src = source(40)
    epoch0 = first_tokens(batches(src, SPEC, 4, train=True, seed=7, epoch=0))
    assert len(epoch0) == 10 == num_batches(40, 4, train=True)
    assert epoch0 == first_tokens(batches(src, SPEC, 4, train=True, seed=7, epoch=0))
    assert epoch0 != first_tokens(batches(src, SPEC, 4, train=True, seed=7, epoch=1))
    assert epoch0 != first_tokens(batches(src, SPEC, 4, train=True, seed=8, epoch=0))
    # Starting at batch 3 gives exactly the tail of the same epoch: what resume relies on.
    assert first_tokens(batches(src, SPEC, 4, train=True, seed=7, epoch=0, start=3)) == epoch0[3:]
    assert first_tokens(batches(src, SPEC, 4, train=True, seed=7, epoch=0, start=3, limit=5)) == epoch0[3:5]
    # Each epoch is a permutation: every example exactly once (no partial batch here).
    assert sorted(t for b in epoch0 for t in b) == sorted(int(ex["inputs"][0]) for ex in src)


class BatchReadSource:
    """A source with a batch read (as TFDS's data sources have), counting how it is read."""

    def __init__(self, examples):
        self.examples, self.batch_reads, self.single_reads = examples, 0, 0

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        self.single_reads += 1
        return self.examples[i]

    def __getitems__(self, indices):
        self.batch_reads += 1
        return [self.examples[i] for i in indices]


def test_batches_read_the_source_a_batch_at_a_time_and_match_a_plain_source():
    src = source(23)
    counted = BatchReadSource(src)
    kwargs = dict(train=True, seed=3, epoch=2, threads=0, prefetch=0)
    via_batch_reads = list(batches(counted, SPEC, 4, **kwargs))
    assert counted.batch_reads == len(via_batch_reads) == num_batches(23, 4, train=True) and counted.single_reads == 0
    for a, b in zip(via_batch_reads, batches(src, SPEC, 4, **kwargs)):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_collate_equals_padding_each_example_by_hand():
    rng = np.random.default_rng(1)
    examples = [{"inputs": rng.integers(0, 255, rng.integers(1, 12)).astype(np.uint8), "label": i} for i in range(7)]
    batch = collate(examples, 8, tokens=True, offset=1)
    for row, ex in enumerate(examples):
        n = min(len(ex["inputs"]), 8)
        expected = np.zeros(8, np.int32)
        expected[:n] = ex["inputs"][:n].astype(np.int32) + 1
        np.testing.assert_array_equal(batch["inputs"][row], expected)
        np.testing.assert_array_equal(batch["mask"][row], np.arange(8) < n)
    np.testing.assert_array_equal(batch["label"], np.arange(7))
    pixels = collate(examples, 8, tokens=False, scale=1 / 255)
    assert pixels["inputs"].shape == (7, 8, 1) and pixels["inputs"].dtype == np.float32
    first = examples[0]["inputs"]
    np.testing.assert_allclose(pixels["inputs"][0, : len(first), 0], first.astype(np.float32) / 255, rtol=1e-6)


def test_token_offset_shifts_real_positions_only():
    """Byte-level tasks store raw bytes; ids are byte + 1 and the padding stays 0."""
    out = pad_example({"inputs": np.array([0, 255, 7], np.uint8), "label": 1}, 5, tokens=True, offset=1)
    np.testing.assert_array_equal(out["inputs"], [1, 256, 8, 0, 0])
    assert out["inputs"].dtype == np.int32
    np.testing.assert_array_equal(out["mask"], [1, 1, 1, 0, 0])


def test_pairs_are_padded_per_document():
    example = {"inputs1": np.array([3, 4, 5], np.uint8), "inputs2": np.arange(9, dtype=np.uint8), "label": 1}
    out = pad_example(example, 6, tokens=True, offset=1, dual=True)
    np.testing.assert_array_equal(out["inputs"], [[4, 5, 6, 0, 0, 0], [1, 2, 3, 4, 5, 6]])
    np.testing.assert_array_equal(out["mask"], [[1, 1, 1, 0, 0, 0], [1] * 6])
    real = pad_example({**example, "inputs2": np.array([255], np.uint8)}, 4, tokens=False, scale=1 / 255, dual=True)
    assert real["inputs"].shape == (2, 4, 1) and real["mask"].shape == (2, 4)
    assert real["inputs"][1, 0, 0] == 1.0 and real["mask"][1].tolist() == [1, 0, 0, 0]


def test_pair_batches_have_a_pair_axis():
    spec = TaskSpec("pairs", seq_len=5, num_classes=2, vocab_size=257, token_offset=1, dual=True)
    src = [
        {"inputs1": np.full(i % 7, i, np.uint8), "inputs2": np.full(3, 200, np.uint8), "label": i % 2}
        for i in range(11)
    ]
    seen = 0
    for batch in batches(src, spec, 4, train=False):
        assert batch["inputs"].shape == (4, 2, 5) and batch["mask"].shape == (4, 2, 5) and batch["label"].shape == (4,)
        seen += int(batch["weight"].sum())
        assert np.all(batch["inputs"][:, 1, :3] == 201)
    assert seen == 11
    train = next(batches(src, spec, 4, train=True, seed=0))
    assert train["inputs"].shape == (4, 2, 5)


def test_prefetch_to_device_keeps_order_and_content():
    import jax

    from ssm_lra.data.pipeline import prefetch_to_device

    src = source(23)
    plain = list(batches(src, SPEC, 4, train=True, seed=3, epoch=1))
    fetched = list(prefetch_to_device(batches(src, SPEC, 4, train=True, seed=3, epoch=1), size=3))
    assert len(fetched) == len(plain) == 5
    for a, b in zip(plain, fetched):
        assert isinstance(b["inputs"], jax.Array)
        for key in a:
            np.testing.assert_array_equal(a[key], np.asarray(b[key]))
    assert list(prefetch_to_device(iter([]))) == []
