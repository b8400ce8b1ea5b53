"""Prepare once, train many times: the TFDS cache is reused, and rebuilt when the source changes."""

import os

from ssm_lra.data.loading import load_task_data

ROWS = ["Source\tTarget", "( ( ( [MAX 2 ) 9 ) ] )\t9", "( ( ( [MIN 2 ) 9 ) ] )\t2", "( ( [SM 5 ) 7 ) ]\t2"]


def write_split_files(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("basic_train.tsv", "basic_val.tsv", "basic_test.tsv"):
        (folder / name).write_text("\n".join(rows) + "\n")


def test_cache_reused_then_rebuilt_on_change(tmp_path):
    source, cache = tmp_path / "listops-1000", tmp_path / "cache"
    write_split_files(source, ROWS)
    task, data = {"name": "listops", "seq_len": 32}, {"root": str(tmp_path), "cache_dir": str(cache)}
    first = load_task_data(task, data)
    assert len(first.splits["train"]) == 3
    prepared = sorted(p.name for p in (cache / "tfds").iterdir())
    stamp = os.stat(cache / "tfds" / prepared[0]).st_mtime_ns
    again = load_task_data(task, data)
    assert sorted(p.name for p in (cache / "tfds").iterdir()) == prepared  # reused, not rebuilt
    assert os.stat(cache / "tfds" / prepared[0]).st_mtime_ns == stamp
    assert len(again.splits["train"]) == 3
    write_split_files(source, ROWS + ["( ( [MED 1 ) 3 ) ]\t2"])
    changed = load_task_data(task, data)
    assert len(changed.splits["train"]) == 4
    assert len(list((cache / "tfds").iterdir())) == 2  # a new dataset for the new source


def _load_in_subprocess(args):
    task, data = args
    return len(load_task_data(task, data).splits["train"])


def test_runs_starting_together_prepare_the_dataset_once(tmp_path):
    """A sweep's jobs share the cache: concurrent first runs must not trip over each other."""
    import multiprocessing

    source, cache = tmp_path / "listops-1000", tmp_path / "cache"
    write_split_files(source, ROWS)
    task, data = {"name": "listops", "seq_len": 32}, {"root": str(tmp_path), "cache_dir": str(cache)}
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        assert pool.map(_load_in_subprocess, [(task, data)] * 3) == [3, 3, 3]
    assert len(list((cache / "tfds").iterdir())) == 1


def test_a_run_that_looks_while_another_finishes_preparing_sees_every_split(tmp_path, monkeypatch):
    """The interleaving that made the concurrent test flaky, made deterministic: this run makes its
    builder before the set exists, and another run finishes preparing before this one checks."""
    from ssm_lra.data import tfds_builders

    source, cache = tmp_path / "listops-1000", tmp_path / "cache"
    write_split_files(source, ROWS)
    real_class = tfds_builders.builder_class("listops")
    made = []

    def builder_made_too_early(*args, **kwargs):
        builder = real_class(*args, **kwargs)
        if not made:
            real_check = builder.is_prepared

            def another_run_finishes_first():
                real_class(*args, **kwargs).download_and_prepare()
                return real_check()

            builder.is_prepared = another_run_finishes_first
        made.append(builder)
        return builder

    monkeypatch.setattr(tfds_builders, "builder_class", lambda task: builder_made_too_early)
    task, data = {"name": "listops", "seq_len": 32}, {"root": str(tmp_path), "cache_dir": str(cache)}
    assert len(load_task_data(task, data).splits["train"]) == 3


def test_preparing_leaves_no_temporary_directories(tmp_path, monkeypatch):
    """TFDS looks up metadata of unprepared datasets in its bucket through a temporary directory
    it never removes; ours are built from local files and skip that lookup."""
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    source = tmp_path / "listops-1000"
    write_split_files(source, ROWS)
    data = load_task_data({"name": "listops", "seq_len": 32}, {"root": str(tmp_path), "cache_dir": str(tmp_path / "cache")})
    assert len(data.splits["train"]) == 3
    assert list(scratch.iterdir()) == []
