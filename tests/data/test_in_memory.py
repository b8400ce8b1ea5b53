"""Splits held in memory (data.in_memory): the same batches as reading the source, in less space."""

import numpy as np
import pytest

from ssm_lra.data.loading import load_task_data
from ssm_lra.data.pipeline import (
    InMemorySplit,
    batches,
    in_memory_bytes,
    smallest_dtype,
    splits_to_hold,
)
from ssm_lra.data.tasks import TaskSpec
from ssm_lra.errors import ConfigError
from tests.data.test_prepare import ROWS, write_split_files


def token_source(n, rng):
    # Some sequences longer than the task's length (truncated), some shorter (padded).
    return [{"inputs": rng.integers(0, 300, rng.integers(1, 14)).astype(np.int64), "label": int(rng.integers(10))}
            for _ in range(n)]


def pixel_source(n, rng):
    return [{"inputs": rng.integers(0, 256, (rng.integers(1, 14), 1)).astype(np.uint8), "label": int(rng.integers(2))}
            for _ in range(n)]


def pair_source(n, rng):
    return [{"inputs1": rng.integers(0, 256, rng.integers(1, 14)).astype(np.uint8),
             "inputs2": rng.integers(0, 256, rng.integers(1, 14)).astype(np.uint8), "label": int(rng.integers(2))}
            for _ in range(n)]


CASES = {
    "tokens": (token_source, TaskSpec("tok", seq_len=10, num_classes=10, vocab_size=301, token_offset=1)),
    "pixels": (pixel_source, TaskSpec("pix", seq_len=10, num_classes=2, vocab_size=None, input_scale=1 / 255)),
    "pairs": (pair_source, TaskSpec("pair", seq_len=10, num_classes=2, vocab_size=257, token_offset=1, dual=True)),
}


def assert_same_batches(a, b):
    a, b = list(a), list(b)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key].dtype == y[key].dtype, key
            np.testing.assert_array_equal(x[key], y[key])


@pytest.mark.parametrize("case", sorted(CASES))
def test_held_split_gives_the_batches_of_its_source(case):
    make, spec = CASES[case]
    source = make(37, np.random.default_rng(len(case)))
    held = InMemorySplit(source, spec.seq_len, spec.tokens, spec.dual, chunk=8)  # several chunks
    assert len(held) == 37
    for kwargs in (dict(train=True, seed=5, epoch=1), dict(train=True, seed=5, epoch=2, start=2, limit=5),
                   dict(train=False)):  # evaluation: a last batch filled with weight-0 copies
        assert_same_batches(batches(held, spec, 6, **kwargs), batches(source, spec, 6, **kwargs))


def test_stored_values_take_their_narrowest_type():
    np.testing.assert_array_equal(smallest_dtype(np.array([0, 255])), [0, 255])
    assert smallest_dtype(np.array([0, 255], np.int64)).dtype == np.uint8
    assert smallest_dtype(np.array([3, 300], np.int64)).dtype == np.uint16
    assert smallest_dtype(np.array([-1, 3], np.int64)).dtype == np.int64  # negative: kept
    assert smallest_dtype(np.array([0.5], np.float32)).dtype == np.float32
    make, spec = CASES["tokens"]
    held = InMemorySplit(make(20, np.random.default_rng(0)), spec.seq_len, spec.tokens, spec.dual)
    assert held.padded["inputs"].dtype == np.uint16 and held.padded["inputs"].shape == (20, 10)


def test_size_estimate_and_which_splits_are_held():
    make, spec = CASES["pixels"]
    rng = np.random.default_rng(3)
    # Equal lengths: the estimate from the first examples is the size.
    source = [{"inputs": rng.integers(0, 256, (10, 1)).astype(np.uint8), "label": 0} for _ in range(200)]
    held = InMemorySplit(source, spec.seq_len, spec.tokens, spec.dual)
    assert in_memory_bytes(source, spec) == held.nbytes
    splits = {"train": source, "validation": source[:50], "test": source[:50]}
    assert splits_to_hold(splits, spec, "auto") == ["train", "validation"]
    assert splits_to_hold(splits, spec, "auto", budget=held.nbytes) == []  # both together do not fit
    assert splits_to_hold(splits, spec, True, budget=0) == ["train", "validation"]
    assert splits_to_hold(splits, spec, False) == []
    assert splits_to_hold({**splits, "train": held}, spec, True) == ["validation"]  # held already
    assert splits_to_hold(splits, spec, "auto", candidates=("test",)) == ["test"]  # a robustness sweep's split
    assert splits_to_hold(splits, spec, False, candidates=("test",)) == []
    with pytest.raises(ConfigError, match="data.in_memory"):
        splits_to_hold(splits, spec, "yes")


def test_prepared_tfds_split_held_in_memory(tmp_path):
    """A real prepared dataset (ListOps files through TFDS): the held split batches as its source."""
    write_split_files(tmp_path / "listops-1000", ROWS)
    data = load_task_data({"name": "listops", "seq_len": 32}, {"root": str(tmp_path), "cache_dir": str(tmp_path / "c")})
    source = data.splits["train"]
    held = InMemorySplit(source, data.spec.seq_len, data.spec.tokens, data.spec.dual)
    for kwargs in (dict(train=True, seed=1), dict(train=False)):
        assert_same_batches(batches(held, data.spec, 2, **kwargs), batches(source, data.spec, 2, **kwargs))


def test_bad_in_memory_setting_is_a_config_error_before_any_data_is_read():
    from ssm_lra.engine.setup import check_config
    from tests.test_configs import composed

    check_config(composed(["data.in_memory=false", "logger=none"]))
    with pytest.raises(ConfigError, match="data.in_memory='yes'"):
        check_config(composed(["data.in_memory=yes", "logger=none"]))
