"""The pictures of a run: samples, reconstructions and completions, where the model makes them."""

from __future__ import annotations

from pathlib import Path

import torch

from lvmkit import data as lvdata
from lvmkit.core.files import check_writable
from lvmkit.diagnostics import image_grid, reconstructions, save_figure
from lvmkit.models import MODELS
from lvmkit.runs.directory import load_run


def save_completions(model, x, path: Path, extra=()) -> Path:
    """A grid: data, the given top halves, completions (rows of len(x) images)."""
    known = model.top_half_known(x)
    filled = model.complete(x, known, *extra)
    rows = [x, torch.where(known, x, torch.zeros_like(x)), filled]
    images = torch.cat([model.to_images(r) for r in rows])
    title = "data / given (top half) / completion"
    return save_figure(image_grid(images, nrow=3, title=title), path)


def write_pictures(model, test: lvdata.ImageData, out: Path) -> list[Path]:
    """Samples, reconstructions and completions, each where the model can make them."""
    torch.manual_seed(0)
    paths = []
    if model.can_sample:
        grid = image_grid(model.sample_images(64), title="samples")
        paths.append(save_figure(grid, out / "samples.png"))
    x, *extra = model.inputs(test)
    if model.can_reconstruct:
        shown = [model.to_images(t) for t in (x[:16], model.reconstruct(x[:16]))]
        paths.append(save_figure(reconstructions(*shown), out / "reconstructions.png"))
    if model.can_complete:
        extra = [e[:8] for e in extra]
        paths.append(save_completions(model, x[:8], out / "completions.png", extra))
    return paths


def write_samples(path, n: int = 64, seed: int = 0) -> Path:
    """RUN/samples.png: n draws from the run's fitted model.

    Parameters
    ----------
    path : str or Path
        The run directory.
    n : int
    seed : int

    Returns
    -------
    Path
    """
    path = Path(path)
    model = load_run(path).model
    check_writable(path / "samples.png")
    torch.manual_seed(seed)
    return save_figure(image_grid(model.sample_images(n), title="samples"), path / "samples.png")


def write_completions(path, n: int = 8, seed: int = 0) -> Path:
    """RUN/completions.png: the bottom halves of n test images filled in.

    Parameters
    ----------
    path : str or Path
        The run directory.
    n : int
        Test images.
    seed : int

    Returns
    -------
    Path
    """
    path = Path(path)
    run = load_run(path)
    if not run.model.can_complete:
        able = sorted(name for name, entry in MODELS.items() if entry.cls.can_complete)
        raise ValueError(
            f"{run.name} ({type(run.model).__name__}) cannot complete images: of the built-in "
            f"models {', '.join(able)} can (GaussianLVM where its likelihood allows)"
        )
    check_writable(path / "completions.png")
    torch.manual_seed(seed)
    x, *extra = run.model.inputs(run.test_data())
    return save_completions(run.model, x[:n], path / "completions.png", [e[:n] for e in extra])
