"""Random streams: one helper to run code on a seeded stream of its own; the state of every
stream a fit draws from (what a checkpoint keeps for an exact resume); and draws by position:
uniforms hashed from (seed, epoch, a datapoint's index, what is drawn, the element), which the
loop makes every step's random numbers of (a datapoint gets the same numbers on any process).

The hash is PCG's output permutation on 32-bit words held in int64 tensors (no overflow), so it
runs where the data are and inside a traced step."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import random

import numpy as np
import torch
from torch import Tensor

from lvmkit.core.checks import check_seed


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device | str | None = None):
    """Run the code inside on torch's streams (the CPU's, and ``device``'s when it is a GPU)
    seeded with ``seed`` (None: as they are), and put them back afterwards: code outside draws
    the same numbers as if the block had not run."""
    if seed is not None:
        check_seed("seed", seed, limit=2**63)  # offsets of a seed (seed + rank) stay valid
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


MASK = 2**32 - 1
# The keys of the step being drawn (``drawn_by``) and how many draws each purpose made so far.
_KEYS: contextvars.ContextVar[tuple[Tensor, dict] | None] = contextvars.ContextVar(
    "lvmkit_draw_keys", default=None
)


def mix(x):
    """PCG's output hash of 32-bit words (ints, or int64 tensors of values in [0, 2^32)): a
    bijection whose output bits all depend on every input bit; products stay below 2^62."""
    x = (x * 747796405 + 2891336453) & MASK
    word = (((x >> ((x >> 28) + 4)) ^ x) * 277803737) & MASK
    return (word >> 22) ^ word


def draw_keys(seed: int, epoch: int, step: int, index: Tensor) -> Tensor:
    """The keys of one step's draws: (1 + n,) int64, the step's own (for sites outside the data
    plate, the same on every process) then one per datapoint, from its dataset ``index``."""
    base = mix(mix(seed & MASK) ^ (epoch & MASK))  # Python ints: no tensor op
    step_key = mix((base + step + 1) & MASK)
    rows = mix((index.long() + mix(base)) & MASK)
    return torch.cat([rows.new_tensor([step_key]), rows])


def uniforms(keys: Tensor, shape: torch.Size, data_dim: int | None, site: int,
             dtype: torch.dtype = torch.float64) -> Tensor:  # fmt: skip
    """Uniforms in (0, 1) of ``shape`` and ``dtype`` (32 random bits in float64, 23 in float32,
    so that none rounds to 0 or 1): along ``data_dim`` each row from its datapoint's key (when
    the dim holds this step's datapoints), elsewhere from the step's. One hash per element, of
    its row's key plus its offset within the row."""
    rows = len(keys) - 1
    salt = mix(site)
    if data_dim is not None and data_dim >= 0 and shape[data_dim] == rows:
        rest = shape[:data_dim] + shape[data_dim + 1 :]
        offsets = _offsets(tuple(rest), salt, keys.device).unsqueeze(data_dim)
        view = [1] * len(shape)
        view[data_dim] = rows
        h = mix((keys[1:].reshape(view) + offsets) & MASK)
    else:
        h = mix((keys[0] + _offsets(tuple(shape), salt, keys.device)) & MASK)
    bits = 32 if dtype == torch.float64 else 23
    return ((h >> (32 - bits)).to(dtype) + 0.5) * 2.0**-bits


@functools.lru_cache(maxsize=256)
def _offsets(shape: tuple, salt: int, device) -> Tensor:
    """Each element's offset within its row, spread over the 32-bit words: (shape). Kept:
    the same sites come back every step."""
    return torch.arange(math.prod(shape), device=device).reshape(shape) * 0x9E3779B9 + salt


@contextlib.contextmanager
def drawn_by(keys: Tensor | None):
    """Inside, ``uniform`` draws rows of this step's datapoints from ``keys`` (``draw_keys``)
    instead of torch's stream: a data batch's fresh noise (dequantization, binarization,
    masks) by position, as the loop's latents are."""
    token = _KEYS.set(None if keys is None else (keys, {}))
    try:
        yield
    finally:
        _KEYS.reset(token)


def uniform(shape, *, device=None, dtype=torch.float32, purpose: str = "data") -> Tensor:
    """Uniforms in (0, 1) of ``shape`` (rows, ...): by position inside ``drawn_by`` when the
    rows are its datapoints (each ``purpose`` and call its own numbers), else torch's stream."""
    held = _KEYS.get()
    shape = torch.Size(shape)
    if held is None or len(shape) == 0 or shape[0] != len(held[0]) - 1:
        return torch.rand(shape, device=device, dtype=dtype)
    keys, calls = held
    count = calls[purpose] = calls.get(purpose, 0) + 1
    site = (sum(map(ord, purpose)) * 2654435761 + 7919 * count) & MASK
    dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return uniforms(keys.to(device) if device else keys, shape, 0, site, dtype)
