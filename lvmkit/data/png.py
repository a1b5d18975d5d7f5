"""Reading a folder of PNG images (Pillow), one file at a time, each failure a DataError naming
the file: subfolders are classes, ``train``/``test`` subfolders a split."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from lvmkit.data.images import ImageData
from lvmkit.data.limits import DataError, check_size
from lvmkit.data.loaders import PART_NAMES, PART_ORDER, _assemble


def load_image_folder(folder: str | Path) -> ImageData:
    """All PNG images in ``folder`` as 256-level grey or RGB data. If the PNGs sit in sub-folders,
    each sub-folder is a class and labels follow the sorted sub-folder names; sub-folders
    ``train/`` and ``test/`` (optionally ``val/``) are the parts of a split, each holding class
    folders or PNGs. Hidden files and folders (``.ipynb_checkpoints``) are skipped. Palette PNGs
    are read through their palette (grey if it holds only greys); an alpha channel is dropped
    when every pixel is opaque and refused otherwise; 16-bit PNGs are refused.

    Parameters
    ----------
    folder : str or Path

    Returns
    -------
    ImageData
        256 levels, with labels where there are class folders.
    """
    folder = Path(folder)
    subfolders = {p.name: p for p in _subfolders(folder)}
    named = {PART_NAMES.get(n.lower()): p for n, p in subfolders.items()}
    if {"train", "test"} <= set(named) and set(named) <= {"train", "val", "test"}:
        listed = {part: _png_files(named[part]) for part in PART_ORDER if part in named}
    else:
        listed = {None: _png_files(folder)}
    classes = sorted({c for files in listed.values() for _, c in files if c is not None})
    n = sum(len(files) for files in listed.values())
    parts, first = {}, None
    for part, files in listed.items():
        arrays = []
        for f, _ in files:  # one file open at a time
            a = _read_png(f, first)
            if first is None:
                first = (f, a.shape[:2])
                check_size((n, 3 if a.ndim == 3 else 1, *a.shape[:2]), folder)
            arrays.append(a)
        y = np.array([classes.index(c) for _, c in files]) if classes else None
        parts[part] = (arrays, y)
    colour = any(a.ndim == 3 for arrays, _ in parts.values() for a in arrays)
    if colour:  # mixed grey and colour: grey repeats into RGB
        grey_to_rgb = lambda a: a if a.ndim == 3 else np.repeat(a[..., None], 3, -1)  # noqa: E731
        parts = {p: ([grey_to_rgb(a) for a in arrays], y) for p, (arrays, y) in parts.items()}
    stacked = {p: (np.stack(arrays), y) for p, (arrays, y) in parts.items()}
    return _assemble(stacked, folder, levels=256)  # PNGs are 8-bit, however dark


def _png_files(folder: Path) -> list[tuple[Path, str | None]]:
    """(file, class name) pairs; refuses PNGs both loose and in class folders."""
    visible = sorted(p for p in folder.iterdir() if not p.name.startswith("."))

    def pngs(where):
        return sorted(p for p in where.iterdir() if _is_png(p))

    classes = [p for p in _subfolders(folder) if pngs(p)]
    loose = [p for p in visible if _is_png(p)]
    if classes and loose:
        raise DataError(
            f"{folder}: holds both class folders ({', '.join(c.name for c in classes[:3])}...) "
            f"and loose PNGs ({loose[0].name}...); move the loose images into a class folder "
            "or out of this folder"
        )
    files = [(f, c.name) for c in classes for f in pngs(c)] or [(f, None) for f in loose]
    if not files:
        raise DataError(f"{folder}: the folder holds no .png images")
    return files


def _subfolders(folder: Path) -> list[Path]:
    """The visible sub-folders of ``folder``; a link back to it or a folder above is refused."""
    found = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    here = folder.resolve()
    for p in found:
        target = p.resolve()
        if target == here or target in here.parents:
            raise DataError(
                f"{p}: a symbolic link back to {target}, which holds it (a loop); remove the "
                "link, or link to a folder outside this one"
            )
    return found


def _is_png(p: Path) -> bool:
    return p.suffix.lower() == ".png" and not p.name.startswith(".") and not p.is_dir()


def _read_png(f: Path, first: tuple[Path, tuple[int, int]] | None) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8 pixels of one PNG, checked to have the size (H, W) of the
    ``first`` file before the pixels are decoded; any failure is a ValueError naming the file."""
    from PIL import Image

    if not f.exists():
        raise DataError(f"{f}: a symbolic link to nothing; fix or remove it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(f) as im:
                if im.format != "PNG":
                    raise DataError(f"{f}: is a {im.format} image, not a PNG; convert it")
                if first is not None and (im.height, im.width) != first[1]:
                    (h, w), name = first[1], first[0].name
                    raise DataError(
                        f"{f.parent}: images differ in size: {name} is {w}x{h} but {f.name} is "
                        f"{im.width}x{im.height}; resize them to one size first"
                    )
                return _pixels(im, f)
    except (DataError, MemoryError):
        raise  # already ours, or not a decode failure
    except Exception as err:  # PIL's decoders fail in many ways on damaged bytes
        raise DataError(
            f"{f}: cannot read as a PNG image ({err}); save it again, or move it out of the folder"
        ) from err


def _pixels(im, f: Path) -> np.ndarray:
    """8-bit grey (H, W) or RGB (H, W, 3) pixels of an open PIL image."""
    if im.mode.startswith(("I", "F")):
        raise DataError(
            f"{f}: a {im.mode} (16/32-bit) image; lvmkit reads 8-bit PNGs: convert the images "
            "to 8 bits, or save them as a .npy array and pass levels"
        )
    palette = im.mode in ("P", "PA")
    if palette:
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    if im.mode == "1":
        im = im.convert("L")
    if im.mode not in ("L", "LA", "RGB", "RGBA"):
        raise DataError(f"{f}: a {im.mode} image; save it as grey or RGB")
    a = np.asarray(im)
    if im.mode in ("LA", "RGBA"):
        if (a[..., -1] != 255).any():
            raise DataError(
                f"{f}: has transparent pixels; lvmkit models grey or RGB images: flatten them "
                "onto a background (or drop the alpha channel) first"
            )
        a = a[..., :-1] if im.mode == "RGBA" else a[..., 0]
    if palette and (a == a[..., :1]).all():  # a palette of greys only
        a = a[..., 0]
    return a
