"""Running `python -m ssm_lra.data` from the generator tests, and what its bad-argument errors
must look like."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_data_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "ssm_lra.data", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def assert_generate_rejects(tmp_path: Path, defaults: dict, args: list[str]) -> None:
    """`generate` with `defaults` (flag -> value) overridden by `args` exits with status 2 and one
    line "error: ...", no traceback. "{blocked}" in a value is a path under an existing file."""
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    flags = {**defaults, **dict(zip(args[::2], args[1::2]))}
    argv = ["generate"] + [x.replace("{blocked}", str(blocked)) for kv in flags.items() for x in kv]
    result = run_data_cli(*argv)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
