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
        unknown = set(saved) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise CheckpointError(f"its loop state holds unknown fields {sorted(unknown)}")
        return cls(**saved)

    def check(self, n: int, steps: int) -> None:
        """CheckpointError naming the first field that is not what a fit of ``n`` datapoints in
        ``steps`` steps per epoch writes."""

        def count(x) -> bool:
            return isinstance(x, int) and not isinstance(x, bool) and x >= 0

        def numbers(xs) -> bool:
            return isinstance(xs, list) and all(
                isinstance(v, float | int) and not isinstance(v, bool) for v in xs
            )

        fields = {  # each judged in turn, so a later test may rely on an earlier field
            "epoch": lambda: count(self.epoch),
            "step": lambda: count(self.step) and self.step < steps,
            "perm": lambda: (
                (self.perm is None and not self.step)
                or isinstance(self.perm, Tensor)
                and self.perm.shape == (n,)
                and not self.perm.is_floating_point()
                and torch.equal(self.perm.sort().values, torch.arange(n))
            ),
            "losses": lambda: numbers(self.losses) and len(self.losses) == self.epoch,
            "val_losses": lambda: numbers(self.val_losses) and len(self.val_losses) <= self.epoch,
            "best_epoch": lambda: (
                self.best_epoch is None
                or count(self.best_epoch)
                and 1 <= self.best_epoch <= self.epoch
            ),
            "best_val": lambda: isinstance(self.best_val, float | int),
            "best": lambda: self.best is None or isinstance(self.best, dict),
            "bad_epochs": lambda: count(self.bad_epochs),
            "elapsed": lambda: isinstance(self.elapsed, float | int) and self.elapsed >= 0,
        }
        bad = next((k for k, ok in fields.items() if not ok()), None)
        if bad is not None:
            value = getattr(self, bad)
            shown = (
                f"a tensor of shape {tuple(value.shape)}"
                if isinstance(value, Tensor)
                else repr(value)
            )
            raise CheckpointError(
                f"its loop state's {bad} is {shown[:80]}, which a fit of {n} datapoints in "
                f"{steps} steps per epoch never writes"
            )


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
    tables = ("config", "algorithm", "trainer", "loop", "rng")
    bad = next((k for k in tables if k in ckpt and not isinstance(ckpt[k], dict)), None)
    if bad is not None:
        raise CheckpointError(
            f"{path}: its {bad} is a {type(ckpt[bad]).__name__}, not the table lvmkit writes; "
            "the file was edited or written by other code: start over with overwrite=True"
        )
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
    odd = next((k for k, v in saved.items() if not _plain(v)), None)
    if odd is not None:
        raise CheckpointError(
            f"{path}: its setting {odd} is {type(saved[odd]).__name__}, which lvmkit never "
            "writes there; the file was edited or written by other code: start over"
        )
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


def _check_structure(value, like, what: str) -> None:
    """CheckpointError unless ``value`` is built like ``like``: the same containers and lengths,
    tensors of the same shape and dtype, and plain values of the same type."""
    if isinstance(like, dict):
        ok = isinstance(value, dict) and set(value) == set(like)
        parts = [(value[k], like[k]) for k in like] if ok else []
    elif isinstance(like, (list, tuple)):
        ok = isinstance(value, (list, tuple)) and len(value) == len(like)
        parts = list(zip(value, like, strict=True)) if ok else []
    elif isinstance(like, Tensor):
        ok = isinstance(value, Tensor) and value.shape == like.shape and value.dtype == like.dtype
        parts = []
    else:
        ok = like is None or type(value) is type(like)
        parts = []
    if not ok:
        raise CheckpointError(f"{what} are not what lvmkit writes (edited or foreign)")
    for v, lk in parts:
        _check_structure(v, lk, what)


class Checkpoints:
    """Where the loop's checkpoints go and how they are written and read back (rank 0 reads
    and writes; every process's random streams travel with them)."""

    def __init__(self, folder, settings: dict, algorithm, shuffle: torch.Generator, n: int):
        self.path = None if folder is None else Path(folder) / CHECKPOINT_NAME
        if self.path is not None and self.path.is_dir():  # found now, not after the training
            raise CheckpointError(f"{self.path} is a folder where the checkpoint goes; move it")
        self.settings, self.algorithm, self.shuffle = settings, algorithm, shuffle
        self.n, self.steps = n, math.ceil(n / settings["batch_size"])

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
        g = self.algorithm.group
        ckpt = None
        if g.main and self.path.exists():
            ckpt = self._checked(lambda: load_resumable(self.path, self.settings))
        ckpt = share_object(ckpt, g)  # read once, by rank 0: the others may not see its disk
        if ckpt is None:
            if g.main:
                warnings.warn(
                    f"resume=True but {self.path} does not exist yet; starting from scratch",
                    stacklevel=4,
                )
            return LoopState()
        rngs = self._checked(lambda: list(ckpt.get("rank_rng") or [ckpt["rng"]]))
        # the same world size continues every stream; another gives rank r > 0 a fresh one
        mine = rngs[g.rank] if len(rngs) == g.size else ckpt["rng"]
        state = self._checked(lambda: self._put_back(ckpt, mine))
        if len(rngs) != g.size and g.rank > 0:
            torch.manual_seed(hash((seed, g.rank, state.epoch, state.step)) % 2**63)
        return state

    def _put_back(self, ckpt: dict, rng: dict) -> LoopState:
        """Every field checked before it is used (the checksum vouches for the bytes only)."""
        a = self.algorithm
        state = LoopState.of(ckpt["loop"])
        state.check(self.n, self.steps)
        _check_structure(rng, rng_state(a.device, self.shuffle), "its random streams")
        a.load_state_dict(ckpt["algorithm"], source=str(self.path))
        set_rng_state(rng, a.device, self.shuffle)
        return state

    def _checked(self, read):
        """``read()``, any failure of it a one-line CheckpointError naming the file."""
        try:
            return read()
        except CheckpointError as err:
            where = "" if str(err).startswith(str(self.path)) else f"{self.path}: "
            raise CheckpointError(f"{where}{err}") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as err:
            first = (str(err).splitlines() or [""])[0][:200]
            raise CheckpointError(
                f"{self.path}: a field does not hold what lvmkit writes ({type(err).__name__}: "
                f"{first}); the file was edited or written by other code: start over with "
                "overwrite=True"
            ) from None

    def where(self) -> str:
        return f"; the last good checkpoint is {self.path}" if self.exists() else ""

    def exists(self) -> bool:
        return self.path is not None and self.path.exists()


