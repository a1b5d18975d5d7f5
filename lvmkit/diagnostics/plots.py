"""Plots written straight to PNG files (matplotlib's object API: no display, no global state)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import Tensor


def save_loss_curve(losses: list[float], val_losses: list[float], path: str | Path) -> Path:
    """Training (and validation) loss per epoch, in nats per datapoint."""
    fig = Figure(figsize=(5, 3.2), layout="constrained")
    ax = fig.add_subplot()
    epochs = range(1, len(losses) + 1)
    ax.plot(epochs, losses, label="train")
    if val_losses:
        ax.plot(range(1, len(val_losses) + 1), val_losses, label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (nats / datapoint)")
    ax.legend()
    fig.savefig(path, dpi=120)
    return Path(path)


def _grid(images: Tensor, nrow: int):
    """(N, C, H, W) in [0, 1] -> one (H', W', C) image with a 1-pixel gap between tiles."""
    images = images.detach().float().cpu().clamp(0, 1)
    n, c, h, w = images.shape
    ncol = math.ceil(n / nrow)
    out = torch.full((c, nrow * (h + 1) + 1, ncol * (w + 1) + 1), 0.15)  # light gaps
    for i in range(n):
        r, q = divmod(i, ncol)
        out[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = (
            images[i]
        )
    return out.permute(1, 2, 0).numpy()


def save_image_grid(
    images: Tensor, path: str | Path, *, nrow: int | None = None, title: str | None = None
) -> Path:
    """A grid of images (N, C, H, W) with values in [0, 1]."""
    nrow = nrow or max(1, int(math.sqrt(len(images))))
    grid = _grid(images, nrow)
    fig = Figure(figsize=(4, 4 * grid.shape[0] / grid.shape[1] + (0.3 if title else 0)))
    ax = fig.add_axes((0, 0, 1, 0.92 if title else 1))
    ax.imshow(
        grid.squeeze(-1) if grid.shape[-1] == 1 else grid,
        cmap="gray_r",
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )
    ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=120)
    return Path(path)


def save_reconstructions(x: Tensor, x_rec: Tensor, path: str | Path) -> Path:
    """Originals (odd rows) above their reconstructions (even rows)."""
    cols = min(len(x), 8)
    rows = len(x) // cols  # whole rows only, so every original sits above its reconstruction
    pairs = []
    for r in range(rows):
        pairs += [x[r * cols : (r + 1) * cols], x_rec[r * cols : (r + 1) * cols]]
    return save_image_grid(torch.cat(pairs), path, nrow=2 * rows, title="data / reconstruction")


def save_latent_space(codes: Tensor, labels: Tensor | None, path: str | Path) -> Path:
    """Codes (N, Z) as points, coloured by label; projected on their two principal axes when
    Z > 2."""
    codes = codes.detach().double().cpu()
    title = "latent means"
    if codes.shape[1] > 2:
        centred = codes - codes.mean(0)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        codes, title = centred @ v[:2].T, "latent means, first two principal axes"
    fig = Figure(figsize=(4.5, 4), layout="constrained")
    ax = fig.add_subplot()
    points = ax.scatter(
        codes[:, 0],
        codes[:, 1] if codes.shape[1] > 1 else 0 * codes[:, 0],
        c=None if labels is None else labels.cpu(),
        cmap="tab10",
        s=6,
    )
    if labels is not None:
        fig.colorbar(points, ax=ax, label="label")
    ax.set_title(title, fontsize=10)
    fig.savefig(path, dpi=120)
    return Path(path)


def save_histogram(
    values: Tensor, path: str | Path, *, xlabel: str, lines: tuple[float, ...] = ()
) -> Path:
    """A histogram of finite values, with vertical reference lines (e.g. k-hat 0.5 and 0.7)."""
    values = values.detach().double().cpu()
    fig = Figure(figsize=(4.5, 3), layout="constrained")
    ax = fig.add_subplot()
    ax.hist(values[torch.isfinite(values)].numpy(), bins=30)
    for x in lines:
        ax.axvline(x, color="k", linestyle="--", linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("datapoints")
    fig.savefig(path, dpi=120)
    return Path(path)


def save_bars(values: Tensor, path: str | Path, *, xlabel: str, ylabel: str) -> Path:
    """One bar per entry, e.g. KL per latent dimension."""
    values = values.detach().double().cpu()
    fig = Figure(figsize=(4.5, 3), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(range(len(values)), values.numpy())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.savefig(path, dpi=120)
    return Path(path)
