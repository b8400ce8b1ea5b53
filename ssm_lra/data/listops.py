"""ListOps: vocabulary, tokenizer, release-TSV reader and a seeded generator of the release format.

The reader reads the files of the LRA release (`lra_release/listops-1000/basic_*.tsv`) and the ones
written by `generate_listops_release` through the same code, so a model cannot tell them apart.

Generator. The procedure is the original LRA one (see `_draw`), with two changes that do not alter
the distribution of the kept trees: it is seeded, and a tree is abandoned as soon as it is known to
be too long (it would be dropped anyway). Trees are drawn in chunks of `_CHUNK_DRAWS` draws; chunk i
has its own random stream derived from (seed, i) and chunks are consumed in order, so the output
depends on the seed only, never on the number of worker processes.

Trees. A leaf is an int digit 0..9; an operator node is a tuple `(op, child, child, ...)` with `op`
one of "MIN", "MAX", "MED", "SM".

Speed, measured on one core (Python 3.11, a shared 2-core machine) with the default bounds
(500 < length < 2000, depth 10, 10 arguments): 8.0-8.3% of the draws are kept, and about 1,100-1,200
kept trees per CPU-second including serialization and labels (750-850 trees/s of wall time while
the second core was busy), so 100,000 trees take about 1.5-2 minutes on one core. A literal
restatement of the original procedure measured 257 trees/s on the same machine. Memory: the kept
sources are held until they are shuffled and written, about 6.6 KB per tree (about 700 MB for the
full 100,000).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import multiprocessing
import random
from pathlib import Path
from typing import Iterable, Iterator, Union

import numpy as np

from ssm_lra.atomic import atomic_open
from ssm_lra.data.generation import check_generation_args, generation_progress
from ssm_lra.errors import DataError, UserError

# ----------------------------------------------------------------------------------------------
# Vocabulary and tokenizer

SYMBOLS = ["[MIN", "[MAX", "[MED", "[SM", "X", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
PAD_ID = 0
EOS_ID = 1
TOKEN_IDS = {symbol: i + 2 for i, symbol in enumerate(SYMBOLS)}
VOCAB_SIZE = len(SYMBOLS) + 2
NUM_CLASSES = 10

SPLIT_FILES = {"train": "basic_train.tsv", "validation": "basic_val.tsv", "test": "basic_test.tsv"}
HEADER = "Source\tTarget"

OPERATORS = ("MIN", "MAX", "MED", "SM")
_OP_TOKENS = {"[" + op: op for op in OPERATORS}
_DIGITS = tuple(str(d) for d in range(10))
_DIGIT_VALUES = {s: d for d, s in enumerate(_DIGITS)}

GENERATE_HINT = "python -m ssm_lra.data generate --task listops --out DIR"


def tokenize(source: str) -> list[str]:
    """The release tokenization: `]` becomes `X`, parentheses are dropped, split on whitespace."""
    return source.replace("]", "X").replace("(", "").replace(")", "").split()


def encode(source: str) -> np.ndarray:
    """Token ids of `source` (int32), followed by EOS_ID."""
    tokens = tokenize(source)
    ids = np.empty(len(tokens) + 1, np.int32)
    try:
        ids[:-1] = [TOKEN_IDS[t] for t in tokens]
    except KeyError as exc:
        raise ValueError(f"unknown ListOps token {exc.args[0]!r} (known: {' '.join(SYMBOLS)})") from None
    ids[-1] = EOS_ID
    return ids


# ----------------------------------------------------------------------------------------------
# Trees: evaluation and the release serialization

Tree = Union[int, tuple]


def apply_operator(op: str, values: list[int]) -> int:
    if op == "MIN":
        return min(values)
    if op == "MAX":
        return max(values)
    if op == "MED":
        # As int(np.median(values)): the mean of the two middle values, truncated.
        ordered = sorted(values)
        mid = len(ordered) // 2
        if len(ordered) % 2:
            return ordered[mid]
        return (ordered[mid - 1] + ordered[mid]) // 2
    if op == "SM":
        return sum(values) % 10
    raise ValueError(f"unknown ListOps operator {op!r} (known: {', '.join(OPERATORS)})")


def evaluate_tree(tree: Tree) -> int:
    if isinstance(tree, int):
        return tree
    return apply_operator(tree[0], [c if isinstance(c, int) else evaluate_tree(c) for c in tree[1:]])


def tree_length(tree: Tree) -> int:
    """Length as the generator counts it: 1 per digit, 2 per operator (its token and `]`)."""
    if isinstance(tree, int):
        return 1
    return 2 + sum(tree_length(child) for child in tree[1:])


def tree_depth(tree: Tree) -> int:
    """Number of levels: a digit alone has depth 1, like the generator's root."""
    if isinstance(tree, int):
        return 1
    return 1 + max(tree_depth(child) for child in tree[1:])


