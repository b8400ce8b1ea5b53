"""Atomic file writes: write a temporary file beside the target, then rename it over the target.

A reader (or a crashed run's successor) sees the old file or the new one, never half of one.
`exclusive` serializes work that several processes may start at once (runs of a sweep preparing
the same cached dataset).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


@contextlib.contextmanager
def exclusive(path) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created if missing) for the block; other
    processes asking for the same lock wait. The lock goes with the process if it dies."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_open(path, mode: str = "w", fsync: bool = False, **open_kwargs) -> Iterator[IO]:
    """Open a temporary file for writing that replaces `path` when the block ends without error.

    fsync=True also flushes it to disk before the rename (for small files that must survive a
    power loss, like summaries); bulk data (many images) skips it for speed.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0o600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text(path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def write_json(path, obj: Any) -> None:
    with atomic_open(path, "w", fsync=True, encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
