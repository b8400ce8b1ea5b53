"""Find a task's files (the user's release copy, or generated ones), prepare them once, open the splits.

Real data is never faked: a task whose files are missing ends in a DataError that says where the
files were looked for and how to get them. Synthetic tasks are generated (seeded, in the release
format) only when asked: `data.generate=true`, which the smoke preset and the quick-start set.

Text, Retrieval and Image have more than one kind of source (a dataset prepared from the TFDS
catalog, or the raw archive): their modules' `locate` picks one in a fixed order of preference
and returns a `Source`; `split_examples(source, ...)` reads it when the cache is prepared.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from ssm_lra import atomic
from ssm_lra.data.tasks import TaskSpec, task_spec
from ssm_lra.errors import DataError

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass
class TaskData:
    spec: TaskSpec
    splits: dict[str, Sequence]  # split -> random-access source of {"inputs", "label"}
    source_dir: Path


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a task's data was found: what kind of source, its folder, and its files per split."""

    kind: str  # e.g. "tfds-array_record", "tfds-tfrecord", "aclImdb", "cifar-python", "aan-tsv"
    folder: Path  # the folder the files sit in (file names in the cache key are relative to it)
    splits: Mapping[str, tuple[Path, ...]]  # source split -> its files
    extra_files: tuple[Path, ...] = ()  # other files whose change must invalidate the cache
    catalog: Any = None  # tfds_builders.CatalogDataset for the TFDS kinds

    @property
    def files(self) -> list[Path]:
        return sorted({f for files in self.splits.values() for f in files} | set(self.extra_files))

    def describe(self) -> str:
        return f"{self.kind} in {self.folder}"


# Tasks whose data has several kinds of source: module in ssm_lra.data with locate() and split_examples().
SOURCE_TASKS = ("text", "retrieval", "image")


def tfds_dir(task_cfg: Mapping[str, Any]) -> Path:
    """Where the user's TFDS-prepared datasets are: task.tfds_dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets)."""
    return Path(task_cfg.get("tfds_dir") or "~/tensorflow_datasets").expanduser()


def catalog_source(
    task_cfg: Mapping[str, Any], name: str, config: str | None, splits: Sequence[str]
) -> tuple[Source | None, list[str], Path]:
    """The newest complete TFDS-prepared `name` under tfds_dir as a Source (array_record before
    tfrecord), or None; with notes on what was found but not usable, and the folder looked in."""
    from ssm_lra.data import tfds_builders

    where = tfds_dir(task_cfg)
    dataset, notes = tfds_builders.find_catalog_dataset(where, name, config, splits)
    looked = tfds_builders.catalog_folder(where, name, config) / "<version>"
    if dataset is None:
        return None, notes, looked
    source = Source(
        f"tfds-{dataset.file_format}",
        dataset.folder,
        dict(dataset.shards),
        extra_files=(dataset.folder / "dataset_info.json",),
        catalog=dataset,
    )
    return source, notes, looked


def missing_source_message(
    what: str, catalog: Path, notes: list[str], raw: str, candidates: list[Path], tfds_hint: str, raw_hint: str
) -> str:
    """One message for a task with a TFDS-catalog source and a raw-archive source, neither found."""
    found = f" (found but not usable: {'; '.join(notes)})" if notes else ""
    if candidates:
        looked = f"{raw} in {', '.join(str(c) for c in candidates)} (data.root)"
    else:
        looked = f"{raw} under data.root, which is not set"
    return (
        f"{what} data not found: looked for a prepared TFDS dataset in {catalog} (task.tfds_dir, default "
        f"$TFDS_DATA_DIR or ~/tensorflow_datasets){found}, and for {looked}. Either prepare it with {tfds_hint}, "
        f"or {raw_hint}."
    )


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a task's files sit in a release copy, and how to generate them."""

    subdirs: tuple[str, ...]  # candidate folders under data.root ("" is data.root itself)
    required: tuple[str, ...]  # names that must exist in the folder
    generate_command: str  # the command that writes such a folder

    def complete(self, folder: Path) -> bool:
        return all((folder / name).exists() for name in self.required)


def layout(spec: TaskSpec, task_cfg: Mapping[str, Any]) -> Layout:
    if spec.name == "listops":
        from ssm_lra.data.listops import SPLIT_FILES

        return Layout(
            ("", "listops-1000"),
            tuple(SPLIT_FILES[s] for s in SPLITS),
            "python -m ssm_lra.data generate --task listops --out DIR",
        )
    if spec.name in ("pathfinder", "pathx"):
        from ssm_lra.data.pathfinder import DIFFICULTY_FOLDERS

        resolution, contour = int(task_cfg["resolution"]), int(task_cfg["contour_length"])
        folder = DIFFICULTY_FOLDERS[contour]
        return Layout(
            ("", folder, f"pathfinder{resolution}/{folder}"),
            ("metadata",),
            f"python -m ssm_lra.data generate --task pathfinder{resolution} --contour-length {contour} --out DIR",
        )
    raise DataError(f"no loader for task {spec.name}")  # pragma: no cover - guarded by get_task_spec


