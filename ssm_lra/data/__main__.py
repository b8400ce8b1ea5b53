"""Dataset command line: `python -m ssm_lra.data generate --task listops --out DIR --num N --seed S`.

Tasks: listops; pathfinder32, pathfinder64, pathfinder128, pathfinder256 (with --contour-length 6, 9
or 14) and pathx (pathfinder128 at contour length 14).

A task is added by putting a `TaskGenerator` into `GENERATORS`: its `add_arguments` adds the task's
own options (in an argument group named after the task), its `run` generates the files from the
parsed arguments and returns split -> count. Tasks that share an `add_arguments` function share
one argument group.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

from ssm_lra.errors import UserError


class TaskGenerator(NamedTuple):
    add_arguments: Callable[[argparse._ArgumentGroup], None]
    run: Callable[[argparse.Namespace], dict]
    unit: str  # what one example is called in the summary line ("trees", "images")
    default_num: int  # the release's size, used when --num is not given


def _listops_arguments(group) -> None:
    group.add_argument("--min-length", type=int, default=500, help="keep trees longer than this (default 500)")
    group.add_argument("--max-length", type=int, default=2000, help="keep trees shorter than this (default 2000)")
    group.add_argument("--max-depth", type=int, default=10, help="maximum nesting depth (default 10)")
    group.add_argument("--max-args", type=int, default=10, help="maximum arguments per operator (default 10)")


def _listops_run(args: argparse.Namespace) -> dict:
    from ssm_lra.data.listops import generate_listops_release

    return generate_listops_release(
        args.out,
        args.num,
        seed=args.seed,
        workers=args.workers,
        min_length=args.min_length,
        max_length=args.max_length,
        max_depth=args.max_depth,
        max_args=args.max_args,
        progress=args.progress,
    )


def _pathfinder_arguments(group) -> None:
    group.add_argument(
        "--contour-length",
        type=int,
        choices=(6, 9, 14),
        default=None,
        help="paddles per target snake: 6 easy (curv_baseline), 9 medium, 14 hard (default 14; pathx: always 14)",
    )


def _pathfinder_runner(resolution: int, forced_contour: int | None = None) -> Callable[[argparse.Namespace], dict]:
    def run(args: argparse.Namespace) -> dict:
        from ssm_lra.data.pathfinder import generate_pathfinder_release

        contour = args.contour_length
        if forced_contour is not None:
            if contour is not None and contour != forced_contour:
                raise UserError(
                    f"--task {args.task} is Path-X: its contour length is always {forced_contour}; for the "
                    f"easier sets use --task pathfinder{resolution} --contour-length {contour}."
                )
            contour = forced_contour
        elif contour is None:
            contour = 14
        folder = generate_pathfinder_release(
            args.out, resolution, contour, args.num, seed=args.seed, workers=args.workers, progress=args.progress
        )
        return {f"{folder.name} images": args.num}

    return run


GENERATORS: dict[str, TaskGenerator] = {
    "listops": TaskGenerator(_listops_arguments, _listops_run, "trees", 100_000),
    # Pathfinder: `--out lra_release/pathfinder32` writes lra_release/pathfinder32/<difficulty>/...
    "pathfinder32": TaskGenerator(_pathfinder_arguments, _pathfinder_runner(32), "images", 200_000),
    "pathfinder64": TaskGenerator(_pathfinder_arguments, _pathfinder_runner(64), "images", 200_000),
    "pathfinder128": TaskGenerator(_pathfinder_arguments, _pathfinder_runner(128), "images", 200_000),
    "pathfinder256": TaskGenerator(_pathfinder_arguments, _pathfinder_runner(256), "images", 200_000),
    "pathx": TaskGenerator(_pathfinder_arguments, _pathfinder_runner(128, forced_contour=14), "images", 200_000),
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line, like every other user error."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _int_at_least(minimum: int):
    """An argparse type: an integer >= minimum, else a one-line error naming the bound."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_seed = _int_at_least(0)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m ssm_lra.data", description="Generate the synthetic LRA datasets.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    gen = commands.add_parser("generate", help="generate a task's files in the release format")
    gen.add_argument("--task", required=True, choices=sorted(GENERATORS), help="which dataset to generate")
    gen.add_argument("--out", required=True, type=Path, help="output directory (created if missing)")
    gen.add_argument(
        "--num", type=_positive_int, default=None, help="number of examples (default: the release's size)"
    )
    gen.add_argument("--seed", type=_seed, default=0, help="random seed; the same seed gives the same files")
    gen.add_argument(
        "--workers", type=_positive_int, default=os.cpu_count() or 1, help="worker processes (default: all cores)"
    )
    gen.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    # One argument group per distinct add_arguments function (tasks may share their options).
    sharing: dict[Callable, list[str]] = {}
    for task, generator in GENERATORS.items():
        sharing.setdefault(generator.add_arguments, []).append(task)
    for add_arguments, tasks in sharing.items():
        add_arguments(gen.add_argument_group(f"{', '.join(tasks)} options"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    generator = GENERATORS[args.task]
    if args.num is None:
        args.num = generator.default_num
    start = time.perf_counter()
    try:
        counts = generator.run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    elapsed = time.perf_counter() - start
    total = sum(counts.values())
    splits = ", ".join(f"{n} {split}" for split, n in counts.items())
    workers = f"{args.workers} worker" + ("s" if args.workers > 1 else "")
    rate = f"{total / max(elapsed, 1e-9):.0f} {generator.unit}/s"
    print(f"{args.task}: wrote {splits} to {args.out} in {elapsed:.1f} s ({rate}, seed {args.seed}, {workers})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
