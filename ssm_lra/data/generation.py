"""What the synthetic-data generators (ListOps, Pathfinder / Path-X) share: checking the common
arguments with one-line errors, and the progress bar they draw on stderr."""

from __future__ import annotations

from ssm_lra.errors import UserError


def check_generation_args(num: int, seed: int, workers: int, items: str = "examples") -> None:
    """UserError for a count below 1, a negative seed or fewer than one worker."""
    if num < 1:
        raise UserError(f"the number of {items} must be at least 1, got {num}.")
    if seed < 0:
        raise UserError(f"the seed must be a non-negative integer, got {seed}.")
    if workers < 1:
        raise UserError(f"the number of workers must be at least 1, got {workers}.")


def generation_progress(title: str):
    """A rich progress bar on stderr (count, elapsed, remaining) that clears itself when done."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.progress import TimeRemainingColumn

    return Progress(
        TextColumn(title),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
