"""Training checkpoints: written whole or not at all, read as tensors and plain data only, newest usable first.

A checkpoint is ``state.pt`` in a folder that Ray Train copies into the run folder
(``OUT/ray_results/<run>/checkpoint_*``; an in-process run keeps it in
``OUT/checkpoints/checkpoint_*``). It holds the model, optimiser and grad-scaler
state dicts and the epoch: tensors, numbers, strings, lists and dicts, so it is read with
``torch.load(weights_only=True)`` and a crafted file cannot run code. A run folder that
filled up can still leave a truncated copy behind; ``--resume`` therefore takes the newest
checkpoint that actually loads and says which ones it skipped.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from common.atomic import atomic_write
from common.errors import DataError, StorageError

__all__ = ["CHECKPOINT_FILE", "KEEP_CHECKPOINTS", "LOCAL_FOLDER", "load_checkpoint", "load_plain", "newest_loadable",
           "write_checkpoint"]

CHECKPOINT_FILE = "state.pt"
LOCAL_FOLDER = "checkpoints"  # under OUT: where an in-process run (training.runner) keeps its checkpoints
KEEP_CHECKPOINTS = 2  # the newest checkpoints a run keeps, under Ray Train or in process


def write_checkpoint(folder: Path, state: dict[str, Any]) -> Path:
    """``folder/state.pt`` via temp file + fsync + rename; a full disk raises :class:`StorageError` naming it."""
    path = folder / CHECKPOINT_FILE
    try:
        atomic_write(path, lambda fh: torch.save(state, fh), "wb")
    except OSError as err:
        raise StorageError(str(path), f"could not write the checkpoint ({err.strerror or err}); free space "
                                      "on that disk or point --out at one with room") from err
    return path


def load_plain(path: Path, what: str) -> Any:
    """``torch.load(weights_only=True)`` of a file this project wrote (a checkpoint, ``model.pt``):
    :class:`DataError` naming the file if it is missing, truncated, or holds anything but tensors and
    plain data, since unpickling an arbitrary object can run code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise DataError(str(path), f"{what} is missing") from err
    except pickle.UnpicklingError as err:
        raise DataError(str(path), f"refused to load this {what}: it holds pickled objects, not only tensors "
                                   "and plain data, and unpickling them could run code; use a file written "
                                   f"by smartcache train ({str(err).splitlines()[0]})") from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:  # torch reports a cut zip as EINVAL too
        detail = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
        raise DataError(str(path), f"{what} is truncated, corrupt or unreadable ({detail})") from err


def load_checkpoint(folder: str | Path) -> dict[str, Any]:
    """The state saved by :func:`write_checkpoint` (see :func:`load_plain` for what is refused)."""
    path = Path(folder) / CHECKPOINT_FILE
    state = load_plain(path, "checkpoint")
    if not isinstance(state, dict) or "epoch" not in state:
        raise DataError(str(path), "not a training checkpoint (no 'epoch' entry)")
    return state


def _candidates(out_dir: Path) -> list[Path]:
    # checkpoint folders only: Ray Train also writes checkpoint_manager_snapshot.json beside them
    found = [*(out_dir / "ray_results").glob("*/checkpoint_*"), *(out_dir / LOCAL_FOLDER).glob("checkpoint_*")]
    return sorted((p for p in found if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)


def newest_loadable(out_dir: Path) -> "ray.train.Checkpoint | None":
    """The newest checkpoint under ``out_dir`` that loads; each newer one that does not is skipped with a warning."""
    import ray.train  # here, not at the top: `smartcache predict` reads model files without Ray

    for folder in _candidates(out_dir):
        try:
            load_checkpoint(folder)
        except DataError as err:
            print(f"warning: skipping checkpoint {folder} for --resume: {err}")
            continue
        return ray.train.Checkpoint.from_directory(str(folder))
    return None
