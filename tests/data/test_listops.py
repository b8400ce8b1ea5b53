"""ListOps: vocabulary, evaluation, the seeded generator, the release-TSV reader and the CLI."""

from __future__ import annotations

import collections
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from ssm_lra.data import listops
from ssm_lra.data.listops import GeneratorParams
from ssm_lra.errors import DataError, UserError
from tests.data.cli import assert_generate_rejects, run_data_cli

SMALL = dict(min_length=10, max_length=60)  # fast bounds: a few ms per chunk


def _shape(source: str) -> tuple[int, list[int]]:
    """(depth, argument count of every operator) of a source, by a stack walk over its tokens."""
    depth, counts, stack = 1, [], []
    for token in listops.tokenize(source):
        if token.startswith("["):
            if stack:
                stack[-1] += 1
            stack.append(0)
            depth = max(depth, len(stack) + 1)  # its arguments sit one level below
        elif token == "X":
            counts.append(stack.pop())
        elif stack:
            stack[-1] += 1
    assert not stack
    return depth, counts


# ---------------------------------------------------------------- vocabulary, serialization, evaluation


def test_vocabulary():
    assert listops.SYMBOLS == ["[MIN", "[MAX", "[MED", "[SM", "X"] + [str(d) for d in range(10)]
    assert (listops.PAD_ID, listops.EOS_ID, listops.VOCAB_SIZE, listops.NUM_CLASSES) == (0, 1, 17, 10)
    assert [listops.TOKEN_IDS[s] for s in listops.SYMBOLS] == list(range(2, 17))
    assert listops.SPLIT_FILES == {"train": "basic_train.tsv", "validation": "basic_val.tsv", "test": "basic_test.tsv"}


def test_serialization_matches_the_original_string_form():
    source = listops.tree_to_source(("MAX", 2, 9))
    assert source == "( ( ( [MAX 2 ) 9 ) ] )"
    assert listops.tokenize(source) == ["[MAX", "2", "9", "X"]
    ids = listops.encode(source)
    assert ids.dtype == np.int32
    assert ids.tolist() == [3, 9, 16, 6, listops.EOS_ID]
    nested = ("MIN", 3, ("MAX", 1, 9))
    assert listops.tree_to_source(nested) == "( ( ( [MIN 3 ) ( ( ( [MAX 1 ) 9 ) ] ) ) ] )"


def test_encode_rejects_unknown_tokens():
    with pytest.raises(ValueError, match=r"\[FOO"):
        listops.encode("( ( ( [FOO 2 ) 9 ) ] )")


# Hand-written in the original's serialized form, with values worked out by hand.
KNOWN = [
    ("( ( ( ( ( [MED 1 ) 2 ) 3 ) 4 ) ] )", ("MED", 1, 2, 3, 4), 2),  # mean 2.5, truncated
    ("( ( ( [MED 2 ) 7 ) ] )", ("MED", 2, 7), 4),
    ("( ( ( ( [MED 9 ) 1 ) 5 ) ] )", ("MED", 9, 1, 5), 5),
    ("( ( ( [SM 5 ) 7 ) ] )", ("SM", 5, 7), 2),
    ("( ( ( ( [SM 9 ) 9 ) 9 ) ] )", ("SM", 9, 9, 9), 7),
    ("( ( ( [MIN 3 ) ( ( ( [MAX 1 ) 9 ) ] ) ) ] )", ("MIN", 3, ("MAX", 1, 9)), 3),
    ("( ( ( [MAX 0 ) ( ( ( [MIN 8 ) 4 ) ] ) ) ] )", ("MAX", 0, ("MIN", 8, 4)), 4),
    (
        "( ( ( ( [MAX ( ( ( [SM 3 ) 4 ) ] ) ) ( ( ( [MIN 8 ) ( ( ( [MED 0 ) 9 ) ] ) ) ] ) ) 6 ) ] )",
        ("MAX", ("SM", 3, 4), ("MIN", 8, ("MED", 0, 9)), 6),
        7,
    ),
    ("7", 7, 7),
]


@pytest.mark.parametrize("source,tree,value", KNOWN)
def test_known_cases(source, tree, value):
    assert listops.tree_to_source(tree) == source
    assert listops.evaluate_source(source) == value
    assert listops.evaluate_tree(tree) == value
    assert listops.tree_length(tree) == len(listops.tokenize(source))


