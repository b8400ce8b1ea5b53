"""The bytes each operation of a profiled training step moves, and the bandwidth it reached: the
optimized HLO that `scripts/profile_step.py --hlo` writes, read next to that profile's times.

    python scripts/hlo_traffic.py PROFILE.md [--part S4D] [--top 40] [--below 1.0]
    python scripts/hlo_traffic.py PROFILE.md --order block_2/       # one block's ops in program order
    python scripts/hlo_traffic.py PROFILE.md --show input_transpose_fusion.17   # what it computes

PROFILE.md is a `profile-<experiment>.md`; its HLO is the `.hlo.txt.gz` of the same stem unless
--hlo names another. Bytes are each operand read once and each result written once, from the
types the HLO states (`ssm_lra.bench.hlo.instruction_io`): a lower bound on what a kernel moves. An
operation far below the device's bandwidth with few bytes is latency-bound (a scatter of atomic
adds, a tiny reduction); one near it moves what it must, and only a pass less saves time.
"""

from __future__ import annotations

import argparse
import gzip
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ssm_lra.bench import hlo

# A row of the profile's "Top operations" table: | op | kind | ms per step | launches | part | ...
PROFILE_ROW = re.compile(r"^\| ([\w.\-]+) \| ([^|]+) \| ([0-9.]+) \| (\d+) \| `([^`]*)` \|", re.M)


def profile_ops(md_text: str) -> list[dict]:
    """The profile's per-operation rows: op, kind, ms per step, launches per step, model part."""
    return [
        {"op": op, "kind": kind.strip(), "ms": float(ms), "launches": int(n), "part": part}
        for op, kind, ms, n, part in PROFILE_ROW.findall(md_text)
    ]


def traffic_rows(ops: list[dict], hlo_text: str) -> list[dict]:
    """The profile's rows that the HLO defines, with MB in and out and the TB/s reached."""
    io = hlo.instruction_io(hlo_text)
    rows = []
    for op in ops:
        if op["op"] not in io:
            continue
        read, written = io[op["op"]]
        seconds = op["ms"] / 1e3
        rows.append({**op, "mb_in": read / 1e6, "mb_out": written / 1e6,
                     "tb_s": (read + written) / seconds / 1e12 if seconds > 0 else 0.0})
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'ms':>6} {'op':38} {'kind':24} {'MB in':>8} {'MB out':>8} {'TB/s':>6}  part"]
    for r in rows:
        lines.append(f"{r['ms']:6.3f} {r['op']:38} {r['kind'][:24]:24} {r['mb_in']:8.1f} {r['mb_out']:8.1f} "
                     f"{r['tb_s']:6.2f}  {r['part']}")
    total = sum(r["ms"] for r in rows)
    lines.append(f"{total:6.3f} ms in {len(rows)} rows")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("profile", type=Path, help="a profile-<experiment>.md of scripts/profile_step.py")
    p.add_argument("--hlo", type=Path, help="its optimized HLO (default: the .hlo.txt.gz of the same stem)")
    p.add_argument("--part", default="", help="only the rows whose model part contains this")
    p.add_argument("--top", type=int, default=40, help="how many rows, slowest first")
    p.add_argument("--below", type=float, help="only rows below this many TB/s")
    p.add_argument("--order", metavar="OP_NAME_PART", help="rows in program order, for instructions whose op_name contains this")
    p.add_argument("--show", metavar="INSTRUCTION", help="print what one instruction computes and stop")
    args = p.parse_args(argv)
    hlo_path = args.hlo or args.profile.with_name(args.profile.stem + ".hlo.txt.gz")
    if not args.profile.is_file() or not hlo_path.is_file():
        missing = args.profile if not args.profile.is_file() else hlo_path
        print(f"error: {missing} not found (profile_step.py --hlo writes both)", file=sys.stderr)
        return 2
    opener = gzip.open if hlo_path.suffix == ".gz" else open
    with opener(hlo_path, "rt") as f:
        hlo_text = f.read()
    if args.show:
        try:
            print(hlo.called_computation(hlo_text, args.show))
        except KeyError as e:
            print(f"error: {e.args[0]}", file=sys.stderr)
            return 2
        return 0
    rows = traffic_rows(profile_ops(args.profile.read_text()), hlo_text)
    rows = [r for r in rows if args.part in r["part"] and (args.below is None or r["tb_s"] < args.below)]
    if args.order:
        position = {name: i for i, name in enumerate(hlo.entry_order(hlo_text, args.order))}
        rows = sorted((r for r in rows if r["op"] in position), key=lambda r: position[r["op"]])
    else:
        rows = sorted(rows, key=lambda r: -r["ms"])[: args.top]
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