def tree_to_source(tree: Tree) -> str:
    """The original's string form.

    The original folds an operator node into nested pairs ((((op, v1), v2), ...), "]") and prints
    a pair as `( left right )`, so `[MAX 2 9 ]` reads `( ( ( [MAX 2 ) 9 ) ] )`.
    """
    parts: list[str] = []
    _emit(tree, parts)
    return " ".join(parts)


def _emit(tree: Tree, out: list[str]) -> None:
    if isinstance(tree, int):
        out.append(_DIGITS[tree])
        return
    out.extend(["("] * len(tree))  # one per argument, one for the closing "]" pair
    out.append("[" + tree[0])
    for child in tree[1:]:
        if isinstance(child, int):  # inlined: most nodes are digits, and calls are what costs
            out.append(_DIGITS[child])
        else:
            _emit(child, out)
        out.append(")")
    out.append("]")
    out.append(")")


def evaluate_source(source: str) -> int:
    """Value of a release-format Source string, by a stack parser over its tokens.

    Independent of the tree representation, so it can check the generator and the files.
    Raises ValueError for a malformed expression.
    """
    stack: list[tuple[str, list[int]]] = []
    result: list[int] = []
    for token in tokenize(source):
        if token in _OP_TOKENS:
            stack.append((_OP_TOKENS[token], []))
            continue
        if token == "X":
            if not stack:
                raise ValueError("']' without an open operator")
            op, values = stack.pop()
            if not values:
                raise ValueError(f"operator [{op} has no arguments")
            value = apply_operator(op, values)
        elif token in _DIGIT_VALUES:
            value = _DIGIT_VALUES[token]
        else:
            raise ValueError(f"unknown ListOps token {token!r}")
        (stack[-1][1] if stack else result).append(value)
    if stack:
        raise ValueError(f"{len(stack)} operator(s) not closed with ']'")
    if len(result) != 1:
        raise ValueError("empty expression" if not result else f"{len(result)} top-level expressions, expected 1")
    return result[0]


# ----------------------------------------------------------------------------------------------
# The generator

_VALUE_P = 0.25  # probability threshold of the original: r > 0.25 makes a digit
_CHUNK_DRAWS = 1024  # draws per seeded chunk; changing it changes the data (recorded in generator.json)
_FORMAT_VERSION = 1  # bump when the generated data for a given seed changes


class _TooLong(Exception):
    """The tree being drawn already reached the length limit: it will be dropped."""


def _draw(rand, max_depth: int, max_args: int, limit: float) -> tuple[Tree, int]:
    """One tree by the original procedure and its length; raises _TooLong once length >= limit.

    Random draws are consumed in the original's order: r, then for a digit its value, for an
    operator the argument count, the arguments, then the operator.
    """
    total = 0
    span = max_args - 1  # k uniform in [2, max_args]
    value_p, operators, too_long = _VALUE_P, OPERATORS, _TooLong  # locals: this loop is the hot path

    def node(depth: int) -> Tree:
        nonlocal total
        if depth < max_depth and rand() <= value_p:
            total += 2
            k = 2 + int(rand() * span)
            children = [node(depth + 1) for _ in range(k)]
            return (operators[int(rand() * 4)], *children)
        total += 1
        if total >= limit:
            raise too_long
        return int(rand() * 10)

    return node(1), total


def generate_tree(rng, max_depth: int = 10, max_args: int = 10) -> Tree:
    """One tree by the original procedure, with no length filter.

    `rng` is anything with a `.random()` method returning floats in [0, 1) (random.Random,
    numpy.random.Generator). The root is at depth 1, as in the original.
    """
    return _draw(rng.random, max_depth, max_args, float("inf"))[0]


@dataclasses.dataclass(frozen=True)
class GeneratorParams:
    min_length: int = 500
    max_length: int = 2000
    max_depth: int = 10
    max_args: int = 10

    def validate(self) -> None:
        if self.max_depth < 1 or self.max_depth > 200:
            raise UserError(f"max_depth must be in 1..200, got {self.max_depth}.")
        if self.max_args < 2:
            raise UserError(f"max_args must be at least 2, got {self.max_args}.")
        if self.min_length < 0 or self.max_length - self.min_length < 2:
            raise UserError(
                f"need 0 <= min_length and min_length + 1 < max_length (lengths are kept strictly between "
                f"them), got min_length={self.min_length}, max_length={self.max_length}."
            )
        longest = _longest_tree(self.max_depth, self.max_args, self.max_length)
        if longest <= self.min_length:
            raise UserError(
                f"no tree of depth <= {self.max_depth} with <= {self.max_args} arguments is longer than "
                f"min_length={self.min_length} (the longest has length {longest}); lower --min-length or "
                f"raise --max-depth / --max-args."
            )