def check_same(value, like: Tensor, what: str) -> None:
    """CheckpointError unless ``value`` is a tensor of ``like``'s shape and dtype (a copy into
    ``like`` would broadcast a smaller one silently)."""
    if not isinstance(value, Tensor) or value.shape != like.shape or value.dtype != like.dtype:
        found = f"{tuple(value.shape)} {value.dtype}" if isinstance(value, Tensor) else repr(value)
        raise CheckpointError(
            f"{what} is {found}, not {tuple(like.shape)} {like.dtype} as in this model; was it "
            "built with another config?"
        )


def check_optimizer_state(optimizer, names: list[str], state: dict, source: str) -> None:
    """CheckpointError unless a trainer's saved ``state`` holds optimizer moments of each
    parameter's shape and, after some steps of an optimizer that keeps moments, any at all."""
    saved, steps = state["optimizer"], state.get("steps")  # older checkpoints: no count
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        raise CheckpointError(f"{source}: its optimizer state is not what lvmkit writes")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise CheckpointError(f"{source}: its count of steps is {steps!r}, not a count")
    groups = saved.get("param_groups")
    if not isinstance(groups, list) or len(groups) != len(optimizer.param_groups):
        raise CheckpointError(f"{source}: its optimizer's parameter groups are not this fit's")
    layout = [g["params"] for g in optimizer.state_dict()["param_groups"]]
    for group, mine, indices in zip(groups, optimizer.param_groups, layout, strict=True):
        if not isinstance(group, dict) or not (
            isinstance(group.get("params"), list)
            and all(type(i) is int for i in group["params"])
            and group["params"] == indices
        ):
            raise CheckpointError(f"{source}: its optimizer's parameter groups are not this fit's")
        for key in sorted(set(group) & set(mine) - {"params"}):  # the fit's own settings
            if _kind(group[key]) != _kind(mine[key]) or group[key] != mine[key]:
                raise CheckpointError(
                    f"{source}: its optimizer's {key} is {group[key]!r}, this fit's "
                    f"{mine[key]!r}; resume with the settings that wrote it, or start over"
                )
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, moments in saved["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params):
            raise CheckpointError(
                f"{source}: optimizer state for parameter {index!r}, which this fit's "
                f"{len(params)} parameters lack"
            )
        param = params[index]
        for key, value in moments.items() if isinstance(moments, dict) else [(None, moments)]:
            tensor = isinstance(value, Tensor)
            like = tensor and (  # a count (Adam's step) or a moment like the parameter
                value.dim() == 0
                if key == "step"
                else not value.dim() or (value.shape, value.dtype) == (param.shape, param.dtype)
            )
            if key is None or not like:
                found = f"{tuple(value.shape)} {value.dtype}" if tensor else repr(value)[:40]
                raise CheckpointError(
                    f"{source}: optimizer state {key!r} of parameter {names[index]!r} is "
                    f"{found}, not the parameter's {tuple(param.shape)} {param.dtype}; the file "
                    "was edited or written by other code: start over"
                )
    keeps_moments = isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) or (
        isinstance(optimizer, torch.optim.SGD)
        and any(g["momentum"] for g in optimizer.param_groups)
    )
    if steps and keeps_moments and not saved["state"]:
        raise CheckpointError(
            f"{source}: holds no optimizer moments after {steps} steps; the file was edited or "
            "written by other code: start over"
        )


def _kind(value) -> type:
    """A value's type, numbers as one kind (a setting saved as 1 reads as 1.0)."""
    if isinstance(value, bool) or value is None:
        return type(value)
    return float if isinstance(value, int | float) else type(value)


def _plain(value) -> bool:
    """Whether a setting is a plain value (text, number, flag, None, or containers of them)."""
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_plain(v) for v in value.values())
    return value is None or isinstance(value, str | int | float | bool)
