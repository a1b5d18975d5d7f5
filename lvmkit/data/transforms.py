"""Transforms (scale, binarize, quantize) and seeded splits. Each returns new ImageData."""

from __future__ import annotations

from dataclasses import replace

import torch

from lvmkit.data.images import ImageData


def _unit(data: ImageData) -> torch.Tensor:
    """Pixels in [0, 1]: discrete data divided by (levels - 1); continuous data must already be."""
    if data.dynamic_binarization or data.dequantized:
        how = "dynamically binarized" if data.dynamic_binarization else "dequantized"
        raise ValueError(f"{data.name}: already {how}; transform the data first")
    if data.levels is None:
        if data.x.min() < 0 or data.x.max() > 1:
            raise ValueError(
                f"{data.name}: continuous data must lie in [0, 1] to be transformed, got "
                f"[{float(data.x.min())}, {float(data.x.max())}]; declare its levels instead"
            )
        return data.x
    return data.x / (data.levels - 1)


def scale(data: ImageData) -> ImageData:
    """Map pixels to [0, 1] (continuous data, ``levels=None``).

    Parameters
    ----------
    data : ImageData

    Returns
    -------
    ImageData
    """
    return replace(data, x=_unit(data), levels=None)


def dequantize(data: ImageData) -> ImageData:
    """Uniformly dequantized data (Theis et al. 2016): every batch is (x + u) / levels with
    u ~ U[0, 1) per pixel, in [0, 1). A continuous density p of such pixels gives a bound on
    the discrete likelihood, log P(x) >= E_u[log p((x + u) / levels)] - D log(levels), which
    lvmkit's estimators report, so that its bits/dim compare with discrete models'.

    Parameters
    ----------
    data : ImageData
        Discrete (``levels`` set).

    Returns
    -------
    ImageData
        ``dequantized=True``: the same integer pixels, dequantized afresh in every batch.
    """
    if data.levels is None or data.dynamic_binarization:
        raise ValueError(
            f"{data.name}: dequantization needs discrete data with declared levels; continuous "
            "data are already a density's domain"
        )
    return replace(data, dequantized=True)


def binarize(data: ImageData, threshold: float = 0.5) -> ImageData:
    """Static binarization: 1 where the [0, 1]-scaled pixel exceeds ``threshold``, else 0.

    Parameters
    ----------
    data : ImageData
    threshold : float

    Returns
    -------
    ImageData
        2 levels.
    """
    return replace(data, x=(_unit(data) > threshold).float(), levels=2)


def dynamic_binarize(data: ImageData) -> ImageData:
    """Dynamic binarization: each training batch draws x ~ Bernoulli(scaled pixel), afresh every
    epoch (Salakhutdinov & Murray 2008). Evaluation sees the probabilities' Bernoulli draws too.

    Parameters
    ----------
    data : ImageData

    Returns
    -------
    ImageData
        ``dynamic_binarization=True``.
    """
    return replace(data, x=_unit(data), levels=2, dynamic_binarization=True)


def quantize(data: ImageData, levels: int) -> ImageData:
    """Requantize to ``levels`` evenly spaced values 0..levels-1.

    Parameters
    ----------
    data : ImageData
    levels : int

    Returns
    -------
    ImageData
    """
    if levels < 2:
        raise ValueError(f"quantize needs levels >= 2, got {levels}")
    return replace(data, x=torch.round(_unit(data) * (levels - 1)), levels=levels)


def split(
    data: ImageData, sizes: tuple[float, ...] = (0.8, 0.1, 0.1), *, seed: int = 0
) -> tuple[ImageData, ...]:
    """Seeded random split into parts, e.g. train / validation / test.

    ``sizes`` are fractions summing to 1 or integer counts summing to len(data).

    Parameters
    ----------
    data : ImageData
    sizes : tuple of float or int
    seed : int

    Returns
    -------
    tuple of ImageData
        One part per size.
    """
    n = len(data)
    if all(isinstance(s, int) for s in sizes):
        counts = list(sizes)
    elif abs(sum(sizes) - 1) < 1e-6:
        counts = [int(round(s * n)) for s in sizes[:-1]]
        counts.append(n - sum(counts))
    else:
        raise ValueError(f"split sizes must be fractions summing to 1 or counts, got {sizes}")
    if sum(counts) != n or min(counts) < 0:
        raise ValueError(f"split sizes {counts} do not add up to the {n} images")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts, start = [], 0
    for c in counts:
        if c == 0:
            raise ValueError(f"split sizes {sizes} leave an empty part for {n} images")
        parts.append(data[perm[start : start + c]])
        start += c
    return tuple(parts)


def train_val_test(
    data: ImageData, val_fraction: float = 0.1, *, seed: int = 0
) -> tuple[ImageData, ImageData, ImageData]:
    """Train, validation and test parts. Data that carry a split (``data.splits`` with "train"
    and "test") keep it: validation is the data's own "val" part, else ``val_fraction`` of the
    train part drawn with ``seed``. Other data are split at random: a tenth for test,
    ``val_fraction`` for validation (0.1 gives 80/10/10).

    Parameters
    ----------
    data : ImageData
    val_fraction : float
    seed : int

    Returns
    -------
    tuple of (ImageData, ImageData, ImageData)
        Train, validation and test.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    if data.splits and {"train", "test"} <= set(data.splits):
        train = data.part("train")
        if "val" in data.splits:
            return train, data.part("val"), data.part("test")
        train, val = split(train, (1 - val_fraction, val_fraction), seed=seed)
        return train, val, data.part("test")
    if val_fraction + 0.1 >= 1:
        raise ValueError(f"val_fraction {val_fraction} plus a tenth for test leaves no training")
    return split(data, (1 - val_fraction - 0.1, val_fraction, 0.1), seed=seed)
