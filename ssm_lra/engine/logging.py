"""Where a run's numbers go: metrics.jsonl, summary.json, Weights & Biases, and the progress bar."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ssm_lra import atomic
from ssm_lra.errors import ConfigError

WANDB_MODES = ("offline", "online", "disabled")


def _plain(value):
    """JSON-ready: Python ints stay ints, array scalars become floats, NaN/inf become strings."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, np.integer):
        return int(value)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return value
    return value if math.isfinite(value) else str(value)


class RunLogger:
    """One place for everything a run reports: a JSON line per record, and W&B when it is on.

    A resumed run passes the W&B run id it saved (`resume_id`) and continues that W&B run. In a
    multi-host job only the first process reports (`enabled`); the others log nothing.
    """

    def __init__(
        self, run_dir: Path, logger_cfg: Mapping[str, Any], config: dict, resume_id: str | None = None, enabled: bool = True
    ):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._metrics = open(self.run_dir / "metrics.jsonl", "a", buffering=1) if enabled else None
        self._wandb = None
        self._wandb_step = 0
        if enabled and logger_cfg.get("name", "wandb") == "wandb":
            mode = logger_cfg.get("mode", "offline")
            if mode not in WANDB_MODES:
                raise ConfigError(f"logger.mode={mode!r} is not one of {list(WANDB_MODES)}.")
            import wandb

            self._wandb = wandb.init(
                project=logger_cfg.get("project", "ssm_lra"),
                entity=logger_cfg.get("entity"),
                group=logger_cfg.get("group"),
                tags=list(logger_cfg.get("tags") or []),
                name=logger_cfg.get("run_name"),
                id=resume_id,
                resume="allow" if resume_id else None,
                mode=mode,
                dir=str(self.run_dir),
                config=config,
                settings=wandb.Settings(console="off", silent=True),
            )

    @property
    def wandb_run(self):
        """The live W&B run (None when W&B is off)."""
        return self._wandb

    @property
    def wandb_run_id(self) -> str | None:
        return None if self._wandb is None else self._wandb.id

    def log(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {k: _plain(v) for k, v in record.items()}
        self._metrics.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            split = record.get("split", "train")
            payload = {f"{split}/{k}": v for k, v in record.items() if k != "split"}
            # W&B steps only go forward; a record about an earlier step (the test at the best
            # checkpoint) is logged at the current one and keeps its own step in the payload.
            step = record.get("step")
            self._wandb_step = max(self._wandb_step, int(step)) if step is not None else self._wandb_step
            self._wandb.log(payload, step=self._wandb_step)

    def summary(self, summary: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        summary = {k: _plain(v) for k, v in summary.items()}
        atomic.write_json(self.run_dir / "summary.json", summary)
        if self._wandb is not None:
            self._wandb.summary.update(summary)

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def progress_bar(console: Console | None = None) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    )
