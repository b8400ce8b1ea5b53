"""TFDS array_record datasets built once from the source files, then read by random access; and
readers for datasets the user prepared from the TFDS catalog (imdb_reviews, cifar10).

Prepare once, train many times: the first run converts the raw files into a TFDS dataset in the
cache directory; later runs open it at once. The cache folder's name carries a fingerprint of the
source files (names, sizes, modification times) and of the conversion code, so a changed source
is converted again instead of being read stale. No TensorFlow is needed: array_record files are
written and read through `tfds.data_source`.

Catalog datasets (`tfds build NAME --data_dir DIR`) sit in `DIR/NAME/[CONFIG/]VERSION/` as
`NAME-SPLIT.FORMAT-XXXXX-of-YYYYY` shards next to `dataset_info.json` and `features.json`. Both
of TFDS's formats are read without TensorFlow:

- array_record (`--file_format array_record`): through TFDS itself (`builder_from_directory(...)
  .as_data_source()`), which decodes the features as features.json says;
- tfrecord (TFDS's default): by `read_tfrecord` below (framing: uint64 length, uint32 masked
  CRC-32C of the length, the data, uint32 masked CRC-32C of the data; both CRCs are checked) and
  the `tf.train.Example` protobuf classes that tensorflow-datasets ships (`tensorflow_datasets.
  proto.tf_example_pb2`, no TensorFlow behind them). Features come back as stored: Text as UTF-8
  bytes, ClassLabel as int, Image as its encoded (PNG) bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import struct
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from rich.progress import track

from ssm_lra import atomic
from ssm_lra.errors import DataError

# Bump when what the builders write changes, so caches made by older code are not reused.
PREP_VERSION = "1"


def fingerprint(files: list[Path], extra: str = "", root: Path | None = None) -> str:
    """Hash of the files' names, sizes and modification times (names relative to `root` when given,
    so that pos/0_9.txt and neg/0_9.txt, or train/ and test/ files of one name, stay apart)."""
    digest = hashlib.sha256(f"{PREP_VERSION}|{extra}".encode())
    for path in sorted(files):
        stat = path.stat()
        name = path.relative_to(root).as_posix() if root is not None else path.name
        digest.update(f"{name}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


def _quiet_tfds():
    # TFDS logs absl lines per file and draws a bar per shard; ours (rich, per split) says enough.
    logging.getLogger("absl").setLevel(logging.ERROR)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()


def _builder_classes():
    """Defined lazily: importing tensorflow_datasets takes seconds and registers the classes globally."""
    import tensorflow_datasets as tfds

    class LocalDatasetInfo(tfds.core.DatasetInfo):
        """These datasets are built from the user's files, so TFDS' bucket holds no metadata of
        theirs. TFDS looks there whenever a builder is made before its dataset is prepared, and
        leaves an empty temporary directory behind each time."""

        def initialize_from_bucket(self) -> None:
            pass

    class FromTaskModule(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """A builder over one source folder, with features from `_features()`. By default the examples
        come from the task module's `split_examples(source, **options)` (ssm_lra.data.<TASK>); ListOps
        and Pathfinder read their release folders themselves."""

        VERSION = tfds.core.Version("1.0.0")
        TASK = ""

        def __init__(self, *, source_dir: Path, source=None, options: Mapping[str, Any] | None = None, **kwargs):
            self._source_dir = Path(source_dir)
            self._source = source
            self._options = dict(options or {})
            super().__init__(**kwargs)

        def _features(self) -> dict:
            raise NotImplementedError

        def _info(self):
            return LocalDatasetInfo(builder=self, features=tfds.features.FeaturesDict(self._features()))

        def _split_generators(self, dl_manager):
            import importlib

            module = importlib.import_module(f"ssm_lra.data.{self.TASK}")
            splits = module.split_examples(self._source, **self._options)
            return {split: self._generate_examples(split, examples) for split, examples in splits.items()}

        def _generate_examples(self, split, examples):
            yield from track(examples, description=f"  {split}")

    def byte_sequence():
        return tfds.features.Tensor(shape=(None,), dtype=np.uint8)

    def label():
        return tfds.features.Scalar(dtype=np.int32)

    class ListOpsTokens(FromTaskModule):
        """ListOps token ids (with EOS) and labels, from the release TSV files."""

        def _features(self):
            return {"inputs": tfds.features.Tensor(shape=(None,), dtype=np.int32), "label": label()}

        def _split_generators(self, dl_manager):
            from ssm_lra.data import listops

            return {split: self._generate_examples(self._source_dir / f) for split, f in listops.SPLIT_FILES.items()}

        def _generate_examples(self, path):
            from ssm_lra.data import listops

            sequences, labels = listops.read_listops_tsv(path)
            examples = enumerate(zip(sequences, labels))
            for i, (seq, y) in track(examples, description=f"  {path.name}", total=len(labels)):
                yield i, {"inputs": np.asarray(seq, np.int32), "label": int(y)}

    class PathfinderImages(FromTaskModule):
        """Pathfinder / Path-X images as flattened uint8 pixels (a quarter of float32's size: Path-X
        as float32 would take about 13 GB), split 80/10/10 with a fixed seed; empty images skipped."""

        def _features(self):
            return {"inputs": byte_sequence(), "label": label()}

        def _split_generators(self, dl_manager):
            from ssm_lra.data import pathfinder

            paths, labels, _ = pathfinder.read_pathfinder_index(self._source_dir)
            splits = pathfinder.split_indices(len(paths))
            return {split: self._generate_examples(split, paths, labels, idx) for split, idx in splits.items()}

        def _generate_examples(self, split, paths, labels, indices):
            from ssm_lra.data import pathfinder

            skipped = 0
            for i in track(indices, description=f"  {split}", total=len(indices)):
                image = pathfinder.load_image(paths[i])
                if pathfinder.is_empty(image):
                    skipped += 1
                    continue
                yield int(i), {"inputs": image.reshape(-1), "label": int(labels[i])}
            if skipped:
                print(f"  {split}: skipped {skipped} empty image(s) of {len(indices)}", flush=True)

    class LraTextBytes(FromTaskModule):
        """IMDB reviews as UTF-8 bytes (truncated to the task's length) and labels 0 neg / 1 pos."""

        TASK = "text"

        def _features(self):
            return {"inputs": byte_sequence(), "label": label()}

    class LraRetrievalBytes(FromTaskModule):
        """AAN document pairs as UTF-8 bytes (each truncated to the task's length) and labels 0/1."""

        TASK = "retrieval"

        def _features(self):
            return {"inputs1": byte_sequence(), "inputs2": byte_sequence(), "label": label()}

    class LraImageGray(FromTaskModule):
        """CIFAR-10 as 8-bit gray levels (LRA's luma) flattened row by row; train split 90/10 by a fixed seed."""

        TASK = "image"

        def _features(self):
            return {"inputs": tfds.features.Tensor(shape=(32 * 32,), dtype=np.uint8), "label": label()}

    return {
        "listops": ListOpsTokens,
        "pathfinder": PathfinderImages,
        "pathx": PathfinderImages,
        "text": LraTextBytes,
        "retrieval": LraRetrievalBytes,
        "image": LraImageGray,
    }


_BUILDERS: dict | None = None


def builder_class(task: str):
    global _BUILDERS
    if _BUILDERS is None:
        _BUILDERS = _builder_classes()
    return _BUILDERS[task]


def prepare(
    task: str,
    source_dir: Path,
    source_files: list[Path],
    cache_dir: Path,
    *,
    source=None,
    options: Mapping[str, Any] | None = None,
) -> dict:
    """Build (if needed) and open the TFDS dataset of `task`: returns split name -> random-access source.

    `source` (a loading.Source) and `options` (e.g. the truncation length) go to builders that read
    through a task module's `split_examples`; they are part of the cache key.
    """
    _quiet_tfds()
    if source is None:
        key = fingerprint(source_files, task)
    else:
        extra = json.dumps({"task": task, "kind": source.kind, "options": dict(options or {})}, sort_keys=True)
        key = fingerprint(source_files, extra, root=source.folder)
    data_dir = Path(cache_dir) / "tfds" / f"{task}-{key}"
    kwargs = {} if source is None else {"source": source, "options": options}
    def make_builder():
        return builder_class(task)(source_dir=source_dir, data_dir=str(data_dir), file_format="array_record", **kwargs)

    if not make_builder().is_prepared():
        # Runs of a sweep may start together: one prepares, the others wait and then reuse it.
        with atomic.exclusive(Path(cache_dir) / "locks" / f"tfds-{task}-{key}.lock"):
            builder = make_builder()
            if not builder.is_prepared():
                what = source_dir if source is None else source.describe()
                print(f"Preparing {task} from {what} into {data_dir} (once; later runs reuse it).", flush=True)
                # TFDS prints its own progress bars; keep its chatty stdout lines out of the run log.
                with contextlib.redirect_stdout(io.StringIO()):
                    builder.download_and_prepare()
                return builder.as_data_source()
    # A builder reads the dataset's split list when it is made: one made while another run was still
    # preparing would report the set as prepared yet know no splits. Make it after the check.
    return make_builder().as_data_source()


# ----------------------------------------------------------------------------------------------
# Datasets prepared from the TFDS catalog by the user: finding them

TFRECORD, ARRAY_RECORD = "tfrecord", "array_record"
_VERSION_DIR = re.compile(r"^\d+\.\d+\.\d+$")
_SHARD_NAME = re.compile(r"^(?P<stem>.+)\.(?P<format>[a-z_]+)-(?P<index>\d{5})-of-(?P<count>\d{5})$")


@dataclasses.dataclass(frozen=True)
class CatalogDataset:
    """One prepared version of a catalog dataset: `folder` is `<data_dir>/<name>/[<config>/]<version>`."""

    name: str
    folder: Path
    file_format: str  # "array_record" or "tfrecord"
    shards: Mapping[str, tuple[Path, ...]]  # split -> its shard files, in order
    shard_lengths: Mapping[str, tuple[int, ...]]  # split -> examples per shard (from dataset_info.json)

    @property
    def files(self) -> list[Path]:
        return [self.folder / "dataset_info.json", *(f for shards in self.shards.values() for f in shards)]


def _version_key(folder: Path) -> tuple[int, ...]:
    return tuple(int(x) for x in folder.name.split("."))


def catalog_folder(data_dir: Path, name: str, config: str | None) -> Path:
    return Path(data_dir) / name / config if config else Path(data_dir) / name


def find_catalog_dataset(
    data_dir: Path, name: str, config: str | None, splits: Sequence[str]
) -> tuple[CatalogDataset | None, list[str]]:
    """The newest complete prepared version of catalog dataset `name` under `data_dir`.

    Newest version first; within a version array_record before tfrecord, among the formats its
    dataset_info.json lists (`fileFormat`, `alternativeFileFormats`; none listed means tfrecord). A
    version counts when every split in `splits` has all its shards in that format (0 .. count-1, as
    many as dataset_info.json lists). Returns (dataset or None, what was found but not usable).
    """
    base = catalog_folder(data_dir, name, config)
    notes: list[str] = []
    if not base.is_dir():
        return None, notes
    versions = sorted(
        (p for p in base.iterdir() if p.is_dir() and _VERSION_DIR.match(p.name)), key=_version_key, reverse=True
    )
    for folder in versions:
        info_path = folder / "dataset_info.json"
        try:
            info = json.loads(info_path.read_text())
        except FileNotFoundError:
            notes.append(f"{folder} has no dataset_info.json (preparation did not finish?)")
            continue
        except (OSError, ValueError) as exc:
            notes.append(f"{info_path} is not readable JSON ({exc})")
            continue
        lengths = {
            s.get("name"): tuple(int(n) for n in s.get("shardLengths", ()))
            for s in info.get("splits", [])
            if isinstance(s, dict)
        }
        # The formats dataset_info.json lists (TFDS before 4.8 wrote none: tfrecord, its default).
        listed = {info.get("fileFormat") or TFRECORD, *info.get("alternativeFileFormats", [])}
        for file_format in (f for f in (ARRAY_RECORD, TFRECORD) if f in listed):
            shards, problems = {}, []
            for split in splits:
                found, problem = _split_shards(folder, name, split, file_format, lengths.get(split))
                shards[split] = found
                if problem:
                    problems.append(problem)
            if not problems:
                return CatalogDataset(name, folder, file_format, shards, {s: lengths.get(s, ()) for s in splits}), notes
            if any(shards.values()):
                notes.append(f"{folder} ({file_format}): " + "; ".join(problems))
        if not any(folder.glob(f"{name}-*.*-*-of-*")):
            notes.append(f"{folder} holds no {name}-<split>.<format>-NNNNN-of-NNNNN shard files")
    return None, notes


def _split_shards(
    folder: Path, name: str, split: str, file_format: str, lengths: tuple[int, ...] | None
) -> tuple[tuple[Path, ...], str | None]:
    by_index: dict[int, Path] = {}
    counts = set()
    for path in folder.glob(f"{name}-{split}.{file_format}-*-of-*"):
        match = _SHARD_NAME.match(path.name)
        if match and match["stem"] == f"{name}-{split}" and match["format"] == file_format:
            by_index[int(match["index"])] = path
            counts.add(int(match["count"]))
    if not by_index:
        return (), f"no {split} shards"
    if len(counts) != 1:
        return (), f"{split} shards of different counts ({sorted(counts)})"
    count = counts.pop()
    missing = [i for i in range(count) if i not in by_index]
    if missing:
        return (), f"{split}: {len(missing)} of {count} shards missing (e.g. number {missing[0]:05d})"
    if lengths and len(lengths) != count:
        return (), f"{split}: {count} shards, but dataset_info.json lists {len(lengths)}"
    return tuple(by_index[i] for i in range(count)), None


# ----------------------------------------------------------------------------------------------
# Reading them: TFRecord framing, CRC-32C, tf.train.Example


def _crc32c_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0x82F63B78), table >> 1).astype(np.uint32)
    return table


