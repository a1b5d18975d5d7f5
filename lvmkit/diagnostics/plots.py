"""Figures for runs and reports (matplotlib's object API: no display, no global state). Each
function returns a ``Figure`` that Jupyter shows as a picture; ``save_figure`` writes one as a
PNG."""

from __future__ import annotations

import functools
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lvmkit.core.files import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@functools.cache
def _figure_class() -> type:
    """A matplotlib Figure that Jupyter displays as a PNG (figures made without pyplot have no
    picture form of their own until pyplot's inline backend is loaded); matplotlib is imported
    here, on the first figure, not with lvmkit."""
    from matplotlib import figure

    class PictureFigure(figure.Figure):
        def _repr_png_(self) -> bytes:
            buffer = io.BytesIO()
            self.savefig(buffer, dpi=100, format="png")
            return buffer.getvalue()

    return PictureFigure


def new_figure(**options) -> Figure:
    """An empty figure (matplotlib's Figure arguments: figsize, layout, ...)."""
    return _figure_class()(**options)


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` as a PNG, atomically.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path : str or Path

    Returns
    -------
    Path
    """
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    return Path(path)


def loss_curve(losses: list[float], val_losses: list[float]) -> Figure:
    """Training (and validation) loss per epoch, in nats per datapoint.

    Parameters
    ----------
    losses, val_losses : list of float

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = new_figure(figsize=(5, 3.2), layout="constrained")
    ax = fig.add_subplot()
    epochs = range(1, len(losses) + 1)
    ax.plot(epochs, losses, label="train")
    if val_losses:
        ax.plot(range(1, len(val_losses) + 1), val_losses, label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (nats / datapoint)")
    ax.legend()
    return fig


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


def image_grid(
    images: Tensor,
    *,
    nrow: int | None = None,
    title: str | None = None,
    row_labels: list[str] | None = None,
) -> Figure:
    """A grid of images (N, C, H, W) with values in [0, 1], ``nrow`` rows, each optionally
    labelled on its left.

    Parameters
    ----------
    images : Tensor of shape (N, C, H, W)
    nrow : int, optional
    title : str, optional
    row_labels : list of str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    nrow = nrow or max(1, int(math.sqrt(len(images))))
    grid = _grid(images, nrow)
    left = 0.0
    if row_labels:  # room for the longest label: about 0.06 inch a character at 8 points, the
        # grid itself 4 inches wide, so left / (1 - left) = inches / 4
        inches = 0.1 + 0.06 * max(len(label) for label in row_labels)
        left = max(0.22, inches / (4 + inches))
    fig = new_figure(
        figsize=(4 / (1 - left), 4 * grid.shape[0] / grid.shape[1] + (0.3 if title else 0))
    )
    ax = fig.add_axes((left, 0, 1 - left, 0.92 if title else 1))
    ax.imshow(
        grid.squeeze(-1) if grid.shape[-1] == 1 else grid,
        cmap="gray_r",
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )
    ax.set_axis_off()
    if row_labels:
        tile = (grid.shape[0] - 1) / nrow
        for r, label in enumerate(row_labels):
            ax.text(-1, 0.5 + (r + 0.5) * tile, label, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def reconstructions(x: Tensor, x_rec: Tensor) -> Figure:
    """Originals (odd rows) above their reconstructions (even rows).

    Parameters
    ----------
    x, x_rec : Tensor of shape (N, C, H, W)
        In [0, 1].

    Returns
    -------
    matplotlib.figure.Figure
    """
    cols = min(len(x), 8)
    rows = len(x) // cols  # whole rows only, so every original sits above its reconstruction
    pairs = []
    for r in range(rows):
        pairs += [x[r * cols : (r + 1) * cols], x_rec[r * cols : (r + 1) * cols]]
    return image_grid(torch.cat(pairs), nrow=2 * rows, title="data / reconstruction")


def latent_space(codes: Tensor, labels: Tensor | None) -> Figure:
    """Codes (N, Z) as points, coloured by label; projected on their two principal axes when
    Z > 2.

    Parameters
    ----------
    codes : Tensor of shape (N, Z)
    labels : Tensor of shape (N,), optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    codes = codes.detach().double().cpu()
    title = "latent means"
    if codes.shape[1] > 2:
        centred = codes - codes.mean(0)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        codes, title = centred @ v[:2].T, "latent means, first two principal axes"
    fig = new_figure(figsize=(4.5, 4), layout="constrained")
    ax = fig.add_subplot()
    points = ax.scatter(
        codes[:, 0],
        codes[:, 1] if codes.shape[1] > 1 else 0 * codes[:, 0],
        c=None if labels is None else labels.cpu(),
        cmap=None if labels is None else "tab10",  # a colormap without labels only warns
        s=6,
    )
    if labels is not None:
        fig.colorbar(points, ax=ax, label="label")
    ax.set_title(title, fontsize=10)
    return fig


def histogram(values: Tensor, *, xlabel: str, lines: tuple[float, ...] = ()) -> Figure:
    """A histogram of finite values, with vertical reference lines (e.g. k-hat 0.5 and 0.7).

    Parameters
    ----------
    values : Tensor
    xlabel : str
    lines : tuple of float

    Returns
    -------
    matplotlib.figure.Figure
    """
    values = values.detach().double().cpu()
    fig = new_figure(figsize=(4.5, 3), layout="constrained")
    ax = fig.add_subplot()
    ax.hist(values[torch.isfinite(values)].numpy(), bins=30)
    for x in lines:
        ax.axvline(x, color="k", linestyle="--", linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("datapoints")
    return fig


def bars(values: Tensor, *, xlabel: str, ylabel: str) -> Figure:
    """One bar per entry, e.g. KL per latent dimension.

    Parameters
    ----------
    values : Tensor of shape (K,)
    xlabel, ylabel : str

    Returns
    -------
    matplotlib.figure.Figure
    """
    values = values.detach().double().cpu()
    fig = new_figure(figsize=(4.5, 3), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(range(len(values)), values.numpy())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig
