"""Random streams: one helper to run code on a seeded stream of its own, and the state of every
stream a fit draws from (what a checkpoint keeps for an exact resume)."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device | str | None = None):
    """Run the code inside on torch's streams (the CPU's, and ``device``'s when it is a GPU)
    seeded with ``seed`` (None: as they are), and put them back afterwards: code outside draws
    the same numbers as if the block had not run."""
    device = torch.device(device) if device is not None else None
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        yield


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