_CRC_TABLE = _crc32c_table()
_CRC_TABLE_LIST = [int(x) for x in _CRC_TABLE]


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord files use; plain Python, for short inputs."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE_LIST
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc32c_many(messages: Sequence[bytes], chunk: int = 1024) -> np.ndarray:
    """CRC-32C of many messages at once (uint32 array), vectorized over messages with numpy.

    Messages are sorted by length and processed in chunks, right-aligned: at byte column j only
    the rows long enough to have started are updated (the longest rows, a suffix of the chunk).
    """
    out = np.empty(len(messages), np.uint32)
    order = np.argsort(np.fromiter((len(m) for m in messages), np.int64, len(messages)), kind="stable")
    for start in range(0, len(order), chunk):
        rows = order[start : start + chunk]
        lengths = np.array([len(messages[i]) for i in rows], np.int64)
        width = int(lengths.max()) if len(rows) else 0
        buf = np.zeros((len(rows), width), np.uint8)
        for r, i in enumerate(rows):
            if lengths[r]:
                buf[r, width - lengths[r] :] = np.frombuffer(messages[i], np.uint8)
        crc = np.full(len(rows), 0xFFFFFFFF, np.uint32)
        begins = width - lengths  # ascending lengths -> descending begins
        for j in range(int(begins.min()) if len(rows) else 0, width):
            first = int(np.searchsorted(-begins, -j, side="left"))  # rows with begin <= j
            c = crc[first:]
            crc[first:] = _CRC_TABLE[(c ^ buf[first:, j]) & 0xFF] ^ (c >> 8)
        out[rows] = crc ^ np.uint32(0xFFFFFFFF)
    return out