@pytest.mark.parametrize("source", ["", "[MAX 1", "1 ]", "[MAX ]", "1 2", "[FOO 1 ]", "( ( [MAX 1 ) 2 )"])
def test_evaluate_source_rejects_malformed(source):
    with pytest.raises(ValueError):
        listops.evaluate_source(source)


def test_median_truncates_like_numpy():
    rng = random.Random(0)
    for _ in range(500):
        values = [rng.randrange(10) for _ in range(rng.randint(1, 10))]
        assert listops.apply_operator("MED", values) == int(np.median(values))


# ---------------------------------------------------------------- the generator


def test_generate_tree_follows_the_procedure():
    rng = random.Random(1)
    ops = collections.Counter()
    for _ in range(2000):
        tree = listops.generate_tree(rng, max_depth=5, max_args=4)
        source = listops.tree_to_source(tree)
        depth, arg_counts = _shape(source)
        assert listops.tree_depth(tree) == depth <= 5
        assert all(2 <= k <= 4 for k in arg_counts)
        assert listops.tree_length(tree) == len(listops.tokenize(source))
        assert listops.evaluate_tree(tree) == listops.evaluate_source(source)
        ops.update(t for t in listops.tokenize(source) if t.startswith("["))
    assert set(ops) == {"[MIN", "[MAX", "[MED", "[SM"}
    # A digit at the root 75% of the time; a depth limit of 1 leaves nothing but digits.
    assert all(isinstance(listops.generate_tree(rng, max_depth=1), int) for _ in range(100))


def test_generated_samples_are_valid():
    params = GeneratorParams(min_length=10, max_length=100, max_depth=6, max_args=5)
    rows = listops.generate_unique(400, seed=5, params=params)
    assert len(rows) == 400
    sources = [s for s, _ in rows]
    assert len(set(sources)) == len(sources)
    for source, label in rows:
        tokens = listops.tokenize(source)
        assert set(tokens) <= set(listops.SYMBOLS)
        assert 10 < len(tokens) < 100
        depth, arg_counts = _shape(source)
        assert depth <= 6
        assert all(2 <= k <= 5 for k in arg_counts)
        assert label == listops.evaluate_source(source)
        assert 0 <= label <= 9


