"""Continuing a fit exactly: the loop's state, what identifies its data, and its checkpoints
(written by rank 0 with every process's random streams, read back and checked against the
settings of the fit that resumes them)."""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from lvmkit.core.files import CheckpointError, checksum, load_checkpoint, save_checkpoint
from lvmkit.core.processes import gather_objects, share_object
from lvmkit.core.rng import rng_state, seeded, set_rng_state

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class LoopState:
    """Everything a checkpoint needs to continue a fit exactly where it stopped."""

    epoch: int = 0  # epochs finished
    step: int = 0  # steps finished in the current epoch
    perm: Tensor | None = None  # the current epoch's order of the datapoints
    losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    best_val: float = math.inf
    best: dict | None = None  # the best epoch's parameters (Algorithm.snapshot)
    bad_epochs: int = 0  # epochs since the best validation loss
    elapsed: float = 0.0

    @classmethod
    def of(cls, saved: dict) -> LoopState:
        """A saved state; checkpoints written before the loop served every algorithm kept the
        best parameters and buffers under other names, and SVI's running sums here."""
        saved = dict(saved)
        if "best_params" in saved:
            params, buffers = saved.pop("best_params"), saved.pop("best_buffers", None)
            saved["best"] = None if params is None else {"params": params, "buffers": buffers}
        saved.pop("loss_sum", None), saved.pop("count", None)
        return cls(**saved)


def fingerprint(dataset) -> str:
    """What identifies a dataset for resuming: its size, the shape and dtype of a batch, and a
    hash of up to 64 datapoints spread across it (batches drawn with a fixed seed, so that
    random batches, e.g. dynamic binarization, give the same answer)."""
    n = len(dataset)
    index = torch.linspace(0, n - 1, min(n, 64)).long()
    with seeded(0):
        batch = dataset.batch(index)  # a CPU index selects from data on any device
    shapes = ", ".join(f"{tuple(t.shape[1:])} {str(t.dtype).removeprefix('torch.')}" for t in batch)
    return f"{n} datapoints of {shapes}, sha256 {checksum(batch)[:16]}"


def load_resumable(path: Path, settings: dict) -> dict:
    """The checkpoint at ``path``, if the loop wrote it with these ``settings``; CheckpointError
    saying what differs otherwise."""
    ckpt = load_checkpoint(path)
    if "trainer" in ckpt and "algorithm" not in ckpt:  # written before EM ran in the loop
        ckpt["algorithm"] = ckpt.pop("trainer")
        for key in ("loss_sum", "count"):  # SVI's running sums, now the algorithm's own
            ckpt["algorithm"][key] = ckpt["loop"].pop(key, 0)
    missing = {"config", "algorithm", "loop", "rng"} - set(ckpt)
    if missing:
        raise CheckpointError(
            f"{path} lacks {sorted(missing)}: it was not written by an lvmkit fit; start over "
            "with overwrite=True"
        )
    saved = dict(ckpt["config"])
    if "num_particles" in saved:  # checkpoints written before num_samples had this name
        saved["num_samples"] = saved.pop("num_particles")
    saved.setdefault("algorithm", "svi")  # checkpoints written before EM could write one
    saved.setdefault("data", settings.get("data"))  # checkpoints written before data was kept
    if saved["algorithm"] != settings["algorithm"]:
        raise CheckpointError(
            f"{path} holds a fit by {saved['algorithm']}, which {settings['algorithm']} cannot "
            "continue: resume it with the algorithm that wrote it, or start over with "
            "overwrite=True"
        )
    if saved.get("data") != settings.get("data"):
        raise CheckpointError(
            f"{path} was written fitting other data ({saved['data']}) than this fit's "
            f"({settings['data']}); resume with the data it was fitted on, or start over with "
            "overwrite=True"
        )
    diff = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
    if diff:
        details = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(
            f"{path} was written with other settings ({details}); pass the same settings to "
            "resume, or start over with overwrite=True"
        )
    return ckpt


class Checkpoints:
    """Where the loop's checkpoints go and how they are written and read back (rank 0 reads
    and writes; every process's random streams travel with them)."""

    def __init__(self, folder, settings: dict, algorithm, shuffle: torch.Generator):
        self.path = None if folder is None else Path(folder) / CHECKPOINT_NAME
        self.settings, self.algorithm, self.shuffle = settings, algorithm, shuffle

    def save(self, state: LoopState) -> None:
        if self.path is None:
            return
        a = self.algorithm
        rngs = gather_objects(rng_state(a.device, self.shuffle), a.group)
        if a.group.main:
            ckpt = {
                "config": self.settings,
                "algorithm": a.state_dict(),
                "loop": dataclasses.asdict(state),
                "rng": rngs[0],
                "rank_rng": rngs if a.group.active else None,
            }
            save_checkpoint(ckpt, self.path)

    def load(self, seed: int) -> LoopState:
        """The saved loop state, the algorithm's state and every stream put back."""
        a, g = self.algorithm, self.algorithm.group
        ckpt = None
        if g.main and self.path.exists():
            ckpt = load_resumable(self.path, self.settings)
        ckpt = share_object(ckpt, g)  # read once, by rank 0: the others may not see its disk
        if ckpt is None:
            if g.main:
                warnings.warn(
                    f"resume=True but {self.path} does not exist yet; starting from scratch",
                    stacklevel=4,
                )
            return LoopState()
        a.load_state_dict(ckpt["algorithm"], source=str(self.path))
        state = LoopState.of(ckpt["loop"])
        rngs = ckpt.get("rank_rng") or [ckpt["rng"]]
        # the same world size continues every stream; another one gives rank r > 0 a fresh one
        set_rng_state(rngs[g.rank] if len(rngs) == g.size else ckpt["rng"], a.device, self.shuffle)
        if len(rngs) != g.size and g.rank > 0:
            torch.manual_seed(hash((seed, g.rank, state.epoch, state.step)) % 2**63)
        return state

    def where(self) -> str:
        return f"; the last good checkpoint is {self.path}" if self.exists() else ""

    def exists(self) -> bool:
        return self.path is not None and self.path.exists()