def masked_crc(crc: int | np.ndarray):
    """TFRecord's masking of a CRC-32C: rotate right by 15 bits, add 0xa282ead8 (mod 2**32)."""
    if isinstance(crc, np.ndarray):
        crc = crc.astype(np.uint64)
        return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def read_tfrecord(path: Path, batch: int = 2048) -> Iterator[bytes]:
    """The records of one (uncompressed) TFRecord file, in order; both CRCs of every record checked.

    Raises DataError naming the file, the record and its byte offset for a truncated or corrupt file.
    """
    path = Path(path)
    pending: list[tuple[int, int, bytes, int]] = []  # (record number, offset, data, stored crc)

    def verify():
        crcs = masked_crc(crc32c_many([data for _, _, data, _ in pending]))
        for (number, offset, _, stored), actual in zip(pending, crcs):
            if int(actual) != stored:
                raise DataError(
                    f"{path}: record {number} (byte offset {offset}) is corrupt: its data does not match its "
                    "CRC-32C. The file is damaged; prepare the dataset again."
                )
        out = [data for _, _, data, _ in pending]
        pending.clear()
        return out

    with open(path, "rb") as f:
        number = 0
        while True:
            offset = f.tell()
            header = f.read(12)
            if not header:
                break
            if len(header) < 12:
                raise DataError(
                    f"{path}: truncated at byte {offset} (record {number}): {len(header)} of 12 header bytes."
                )
            (length,) = struct.unpack("<Q", header[:8])
            (length_crc,) = struct.unpack("<I", header[8:])
            if masked_crc(crc32c(header[:8])) != length_crc:
                raise DataError(
                    f"{path}: record {number} (byte offset {offset}): the length field does not match its CRC-32C; "
                    "not a TFRecord file, compressed, or damaged."
                )
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                raise DataError(
                    f"{path}: truncated in record {number} (byte offset {offset}): expected {length} data bytes "
                    f"and a 4-byte CRC, found {len(data)} and {len(footer)}."
                )
            pending.append((number, offset, data, struct.unpack("<I", footer)[0]))
            number += 1
            if len(pending) >= batch:
                yield from verify()
    if pending:
        yield from verify()


