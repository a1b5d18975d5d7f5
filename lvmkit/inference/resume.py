"""Stopping and continuing a fit: SIGINT/SIGTERM as a flag, the random streams a checkpoint
holds, and the check that a checkpoint belongs to the fit that resumes it."""

from __future__ import annotations

import random
import signal
import threading
from pathlib import Path

import numpy as np
import torch

from lvmkit.inference.checkpoint import CheckpointError, load_checkpoint

SECTIONS = ("config", "trainer", "loop", "rng")  # what lvmkit.fit writes into a checkpoint


class StopOnSignal:
    """Turn SIGINT/SIGTERM into a flag (``signum``) the loop checks between steps; a second
    signal aborts at once."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def rng_state(device: torch.device, shuffle: torch.Generator) -> dict:
    """Every random stream a fit draws from (torch, CUDA, the shuffle, NumPy, Python)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "shuffle": shuffle.get_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict, device: torch.device, shuffle: torch.Generator) -> None:
    """Put back the streams ``rng_state`` saved."""
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    shuffle.set_state(state["shuffle"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(_as_tuple(state["python"]))


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def load_resumable(path: Path, settings: dict) -> dict:
    """The checkpoint at ``path``, if ``lvmkit.fit`` wrote it with these ``settings``;
    CheckpointError saying what differs otherwise."""
    ckpt = load_checkpoint(path)
    missing = set(SECTIONS) - set(ckpt)
    if missing:
        raise CheckpointError(
            f"{path} lacks {sorted(missing)}: it was not written by lvmkit.fit; "
            "start over with overwrite=True (lvmkit fit --overwrite)"
        )
    saved = dict(ckpt["config"])
    if "num_particles" in saved:  # checkpoints written before num_samples had this name
        saved["num_samples"] = saved.pop("num_particles")
    saved.setdefault("data", settings.get("data"))  # checkpoints written before data was kept
    if saved.get("data") != settings.get("data"):
        raise CheckpointError(
            f"{path} was written fitting other data ({saved['data']}) than this fit's "
            f"({settings['data']}); resume with the data it was fitted on, or start over with "
            "overwrite=True (lvmkit fit --overwrite)"
        )
    diff = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
    if diff:
        details = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(
            f"{path} was written with other settings ({details}); pass the same "
            "settings to resume, or start over with overwrite=True (lvmkit fit --overwrite)"
        )
    return ckpt
