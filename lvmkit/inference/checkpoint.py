"""Checkpoints: written atomically, read with ``weights_only=True`` so loading never runs code."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

FORMAT = "lvmkit-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, foreign, or does not fit the model being trained."""


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write ``state`` to ``path`` via a temp file + rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, "version": VERSION, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; CheckpointError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train without resume first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (corrupt, truncated, or holds objects other than "
            f"tensors and plain containers): {str(err).splitlines()[0]}; delete it to start over"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a torch file but not an lvmkit checkpoint (no '{FORMAT}' marker); "
            "point checkpoint_dir at a folder lvmkit wrote"
        )
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {state.get('version')}, this lvmkit reads {VERSION}"
        )
    return state