def source_files(spec: TaskSpec, folder: Path) -> list[Path]:
    """The files whose names, sizes and times decide whether a prepared dataset is still current."""
    if spec.name == "listops":
        from ssm_lra.data.listops import SPLIT_FILES

        return [folder / SPLIT_FILES[s] for s in SPLITS]
    return sorted((folder / "metadata").glob("*"))


def generated_dir(cache_dir: Path, task: str, params: Mapping[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(dict(params), sort_keys=True).encode()).hexdigest()[:10]
    return Path(cache_dir) / "generated" / f"{task}-n{params['num']}-seed{params['seed']}-{key}"


def generate(spec: TaskSpec, task_cfg: Mapping[str, Any], data_cfg: Mapping[str, Any]) -> Path:
    """Generate (once) the synthetic task into the cache; returns the folder the loader reads."""
    params = dict(task_cfg["generate"])
    cache_dir = Path(data_cfg["cache_dir"]).expanduser()
    out = generated_dir(cache_dir, spec.name, params)
    workers = int(data_cfg.get("workers") or 1)
    # Runs of a sweep may start together: one generates, the others wait and then reuse it.
    with atomic.exclusive(cache_dir / "locks" / f"generated-{out.name}.lock"):
        if spec.name == "listops":
            from ssm_lra.data.listops import ensure_listops

            num, seed = params.pop("num"), params.pop("seed")
            return ensure_listops(out, num=num, seed=seed, workers=workers, **params)
        from ssm_lra.data.pathfinder import ensure_pathfinder

        return ensure_pathfinder(
            out, int(task_cfg["resolution"]), int(task_cfg["contour_length"]), params["num"], params["seed"],
            workers=workers,
        )


def locate(spec: TaskSpec, task_cfg: Mapping[str, Any], data_cfg: Mapping[str, Any]) -> Path:
    where = layout(spec, task_cfg)
    hint = (
        f"Generate a set with `{where.generate_command}` and pass data.root=DIR, or add data.generate=true "
        "to generate one into the cache."
        if spec.synthetic
        else ""
    )
    root = data_cfg.get("root")
    if root:
        root = Path(root).expanduser()
        candidates = [root / sub if sub else root for sub in where.subdirs]
        for folder in candidates:
            if where.complete(folder):
                return folder
        raise DataError(
            f"{spec.name} files not found: looked for {', '.join(where.required)} in "
            f"{', '.join(str(c) for c in candidates)}. Point data.root at your lra_release/ folder "
            f"(or the task's folder in it). {hint}".rstrip()
        )
    if spec.synthetic and data_cfg.get("generate"):
        return generate(spec, task_cfg, data_cfg)
    raise DataError(
        f"No {spec.name} data given: set data.root=PATH (or the SSM_LRA_DATA environment variable) to your "
        f"lra_release/ folder. {hint}".rstrip()
    )


def load_task_data(task_cfg: Mapping[str, Any], data_cfg: Mapping[str, Any]) -> TaskData:
    from ssm_lra.data import tfds_builders

    spec = task_spec(task_cfg)
    cache_dir = Path(data_cfg["cache_dir"]).expanduser()
    if spec.name in SOURCE_TASKS:
        module = importlib.import_module(f"ssm_lra.data.{spec.name}")
        source = module.locate(task_cfg, data_cfg)
        splits = tfds_builders.prepare(
            spec.name, source.folder, source.files, cache_dir, source=source, options=module.prepare_options(spec)
        )
        aliases = getattr(module, "SPLIT_ALIASES", {})
        return TaskData(spec=spec, splits={s: splits[aliases.get(s, s)] for s in SPLITS}, source_dir=source.folder)
    folder = locate(spec, task_cfg, data_cfg)
    splits = tfds_builders.prepare(spec.name, folder, source_files(spec, folder), cache_dir)
    return TaskData(spec=spec, splits={s: splits[s] for s in SPLITS}, source_dir=folder)


def hold_splits_in_memory(data: TaskData, mode, candidates: Sequence[str] | None = None) -> TaskData:
    """`data` with the splits that data.in_memory (`mode`) selects among `candidates` (by default
    training and validation, which training reads many times) read into memory once, with a
    progress bar (`pipeline.splits_to_hold`, `pipeline.InMemorySplit`)."""
    from ssm_lra.data.pipeline import HELD_SPLITS, InMemorySplit, splits_to_hold
    from ssm_lra.engine.logging import progress_bar

    names = splits_to_hold(data.splits, data.spec, mode, candidates=candidates or HELD_SPLITS)
    if not names:
        return data
    splits, spec = dict(data.splits), data.spec
    with progress_bar() as bar:
        for name in names:
            task = bar.add_task(f"reading {name} into memory", total=len(splits[name]), info="")
            advance = lambda n, task=task: bar.advance(task, n)  # noqa: E731
            splits[name] = InMemorySplit(splits[name], spec.seq_len, spec.tokens, spec.dual, progress=advance)
    return dataclasses.replace(data, splits=splits)
