"""The image dataset container and the checks every loader and transform goes through."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from lvmkit.core.rng import uniform


@dataclass(frozen=True)
class ImageData:
    """A set of images with optional labels.

    Parameters
    ----------
    x : Tensor of shape (N, C, H, W)
        float32. If ``levels`` is set, integer values in ``0 .. levels-1``; if ``levels`` is
        None, continuous values (e.g. scaled to [0, 1]).
    y : Tensor of shape (N,), optional
        int64 labels.
    levels : int, optional
        The number of values a pixel takes (17 for digits, 256 for 8-bit, 2 for binary).
    name : str
        Where the data came from.
    dynamic_binarization : bool
        ``x`` holds probabilities in [0, 1] and every batch drawn for training is a fresh
        Bernoulli sample (``levels`` is then 2).
    splits : dict, optional
        The split the data came with, as rows ``(start, stop)`` per part name ("train", "val",
        "test"); ``data.part("test")`` is one part. A subset has none.
    dequantized : bool
        ``x`` holds integer levels and every batch is their uniform dequantization
        (x + u) / levels, u ~ U[0, 1) per pixel, in [0, 1) (Theis et al. 2016): a continuous
        density of such batches bounds the discrete likelihood.
    """

    x: Tensor
    y: Tensor | None = None
    levels: int | None = None
    name: str = "data"
    dynamic_binarization: bool = False
    splits: dict[str, tuple[int, int]] | None = None
    dequantized: bool = False

    def __post_init__(self):
        if self.dequantized and (self.levels is None or self.dynamic_binarization):
            raise ValueError(f"{self.name}: only data with integer levels can be dequantized")
        check_images(self.x, self.levels, what=self.name, probabilities=self.dynamic_binarization)
        if self.y is not None:
            check_labels(self.y, len(self.x), what=self.name)
        if self.splits is not None:
            _check_splits(self.splits, len(self.x), self.name)

    def __repr__(self) -> str:  # shapes, not the tensors' values
        x = tuple(self.x.shape)
        labels = "no labels" if self.y is None else f"{len(self.y)} labels"
        kind = f"{self.levels} levels" if self.levels else "continuous"
        split = [f"splits {sorted(self.splits)}"] if self.splits else []
        flags = [f for f in ("dynamic_binarization", "dequantized") if getattr(self, f)]
        parts = ", ".join([f"x {x}", kind, labels, *split, *flags])
        return f"ImageData({self.name!r}: {parts})"

    def part(self, name: str) -> ImageData:
        """The part ``name`` of the split the data came with (e.g. ``"test"``)."""
        if not self.splits or name not in self.splits:
            have = sorted(self.splits) if self.splits else "no split"
            raise ValueError(
                f"{self.name}: no part {name!r} (the data carry {have}); give data with a "
                "train/test split, or split it with lvmkit.data.split"
            )
        start, stop = self.splits[name]
        return replace(self[start:stop], name=f"{self.name}[{name}]")

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index) -> ImageData:
        """A subset, e.g. ``data[:100]`` or ``data[perm]``."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        y = None if self.y is None else self.y[index]
        return replace(self, x=self.x[index], y=y, splits=None)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return tuple(self.x.shape[1:])

    def batch(self, index: Tensor) -> tuple[Tensor]:
        """The training batch for ``index``: ``(x,)``; a fresh Bernoulli draw if dynamically
        binarized, a fresh dequantization if dequantized (``core.rng.uniform``: by the
        datapoints' positions in the loop, from torch's stream elsewhere)."""
        x = self.x[index]
        if self.dynamic_binarization:
            x = uniform(x.shape, device=x.device, dtype=x.dtype, purpose="binarize") < x
            x = x.to(self.x.dtype)
        if self.dequantized:
            u = uniform(x.shape, device=x.device, dtype=x.dtype, purpose="dequantize")
            x = (x + u) / self.levels
        return (x,)

    def pixels(self) -> Tensor:
        """The images as a model of them sees them, without randomness (N, C, H, W): the
        centres (x + 1/2) / levels of the bins of dequantized data, ``x`` otherwise."""
        return (self.x + 0.5) / self.levels if self.dequantized else self.x

    def to(self, device) -> ImageData:
        """On ``device``; the same object when already there (no second validation pass, which
        Trainer.evaluate would otherwise pay every epoch)."""
        if self.x.device == torch.device(device):
            return self
        y = None if self.y is None else self.y.to(device)
        return replace(self, x=self.x.to(device), y=y)


MAX_CLASSES = 2**16  # labels are class numbers; more classes than this is an id, not a class


def check_images(x, levels: int | None, what: str = "data", probabilities: bool = False) -> None:
    """Raise ValueError naming the problem (and the fix) if ``x`` is not a valid image batch.

    Parameters
    ----------
    x : Tensor of shape (N, C, H, W)
    levels : int, optional
        The values a pixel may take (None: continuous).
    what : str
        What the data are called in the message.
    probabilities : bool
        Whether x holds Bernoulli probabilities in [0, 1].
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{what}: expected a torch.Tensor of images, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"{what}: images must have 4 dims (N, C, H, W), got shape {tuple(x.shape)}; "
            "add a channel dim with x.unsqueeze(1) for (N, H, W) grey images"
        )
    if len(x) == 0:
        raise ValueError(f"{what}: the dataset is empty (0 images); check the file or the filter")
    if 0 in x.shape[1:]:
        raise ValueError(
            f"{what}: images of shape {tuple(x.shape[1:])} (C, H, W) hold no pixels; check the "
            "file (a channel count, height or width of 0)"
        )
    if not x.is_floating_point():
        raise ValueError(f"{what}: images must be floating point, got {x.dtype}; use x.float()")
    bad = ~torch.isfinite(x)
    if bad.any():
        first = int(bad.flatten(1).any(1).nonzero()[0])
        raise ValueError(
            f"{what}: {int(bad.sum())} NaN/inf values (first in image {first}); "
            "remove or impute them before fitting"
        )
    if probabilities and (x.min() < 0 or x.max() > 1):
        raise ValueError(
            f"{what}: dynamic binarization needs probabilities in [0, 1], got values in "
            f"[{float(x.min())}, {float(x.max())}]; scale the data first"
        )
    if levels is not None and not probabilities:
        if levels < 2:
            raise ValueError(f"{what}: levels must be >= 2, got {levels}")
        if x.min() < 0 or x.max() > levels - 1 or (x != x.round()).any():
            raise ValueError(
                f"{what}: declared {levels} levels, so pixels must be integers in "
                f"0..{levels - 1}, but values lie in [{float(x.min())}, {float(x.max())}]"
                f"{'' if (x == x.round()).all() else ' and are not all integers'}; "
                "declare the right number of levels, or use levels=None for continuous data"
            )


def check_labels(y, n: int, what: str = "data") -> None:
    """Raise ValueError unless ``y`` is an (n,) integer tensor of class numbers 0..K-1.

    Parameters
    ----------
    y : Tensor of shape (n,)
    n : int
    what : str
    """
    if not isinstance(y, Tensor) or y.dim() != 1:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"{what}: labels must be a 1-d tensor, one per image; got {shape}")
    if len(y) != n:
        raise ValueError(
            f"{what}: {n} images but {len(y)} labels; pass one label per image (or y=None)"
        )
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{what}: labels must be integers (class numbers), got {y.dtype}")
    if len(y) and (y.min() < 0 or y.max() >= MAX_CLASSES):
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise ValueError(
            f"{what}: labels must be class numbers 0..K-1 with K <= {MAX_CLASSES}, got {bad}; "
            "renumber them (e.g. np.unique(y, return_inverse=True)[1])"
        )


def _check_splits(splits: dict, n: int, what: str) -> None:
    """The parts must be disjoint row ranges covering all n rows."""
    ranges = sorted(splits.values())
    if (
        ranges[0][0] != 0
        or ranges[-1][1] != n
        or any(a[1] != b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    ):
        raise ValueError(f"{what}: split parts {splits} must cover rows 0..{n} without gaps")
    if any(stop <= start for start, stop in ranges):
        raise ValueError(f"{what}: split parts {splits} hold an empty part")
