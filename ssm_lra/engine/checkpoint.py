"""Checkpoints through orbax: `latest` (for resume) and `best` (best validation accuracy).

Orbax writes each checkpoint into a temporary folder and renames it when complete, and deletes
the previous one only after the new one is committed, so a crash during a save leaves the last
good checkpoint loadable. Orbax's own step numbers here count saves (the same training step may
be saved twice, e.g. before and after an evaluation); the training step is kept in the metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

KINDS = ("latest", "best")


class CheckpointMismatch(ValueError):
    """A checkpoint whose arrays (names or shapes) are not those of the state it should fill."""


def _path_name(path: tuple) -> str:
    return "/".join(str(next((getattr(k, a) for a in ("key", "name", "idx") if hasattr(k, a)), k)) for k in path)


def array_shapes(tree: Any) -> dict[str, tuple]:
    """{"params/block_0/.../kernel": shape, ...} of a pytree of arrays or of orbax array metadata."""
    return {_path_name(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def shape_differences(saved: dict[str, tuple], wanted: dict[str, tuple], most: int = 3) -> list[str]:
    """What keeps `saved` from filling `wanted`, in words, in the order of `wanted` (a train state's:
    step, parameters, batch statistics, ...), at most `most` items (then a count)."""
    diffs = [f"{name}: saved {saved[name]}, the model has {shape}"
             for name, shape in wanted.items() if name in saved and saved[name] != shape]
    diffs += [f"{name} is not in the checkpoint" for name in wanted if name not in saved]
    diffs += [f"{name} is in the checkpoint but not in the model" for name in saved if name not in wanted]
    return diffs[:most] + ([f"and {len(diffs) - most} more"] if len(diffs) > most else [])


class Checkpoints:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True, enable_async_checkpointing=False)
        # The handlers named up front, so that a manager that has not saved (a resume, an evaluation)
        # can read a checkpoint's metadata before restoring it.
        self._managers = {
            kind: ocp.CheckpointManager(
                self.directory / kind,
                options=options,
                item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
            )
            for kind in KINDS
        }

    def save(self, kind: str, step: int, state: Any, meta: dict) -> None:
        manager = self._managers[kind]
        index = (manager.latest_step() or 0) + 1
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({**meta, "step": step}))
        manager.save(index, args=args, force=True)
        manager.wait_until_finished()

    def latest_step(self, kind: str) -> int | None:
        """The training step of the newest `kind` checkpoint (None if there is none)."""
        meta = self.meta(kind)
        return None if meta is None else int(meta["step"])

    def meta(self, kind: str) -> dict | None:
        manager = self._managers[kind]
        index = manager.latest_step()
        if index is None:
            return None
        return dict(manager.restore(index, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def restore(self, kind: str, like: Any) -> tuple[Any, dict]:
        """Restore the newest checkpoint of `kind` into the structure (and sharding) of `like`;
        returns (state, meta)."""
        manager = self._managers[kind]
        index = manager.latest_step()
        if index is None:
            raise FileNotFoundError(f"no '{kind}' checkpoint in {self.directory}")
        # Compared before any array is read: orbax would fail part-way, with reads still pending.
        metadata = manager.item_metadata(index)["state"]
        if metadata is not None:  # a checkpoint without array metadata goes straight to orbax
            diffs = shape_differences(array_shapes(metadata.tree), array_shapes(like))
            if diffs:
                raise CheckpointMismatch("; ".join(diffs))
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        restored = manager.restore(index, args=args)
        return restored["state"], dict(restored["meta"])

    def close(self) -> None:
        for manager in self._managers.values():
            manager.close()
