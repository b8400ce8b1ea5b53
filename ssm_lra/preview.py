"""Look at a task's data as training reads it: `python -m ssm_lra.preview task=pathfinder [split=train]
[num=16] [out=FILE] [any training override, e.g. data.root=PATH or data.generate=true data.tiny=true]`.

The config is composed by Hydra from the same tree as `python -m ssm_lra.train`, and the data is
opened by the same `load_task_data`, so a preview shows exactly what a run with these overrides
would train on (and a missing dataset ends with the same one-line error).

Image-like tasks (pathfinder, pathx, image) give a PNG grid of the first `num` examples of the
split with their labels (default file: preview_<task>_<split>.png); sequence tasks (listops, text,
retrieval) print the examples as text (ListOps tokens, the bytes of Text and of both Retrieval
documents) and with out=FILE also write them there.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from ssm_lra.errors import UserError

IMAGE_TASKS = ("pathfinder", "pathx", "image")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PATHFINDER_CLASSES = ("not connected", "connected")
TEXT_CLASSES = ("negative", "positive")
RETRIEVAL_CLASSES = ("not linked", "linked")
SHOWN_CHARACTERS = 300  # of each text example: enough to recognise it


def class_name(task: str, label: int) -> str:
    names = {"image": CIFAR10_CLASSES, "pathfinder": PATHFINDER_CLASSES, "pathx": PATHFINDER_CLASSES,
             "text": TEXT_CLASSES, "retrieval": RETRIEVAL_CLASSES}.get(task)
    return f"{label} ({names[label]})" if names and 0 <= label < len(names) else str(label)


def compose_config(overrides: Sequence[str]):
    """The training config for these overrides, composed as `python -m ssm_lra.train` composes it."""
    from hydra import compose, initialize
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize(version_base="1.3", config_path="../conf"):
            return compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise UserError(str(e).splitlines()[0]) from None


def as_image(inputs: np.ndarray) -> np.ndarray:
    """A flattened square image (side^2,) or (side^2, 1) -> (side, side)."""
    flat = np.asarray(inputs).reshape(-1)
    side = int(round(np.sqrt(flat.size)))
    if side * side != flat.size:
        raise UserError(f"an example of {flat.size} values is not a square image.")
    return flat.reshape(side, side)


def listops_text(ids: np.ndarray) -> str:
    from ssm_lra.data.listops import EOS_ID, PAD_ID, TOKEN_IDS

    symbols = {i: s for s, i in TOKEN_IDS.items()}
    # The release tokenizer wrote `]` as X: show it as `]` again.
    return " ".join("]" if symbols.get(int(i)) == "X" else symbols.get(int(i), "?") for i in ids if int(i) not in (PAD_ID, EOS_ID))


def bytes_text(values: np.ndarray, limit: int = SHOWN_CHARACTERS) -> str:
    raw = bytes(np.asarray(values, np.uint8)[:limit].tolist())
    text = raw.decode("utf-8", errors="replace").replace("\n", " ")
    return text + (" ..." if len(values) > limit else "")


def example_text(task: str, example: dict) -> str:
    if task == "listops":
        return listops_text(example["inputs"])
    if task == "retrieval":
        return f"  doc 1: {bytes_text(example['inputs1'])}\n  doc 2: {bytes_text(example['inputs2'])}"
    return bytes_text(example["inputs"])


def image_grid(task: str, examples: Sequence[dict], path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    from ssm_lra.plot_runs import save_figure, use_headless_backend

    use_headless_backend()
    cols = min(len(examples), 8)
    rows = -(-len(examples) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, example in zip(axes.ravel(), examples):
        ax.imshow(as_image(example["inputs"]), cmap="gray", interpolation="nearest", vmin=0, vmax=255)
        ax.set_title(class_name(task, int(example["label"])), fontsize=7)
    fig.suptitle(title, fontsize=9, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    save_figure(fig, path)
    return path


def preview(overrides: Sequence[str], split: str = "train", num: int = 16, out: str | Path | None = None) -> tuple[Path | None, str]:
    """(written file or None, text shown) for the task these overrides select."""
    from omegaconf import OmegaConf

    from ssm_lra.data.loading import load_task_data
    from ssm_lra.data.tasks import task_spec
    from ssm_lra.engine.setup import resolved_task_config

    cfg = compose_config(overrides)
    task_cfg = resolved_task_config(cfg)
    spec = task_spec(task_cfg)  # unknown tasks and options: a clear error before any data is read
    data = load_task_data(task_cfg, OmegaConf.to_container(cfg.data, resolve=True))
    if split not in data.splits:
        raise UserError(f"split={split!r} is not one of {sorted(data.splits)}.")
    source = data.splits[split]
    examples = [source[i] for i in range(min(num, len(source)))]
    counts = ", ".join(f"{name} {len(s):,}" for name, s in data.splits.items())
    header = f"{spec.name} ({data.source_dir.name}): {counts} examples; the first {len(examples)} of {split}"
    if spec.name in IMAGE_TASKS:  # image with task.input=tokens holds the same gray levels
        path = Path(out) if out else Path(f"preview_{spec.name}_{split}.png")
        return image_grid(spec.name, examples, path, header), header
    lines = [header]
    for i, example in enumerate(examples):
        lines.append(f"[{i}] label {class_name(spec.name, int(example['label']))}:")
        lines.append(example_text(spec.name, example) if spec.name == "retrieval" else "  " + example_text(spec.name, example))
    text = "\n".join(lines)
    if out:
        from ssm_lra import atomic

        atomic.write_text(Path(out), text + "\n")
        return Path(out), text
    return None, text


USAGE = "usage: python -m ssm_lra.preview task=TASK [split=train|validation|test] [num=16] [out=FILE] [training overrides...]"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE + "\n\n" + __doc__)
        return 0
    own = {"split": "train", "num": "16", "out": None}
    overrides = []
    for arg in argv:
        key = arg.split("=", 1)[0]
        if "=" in arg and key in own:
            own[key] = arg.split("=", 1)[1]
        else:
            overrides.append(arg)
    try:
        if not own["num"].isdigit() or int(own["num"]) < 1:
            raise UserError(f"num={own['num']!r} must be a positive integer.")
        path, text = preview(overrides, own["split"], int(own["num"]), own["out"])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    if path is not None:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