def test_statistics_with_default_bounds():
    params = GeneratorParams()
    rows, draws = [], 0
    while len(rows) < 400:
        rows += listops.draw_chunk(0, draws // listops._CHUNK_DRAWS, params)
        draws += listops._CHUNK_DRAWS
    kept_fraction = len(rows) / draws
    assert 0.06 < kept_fraction < 0.11  # the original keeps about 8%
    labels = collections.Counter(label for _, label in rows)
    share = {d: labels[d] / len(rows) for d in range(10)}
    # Release shape: 0 and 9 about 17% each, 1..8 about 7-9% each.
    assert {d for d, _ in labels.most_common(2)} == {0, 9}
    assert min(share[0], share[9]) > 0.12
    assert max(share[d] for d in range(1, 9)) < 0.13
    lengths = [len(listops.tokenize(s)) for s, _ in rows]
    assert all(500 < n < 2000 for n in lengths)
    assert 800 < np.median(lengths) < 1150  # the release: about 950
    assert all(_shape(s)[0] <= 10 for s, _ in rows)


def test_split_counts():
    assert listops.split_counts(100_000) == {"train": 96_000, "validation": 2_000, "test": 2_000}
    assert listops.split_counts(30) == {"train": 28, "validation": 1, "test": 1}
    assert listops.split_counts(3) == {"train": 1, "validation": 1, "test": 1}
    assert listops.split_counts(2) == {"train": 2, "validation": 0, "test": 0}


def _generate(out, **kwargs):
    args = dict(num=200, seed=3, workers=1, progress=False, **SMALL)
    args.update(kwargs)
    return listops.generate_listops_release(out, **args)


def _file_bytes(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in [*listops.SPLIT_FILES.values(), "generator.json"]}


def test_release_files_are_deterministic(tmp_path):
    counts = _generate(tmp_path / "a")
    assert counts == {"train": 192, "validation": 4, "test": 4}
    _generate(tmp_path / "b")
    _generate(tmp_path / "c", workers=2)
    _generate(tmp_path / "d", seed=4)
    a = _file_bytes(tmp_path / "a")
    assert a == _file_bytes(tmp_path / "b")
    assert a == _file_bytes(tmp_path / "c")
    d = _file_bytes(tmp_path / "d")
    assert all(a[name] != d[name] for name in listops.SPLIT_FILES.values())
    # 200 trees at about 40 per chunk: the comparison spans several chunks.
    assert len(listops.draw_chunk(3, 0, GeneratorParams(**SMALL))) < 100


def test_release_files_read_back(tmp_path):
    counts = _generate(tmp_path)
    assert not list(tmp_path.glob(".*.tmp"))
    meta = json.loads((tmp_path / "generator.json").read_text())
    assert meta["seed"] == 3 and meta["num"] == 200 and meta["counts"] == counts
    sources = []
    for split, name in listops.SPLIT_FILES.items():
        lines = (tmp_path / name).read_text().splitlines()
        assert lines[0] == "Source\tTarget"
        sources += [line.split("\t")[0] for line in lines[1:]]
        sequences, labels = listops.read_listops_tsv(tmp_path / name, validate=True)
        assert len(sequences) == len(labels) == counts[split]
        assert labels.dtype == np.int32
        assert all(seq[-1] == listops.EOS_ID and listops.EOS_ID not in seq[:-1] for seq in sequences)
    assert len(set(sources)) == 200  # no duplicates, across splits too


def test_bad_generator_arguments(tmp_path):
    with pytest.raises(UserError, match="at least 1"):
        _generate(tmp_path, num=0)
    with pytest.raises(UserError, match="min_length"):
        _generate(tmp_path, min_length=50, max_length=51)
    with pytest.raises(UserError, match="longest"):
        _generate(tmp_path, max_depth=2, min_length=500, max_length=2000)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot write"):
        _generate(blocker / "sub")


def test_impossible_count_is_reported_not_looped(tmp_path, monkeypatch):
    monkeypatch.setattr(listops, "_MAX_BARREN_CHUNKS", 3)
    # Depth 2, 2 arguments: [OP d d] has length 4, so at most 4 * 10 * 10 = 400 distinct trees.
    params = GeneratorParams(min_length=3, max_length=5, max_depth=2, max_args=2)
    with pytest.raises(UserError, match="distinct"):
        listops.generate_unique(401, seed=0, params=params)


def test_ensure_listops_reuses_matching_files(tmp_path, monkeypatch):
    kwargs = dict(workers=1, progress=False, **SMALL)
    assert listops.ensure_listops(tmp_path, 50, 7, **kwargs) == tmp_path
    before = _file_bytes(tmp_path)

    def fail(*args, **kw):
        raise AssertionError("regenerated although the files match")

    with monkeypatch.context() as m:
        m.setattr(listops, "generate_listops_release", fail)
        listops.ensure_listops(tmp_path, 50, 7, **{**kwargs, "workers": 2})
    listops.ensure_listops(tmp_path, 50, 8, **kwargs)
    assert json.loads((tmp_path / "generator.json").read_text())["seed"] == 8
    assert _file_bytes(tmp_path) != before
    (tmp_path / "basic_test.tsv").unlink()
    listops.ensure_listops(tmp_path, 50, 8, **kwargs)
    assert (tmp_path / "basic_test.tsv").is_file()


# ---------------------------------------------------------------- the reader

GOOD_ROWS = ["( ( ( [MAX 2 ) 9 ) ] )\t9", "( ( ( ( ( [MED 1 ) 2 ) 3 ) 4 ) ] )\t2"]


def _write(path: Path, lines: list[str], newline: str = "\n", trailing: bool = True) -> Path:
    path.write_bytes((newline.join(lines) + (newline if trailing else "")).encode())
    return path


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("trailing", [True, False])
def test_reader_loads_release_format(tmp_path, newline, trailing):
    path = _write(tmp_path / "basic_test.tsv", ["Source\tTarget", *GOOD_ROWS], newline, trailing)
    sequences, labels = listops.read_listops_tsv(path, validate=True)
    assert [s.tolist() for s in sequences] == [[3, 9, 16, 6, 1], [4, 8, 9, 10, 11, 6, 1]]
    assert all(s.dtype == np.int32 for s in sequences)
    assert labels.tolist() == [9, 2] and labels.dtype == np.int32


def test_reader_accepts_header_only(tmp_path):
    sequences, labels = listops.read_listops_tsv(_write(tmp_path / "x.tsv", ["Source\tTarget"]))
    assert sequences == [] and labels.shape == (0,)


BAD_LINES = {
    "no tab": ("( ( ( [MAX 2 ) 9 ) ] ) 9", "2 tab-separated columns"),
    "three columns": ("( ( ( [MAX 2 ) 9 ) ] )\t9\t1", "2 tab-separated columns"),
    "label out of range": ("( ( ( [MAX 2 ) 9 ) ] )\t10", "0..9"),
    "label not an integer": ("( ( ( [MAX 2 ) 9 ) ] )\tnine", "0..9"),
    "empty label": ("( ( ( [MAX 2 ) 9 ) ] )\t", "0..9"),
    "unknown token": ("( ( ( [FOO 2 ) 9 ) ] )\t9", "FOO"),
}


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_reader_names_file_and_line_of_malformed_lines(tmp_path, case, newline):
    bad, what = BAD_LINES[case]
    path = _write(tmp_path / "basic_train.tsv", ["Source\tTarget", GOOD_ROWS[0], bad, GOOD_ROWS[1]], newline)
    with pytest.raises(DataError) as info:
        listops.read_listops_tsv(path)
    message = str(info.value)
    assert str(path) in message and "line 3" in message and what in message


@pytest.mark.parametrize("first", ["Src\tTgt", GOOD_ROWS[0], ""])
def test_reader_requires_the_header(tmp_path, first):
    path = _write(tmp_path / "basic_val.tsv", [first, GOOD_ROWS[1]])
    with pytest.raises(DataError, match="line 1.*header"):
        listops.read_listops_tsv(path)


def test_reader_validation_catches_wrong_labels(tmp_path):
    path = _write(tmp_path / "basic_val.tsv", ["Source\tTarget", GOOD_ROWS[0], "( ( ( [SM 5 ) 7 ) ] )\t3"])
    assert listops.read_listops_tsv(path)[1].tolist() == [9, 3]
    with pytest.raises(DataError, match="line 3.*evaluates to 2"):
        listops.read_listops_tsv(path, validate=True)


def test_reader_missing_file_says_how_to_generate(tmp_path):
    path = tmp_path / "listops-1000" / "basic_train.tsv"
    with pytest.raises(DataError) as info:
        listops.read_listops_tsv(path)
    message = str(info.value)
    assert str(path) in message
    assert "python -m ssm_lra.data generate --task listops --out" in message


def test_reader_rejects_binary_files(tmp_path):
    path = tmp_path / "basic_train.tsv"
    path.write_bytes(b"Source\tTarget\n\xff\xfe\x00garbage\t1\n")
    with pytest.raises(DataError, match="not a text file"):
        listops.read_listops_tsv(path)


# ---------------------------------------------------------------- the command line


def test_cli_generates_listops(tmp_path):
    out = tmp_path / "listops"
    result = run_data_cli(
        "generate", "--task", "listops", "--out", str(out), "--num", "30", "--seed", "1", "--workers", "1",
        "--min-length", "10", "--max-length", "60",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1
    assert "28 train" in result.stdout and "trees/s" in result.stdout
    assert [len(listops.read_listops_tsv(out / f)[0]) for f in listops.SPLIT_FILES.values()] == [28, 1, 1]
    assert json.loads((out / "generator.json").read_text())["min_length"] == 10
    # The CLI and the library give the same files for the same seed.
    listops.generate_listops_release(
        tmp_path / "lib", 30, seed=1, min_length=10, max_length=60, progress=False
    )  # fmt: skip
    assert _file_bytes(out) == _file_bytes(tmp_path / "lib")


@pytest.mark.parametrize(
    "args",
    [
        ["--num", "0"],
        ["--seed", "-1"],
        ["--workers", "abc"],
        ["--task", "nope"],
        ["--min-length", "100", "--max-length", "50"],
        ["--out", "{blocked}/sub"],
    ],
    ids=["num0", "seed", "workers", "task", "bounds", "unwritable"],
)
def test_cli_bad_arguments_are_one_line_errors(tmp_path, args):
    defaults = {"--task": "listops", "--out": str(tmp_path / "out"), "--num": "5", "--workers": "1"}
    assert_generate_rejects(tmp_path, defaults, args)


def test_generators_registry_drives_task_choices():
    from ssm_lra.data.__main__ import GENERATORS, build_parser

    assert "listops" in GENERATORS
    parser = build_parser()
    args = parser.parse_args(["generate", "--task", "listops", "--out", "x"])
    assert args.workers == (os.cpu_count() or 1) and args.min_length == 500