def _longest_tree(max_depth: int, max_args: int, cap: int) -> int:
    longest = 1
    for _ in range(max_depth - 1):
        longest = min(2 + max_args * longest, cap)  # capped: only "longer than min_length" matters
    return longest


def _chunk_rng(seed: int, index: int) -> random.Random:
    words = np.random.SeedSequence([seed, 0, index]).generate_state(4)
    return random.Random(int.from_bytes(words.astype("<u4").tobytes(), "little"))


def draw_chunk(seed: int, index: int, params: GeneratorParams) -> list[tuple[str, int]]:
    """(source, label) of the trees kept among chunk `index`'s `_CHUNK_DRAWS` draws, in order."""
    rand = _chunk_rng(seed, index).random
    kept = []
    for _ in range(_CHUNK_DRAWS):
        try:
            tree, length = _draw(rand, params.max_depth, params.max_args, params.max_length)
        except _TooLong:
            continue
        if length > params.min_length:
            kept.append((tree_to_source(tree), evaluate_tree(tree)))
    return kept


def _draw_chunk_task(task: tuple[int, int, GeneratorParams]) -> list[tuple[str, int]]:
    return draw_chunk(*task)


def _chunks_in_order(seed: int, params: GeneratorParams, workers: int) -> Iterator[list[tuple[str, int]]]:
    """Chunk results 0, 1, 2, ... forever; with workers > 1 a bounded window runs ahead in a pool."""
    if workers <= 1:
        index = 0
        while True:
            yield draw_chunk(seed, index, params)
            index += 1
    # spawn, not fork: the parent may hold JAX or other threads, which fork can deadlock.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pending: collections.deque = collections.deque()
        index = 0
        while True:
            while len(pending) < 4 * workers:
                pending.append(pool.apply_async(_draw_chunk_task, ((seed, index, params),)))
                index += 1
            yield pending.popleft().get()


_MAX_BARREN_CHUNKS = 500


def generate_unique(
    num: int, seed: int, params: GeneratorParams, workers: int = 1, on_new=None
) -> list[tuple[str, int]]:
    """The first `num` distinct (source, label) pairs of the seeded stream of kept trees."""
    seen: set[str] = set()
    out: list[tuple[str, int]] = []
    barren = 0
    chunks = _chunks_in_order(seed, params, workers)
    try:
        for chunk in chunks:
            before = len(out)
            for source, label in chunk:
                if source not in seen:
                    seen.add(source)
                    out.append((source, label))
                    if len(out) == num:
                        break
            if on_new is not None and len(out) > before:
                on_new(len(out) - before)
            if len(out) == num:
                return out
            barren = 0 if len(out) > before else barren + 1
            if barren >= _MAX_BARREN_CHUNKS:
                raise UserError(
                    f"found only {len(out)} distinct trees with {params.min_length} < length < "
                    f"{params.max_length}, depth <= {params.max_depth}, <= {params.max_args} arguments "
                    f"({_MAX_BARREN_CHUNKS * _CHUNK_DRAWS} draws in a row gave nothing new); ask for fewer "
                    f"(--num) or widen the bounds."
                )
    finally:
        chunks.close()  # shuts the pool down
    raise AssertionError("unreachable")


def split_counts(num: int) -> dict[str, int]:
    """96% / 2% / 2% like the release (100,000 -> 96,000 / 2,000 / 2,000), val and test >= 1 from 3 on."""
    n_eval = num * 2 // 100
    if num >= 3:
        n_eval = max(n_eval, 1)
    return {"train": num - 2 * n_eval, "validation": n_eval, "test": n_eval}


def _shuffled(rows: list, seed: int) -> list:
    order = np.random.default_rng(np.random.SeedSequence([seed, 1])).permutation(len(rows))
    return [rows[i] for i in order]


def _write_atomic(path: Path, lines: Iterable[str]) -> None:
    """Write `lines` atomically (readers never see half a file), in ASCII with Unix line ends."""
    with atomic_open(path, "w", encoding="ascii", newline="\n") as f:
        f.writelines(lines)


def _tsv_lines(rows: list[tuple[str, int]]) -> Iterator[str]:
    yield HEADER + "\n"
    for source, label in rows:
        yield f"{source}\t{label}\n"


def _metadata(num: int, seed: int, params: GeneratorParams) -> dict:
    return {
        "task": "listops",
        "format_version": _FORMAT_VERSION,
        "chunk_draws": _CHUNK_DRAWS,
        "num": num,
        "seed": seed,
        **dataclasses.asdict(params),
    }