def parse_example(record: bytes) -> dict[str, list]:
    """A serialized tf.train.Example -> {feature name: list of values (bytes, int or float)}."""
    from google.protobuf.message import DecodeError
    from tensorflow_datasets.proto import tf_example_pb2

    try:
        example = tf_example_pb2.Example.FromString(record)
    except DecodeError as exc:
        raise ValueError(f"not a tf.train.Example ({exc})") from None
    out = {}
    for key, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        out[key] = list(getattr(feature, kind).value) if kind else []
    return out


def iter_catalog_split(dataset: CatalogDataset, split: str, keys: Sequence[str]) -> Iterator[dict]:
    """The examples of one split of a prepared catalog dataset, in stored order: {key: value}.

    array_record: decoded by TFDS (Text -> bytes, ClassLabel -> int, Image -> uint8 array).
    tfrecord: as stored (Text -> bytes, ClassLabel -> int, Image -> encoded PNG/JPEG bytes).
    Raises DataError for an example without one of `keys` or for a shard whose record count differs
    from dataset_info.json.
    """
    if dataset.file_format == ARRAY_RECORD:
        yield from _iter_array_record(dataset, split, keys)
        return
    lengths = dataset.shard_lengths.get(split) or ()
    for shard_number, shard in enumerate(dataset.shards[split]):
        count = 0
        for count, record in enumerate(read_tfrecord(shard), start=1):
            try:
                features = parse_example(record)
            except ValueError as exc:
                raise DataError(f"{shard}: record {count - 1}: {exc}.") from None
            missing = [k for k in keys if k not in features]
            bad = [k for k in keys if k in features and len(features[k]) != 1]
            if missing or bad:
                raise DataError(
                    f"{shard}: record {count - 1}: expected one value for each of {list(keys)}, found features "
                    f"{ {k: len(v) for k, v in features.items()} }. Is this the {dataset.name} dataset?"
                )
            yield {k: features[k][0] for k in keys}
        if lengths and count != lengths[shard_number]:
            raise DataError(
                f"{shard}: {count} records, but {dataset.folder / 'dataset_info.json'} says {lengths[shard_number]}. "
                "The dataset is incomplete or damaged; prepare it again."
            )


def _iter_array_record(dataset: CatalogDataset, split: str, keys: Sequence[str]) -> Iterator[dict]:
    _quiet_tfds()
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder_from_directory(str(dataset.folder))
        source = builder.as_data_source(split=split, file_format=ARRAY_RECORD)
    except Exception as exc:  # noqa: BLE001 - TFDS raises many kinds; all mean "cannot read this folder"
        raise DataError(f"cannot open {dataset.folder} ({split}) with tensorflow-datasets: {exc}") from None
    step = 512
    for start in range(0, len(source), step):
        indices = list(range(start, min(start + step, len(source))))
        try:
            examples = source.__getitems__(indices)
        except Exception as exc:  # noqa: BLE001
            raise DataError(
                f"{dataset.folder} ({split}): cannot read examples {indices[0]}-{indices[-1]}: {exc}"
            ) from None
        for example in examples:
            missing = [k for k in keys if k not in example]
            if missing:
                raise DataError(
                    f"{dataset.folder}: examples have features {sorted(example)}, not {list(keys)}. "
                    f"Is this the {dataset.name} dataset?"
                )
            yield {k: example[k] for k in keys}