def generate_listops_release(
    out_dir,
    num: int,
    seed: int = 0,
    workers: int = 1,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
    progress: bool = True,
) -> dict[str, int]:
    """Generate `num` distinct trees and write basic_{train,val,test}.tsv and generator.json.

    The files have the release format; the same seed gives byte-identical files whatever `workers`.
    Returns split -> number of examples.
    """
    params = GeneratorParams(min_length, max_length, max_depth, max_args)
    params.validate()
    check_generation_args(num, seed, workers)
    out_dir = Path(out_dir)
    meta_path = out_dir / "generator.json"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # Written last: while it is missing, ensure_listops does not trust the TSV files.
        meta_path.unlink(missing_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write to {out_dir}: {exc.strerror or exc}; choose a writable output directory.")

    if progress:
        with generation_progress("ListOps trees") as bar:
            task = bar.add_task("trees", total=num)
            rows = generate_unique(num, seed, params, workers, on_new=lambda n: bar.advance(task, n))
    else:
        rows = generate_unique(num, seed, params, workers)

    rows = _shuffled(rows, seed)
    counts = split_counts(num)
    start = 0
    try:
        for split, count in counts.items():
            _write_atomic(out_dir / SPLIT_FILES[split], _tsv_lines(rows[start : start + count]))
            start += count
        meta = {**_metadata(num, seed, params), "counts": counts}
        _write_atomic(meta_path, [json.dumps(meta, indent=2, sort_keys=True) + "\n"])
    except OSError as exc:
        raise UserError(f"cannot write to {out_dir}: {exc.strerror or exc}; choose a writable output directory.")
    return counts


def ensure_listops(out_dir, num: int, seed: int = 0, **generator_kwargs) -> Path:
    """Generate the ListOps files in `out_dir` unless they are there with the same parameters."""
    out_dir = Path(out_dir)
    data_kwargs = {k: v for k, v in generator_kwargs.items() if k not in ("workers", "progress")}
    expected = _metadata(num, seed, GeneratorParams(**data_kwargs))
    if _matches(out_dir, expected):
        return out_dir
    generate_listops_release(out_dir, num, seed, **generator_kwargs)
    return out_dir


def _matches(out_dir: Path, expected: dict) -> bool:
    if not all((out_dir / name).is_file() for name in SPLIT_FILES.values()):
        return False
    try:
        meta = json.loads((out_dir / "generator.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and all(meta.get(k) == v for k, v in expected.items())


# ----------------------------------------------------------------------------------------------
# Reader


def read_listops_tsv(path, validate: bool = False) -> tuple[list[np.ndarray], np.ndarray]:
    """Encoded sequences (int32, EOS at the end) and int32 labels of one release TSV file.

    Reads the release's `basic_*.tsv` and generated files alike; Unix or Windows line endings.
    With `validate`, also checks each label against the value of its expression (slower).
    Raises DataError naming the file and line for a missing file or a malformed line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"ListOps file not found: {path}. Point the data directory at lra_release/listops-1000 "
            f"or generate the files with `{GENERATE_HINT.replace('DIR', str(path.parent))}`."
        )
    sequences: list[np.ndarray] = []
    labels: list[int] = []
    lineno = 1
    try:
        # newline=None: universal newlines, so CRLF files read like LF ones.
        with open(path, encoding="utf-8-sig", newline=None) as f:
            _check_header(f.readline().rstrip("\n"), path)
            for lineno, line in enumerate(f, start=2):
                line = line.rstrip("\n")
                if not line.strip():
                    continue  # blank lines (a doubled trailing newline) carry nothing
                source, label = _parse_line(line, path, lineno)
                try:
                    ids = encode(source)
                except ValueError as exc:
                    raise DataError(f"{path}, line {lineno}: {exc}.") from None
                if validate:
                    _validate(source, label, path, lineno)
                sequences.append(ids)
                labels.append(label)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not a text file ({exc.reason} after line {lineno}); expected a ListOps TSV."
        ) from None
    return sequences, np.asarray(labels, np.int32)


def _check_header(header: str, path: Path) -> None:
    if header != HEADER:
        found = repr(header[:40]) if header else "an empty line"
        raise DataError(f"{path}, line 1: expected the header 'Source<TAB>Target', found {found}.")


def _parse_line(line: str, path: Path, lineno: int) -> tuple[str, int]:
    fields = line.split("\t")
    if len(fields) != 2:
        raise DataError(
            f"{path}, line {lineno}: expected 2 tab-separated columns (Source, Target), found {len(fields)}."
        )
    source, target = fields
    try:
        label = int(target.strip())
    except ValueError:
        label = -1
    if not 0 <= label < NUM_CLASSES:
        raise DataError(f"{path}, line {lineno}: label {target!r} is not an integer in 0..{NUM_CLASSES - 1}.")
    return source, label


def _validate(source: str, label: int, path: Path, lineno: int) -> None:
    try:
        value = evaluate_source(source)
    except ValueError as exc:
        raise DataError(f"{path}, line {lineno}: malformed expression: {exc}.") from None
    if value != label:
        raise DataError(f"{path}, line {lineno}: label {label} but the expression evaluates to {value}.")
