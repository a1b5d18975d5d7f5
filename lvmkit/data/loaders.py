"""Readers of image files: .npy/.npz arrays, and what every reader shares (parts of a split,
levels, labels); MNIST IDX files are read in ``idx``, PNG folders in ``png``.

Every loader checks sizes before it decompresses or allocates, reads files one at a time, and
turns any failure to read a file into a DataError (a ValueError) that names the file."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from lvmkit.data.images import MAX_CLASSES, ImageData
from lvmkit.data.limits import DataError, check_size

# Names of the parts of a split, as files and folders spell them -> lvmkit's part names.
PART_NAMES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "t10k": "test",  # MNIST's test files
}
PART_ORDER = ("train", "val", "test")  # the order parts are stacked in


def _assemble(
    parts: dict[str | None, tuple[np.ndarray, np.ndarray | None]],
    path: Path,
    *,
    levels: int | None = None,
    image_shape: tuple[int, int, int] | None = None,
    name: str | None = None,
) -> ImageData:
    """One ImageData from the images (and labels) of each part of a split, in order; the single
    part ``None`` means the data carry no split. Pixel levels are judged on all parts at once."""
    xs = [_to_nchw(x, path, image_shape) for x, _ in parts.values()]
    if len({x.shape[1:] for x in xs}) > 1:
        shapes = {part: x.shape[1:] for part, x in zip(parts, xs, strict=True)}
        raise DataError(f"{path}: the parts of the split hold images of other shapes {shapes}")
    ys = [y for _, y in parts.values()]
    if any(y is None for y in ys) and not all(y is None for y in ys):
        raise DataError(f"{path}: some parts of the split have labels and some do not")
    x = xs[0] if len(xs) == 1 else np.concatenate(xs)
    y = None
    if ys[0] is not None:
        y = torch.cat([_labels(y, len(p), path) for y, p in zip(ys, xs, strict=True)])
    splits, start = None, 0
    if list(parts) != [None]:
        splits = {}
        for part, p in zip(parts, xs, strict=True):
            splits[part], start = (start, start + len(p)), start + len(p)
    return ImageData(
        x=_floats(x, path),
        y=y,
        levels=_levels(x, levels, path),
        name=name or path.name,
        splits=splits,
    )


def load_array(
    path: str | Path,
    *,
    levels: int | None = None,
    image_shape: tuple[int, int, int] | None = None,
) -> ImageData:
    """A .npy array, or a .npz with images under ``x``/``images`` (or its only array) and labels
    under ``y``/``labels``, or a split: ``x_train``, ``x_test`` (optionally ``x_val``) with
    ``y_train``, ``y_test``. Shapes (N, H, W), (N, C, H, W) or (N, H, W, C) with C in {1, 3},
    or flat rows (N, D) given ``image_shape=(C, H, W)``.

    Pixel values: bool data are 2 levels; integers in 0..255 (any integer dtype) and floats that
    are all whole numbers in 0..255 (above 1) are 8-bit, 256 levels, when their maximum is 128
    or more, and M + 1 levels for a maximum M below 128 (with a LevelsInferred warning); other
    floats are continuous. ``levels`` overrides this.

    Parameters
    ----------
    path : str or Path
    levels : int, optional
    image_shape : tuple of (int, int, int), optional
        (C, H, W) of flat rows.

    Returns
    -------
    ImageData
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".npz":
            parts = _read_npz(path)
        else:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            _check_dtype(arr.dtype, path, "images")
            check_size(arr.shape, path, arr.dtype.itemsize)
            parts = {None: (np.array(arr), None)}  # read it, now that its size is known to fit
    except (DataError, MemoryError):
        raise  # already ours, or not a parse failure
    except Exception as err:  # numpy's parser fails in many ways on damaged bytes
        reason = str(err)
        if "pickled" in reason:  # numpy's advice here would be to unpickle: never
            reason = (
                "not an array of numbers; it would have to be unpickled, which lvmkit never does"
            )
        raise DataError(f"{path}: cannot read as a numpy array ({reason})") from err
    return _assemble(parts, path, levels=levels, image_shape=image_shape)


def _read_npz(path: Path) -> dict[str | None, tuple[np.ndarray, np.ndarray | None]]:
    """The images and (if any) labels of a .npz, per part of its split (``None``: no split);
    each array's header is checked before the array is read."""
    with np.load(path, allow_pickle=False) as npz:
        keys = list(npz.keys())
        split = [
            (PART_NAMES[k[2:]], k, "y" + k[1:])
            for k in keys
            if k[2:] in PART_NAMES and k[:2] == "x_"
        ]
        if split:
            found = {p for p, _, _ in split}
            if not {"train", "test"} <= found or len(split) != len(found):
                raise DataError(
                    f"{path}: holds {keys}; a split needs x_train and x_test (optionally x_val), "
                    "with y_train and y_test for labels"
                )
            pairs = [
                (p, k, yk if yk in keys else None)
                for p, k, yk in sorted(split, key=lambda t: PART_ORDER.index(t[0]))
            ]
        else:
            key = _one_of(("x", "images"), keys, path) or (keys[0] if len(keys) == 1 else None)
            if key is None:
                raise DataError(
                    f"{path}: .npz holds {keys}; name the images array 'x' or 'images' (or "
                    "x_train and x_test for a split)"
                )
            pairs = [(None, key, _one_of(("y", "labels"), keys, path))]
        loose = _one_of(("x", "images"), keys, path)
        if split and loose:
            raise DataError(
                f"{path}: holds both a split (x_train, x_test) and {loose!r}; keep one: save "
                "the split alone, or the images alone"
            )
        for _, key, label_key in pairs:
            for k, what in ((key, "images"), (label_key, "labels")):
                if k is not None:
                    shape, dtype = _npz_header(npz, k)
                    _check_dtype(dtype, path, what)
                    check_size(shape, path, dtype.itemsize)
        return {p: (npz[k], None if yk is None else npz[yk]) for p, k, yk in pairs}


def _one_of(names: tuple[str, ...], keys: list[str], path: Path) -> str | None:
    """The one of ``names`` the .npz holds (None: none); two of them are refused, not chosen."""
    found = [k for k in names if k in keys]
    if len(found) > 1:
        raise DataError(
            f"{path}: holds both {found[0]!r} and {found[1]!r}, which lvmkit reads as the same "
            "thing; save the .npz with one of them"
        )
    return found[0] if found else None


def _npz_header(npz, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype an array in a .npz declares, read without reading the array."""
    fmt = np.lib.format
    with npz.zip.open(f"{key}.npy") as f:
        version = fmt.read_magic(f)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read(f)
    return shape, dtype


def _check_dtype(dtype: np.dtype, path: Path, what: str) -> None:
    if dtype.kind not in "biuf":
        raise DataError(
            f"{path}: the {what} have dtype {dtype}, not numbers; lvmkit reads bool, integer "
            "or floating-point arrays: convert them first (e.g. arr.astype(np.uint8))"
        )


def _labels(arr: np.ndarray, n: int, path: Path) -> torch.Tensor:
    """(N,) int64 class labels 0..K-1 from integer (or whole-valued float) labels."""
    _check_dtype(arr.dtype, path, "labels")
    arr = np.asarray(arr)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(f"{path}: labels must be one number per image, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{path}: {int(bad.sum())} labels are not whole numbers (the first, {arr[i]!r}, "
                f"at {i}); labels are class numbers 0..K-1"
            )
    if len(arr) and (arr.min() < 0 or arr.max() >= MAX_CLASSES):
        bad = arr.min() if arr.min() < 0 else arr.max()
        raise DataError(
            f"{path}: labels must be class numbers 0..K-1 with K <= {MAX_CLASSES}, got {bad}; "
            "renumber them (e.g. np.unique(y, return_inverse=True)[1])"
        )
    return torch.as_tensor(arr.astype(np.int64))


def _levels(arr: np.ndarray, levels: int | None, path: Path) -> int | None:
    """The number of discrete values the pixels take (None: continuous); see load_array.

    Whole numbers reaching 128..255 are 8-bit (256 levels); whole numbers whose maximum M is
    below 128 (the digits' 0..16, binary 0/1 stored as integers) are M + 1 levels, said in a
    warning, since scaling them as 8-bit would squeeze them into [0, M / 255]."""
    if levels is not None or arr.size == 0:
        return levels
    if arr.dtype.kind == "b":
        return 2
    lo, hi = arr.min(), arr.max()
    if arr.dtype.kind in "iu":
        if lo < 0 or hi > 255:
            raise DataError(
                f"{path}: integer pixels span {lo}..{hi}, beyond 8 bits (0..255); declare "
                "their number of levels (levels=K, values 0..K-1) or convert them to floats "
                "in [0, 1]"
            )
    else:
        whole = bool(np.isfinite(arr).all() and (arr == np.round(arr)).all())
        if not (whole and lo >= 0 and 1 < hi <= 255):
            if lo < 0 or hi > 1:
                warnings.warn(
                    f"{path}: pixels are continuous values in [{lo:g}, {hi:g}], not [0, 1]; "
                    "they are modelled as they are and pictured clipped to [0, 1]: scale them "
                    "to [0, 1] first if they are images",
                    PixelRange,
                    stacklevel=4,
                )
            return None
    if hi >= 128:
        return 256
    inferred = max(2, int(hi) + 1)
    warnings.warn(
        f"{path}: pixels are whole numbers 0..{int(hi)}, read as {inferred} levels; if they "
        "are 8-bit values of dark images, declare levels=256 (lvmkit fit: --set data.levels=256)",
        LevelsInferred,
        stacklevel=4,
    )
    return inferred


class LevelsInferred(UserWarning):
    """Pixel levels were read off the data's maximum rather than declared."""


class PixelRange(UserWarning):
    """Continuous pixel values lie outside [0, 1], the range pictures show."""


def _floats(arr: np.ndarray, path: Path) -> torch.Tensor:
    """float32 pixels; values float32 cannot hold are refused rather than made inf."""
    with np.errstate(over="ignore", invalid="ignore"):
        x = arr.astype(np.float32)
    if np.isinf(x).any() and not np.isinf(arr).any():
        raise DataError(
            f"{path}: values reach {np.abs(arr).max():g}, beyond float32; scale them first"
        )
    return torch.as_tensor(x)


def _to_nchw(arr: np.ndarray, path: Path, image_shape=None) -> np.ndarray:
    """(N, C, H, W) from (N, H, W), (N, C, H, W), (N, H, W, C), or flat rows (N, D) given
    ``image_shape`` (C, H, W). A 4-d array both layouts fit (such as (N, 3, 8, 3)) is read the
    way ``image_shape`` names, and refused without it."""
    if image_shape is not None:
        shape = tuple(int(s) for s in image_shape)
        if len(shape) != 3 or min(shape) < 1 or shape[0] not in (1, 3):
            raise DataError(f"image_shape must be (C, H, W) with C = 1 or 3, got {image_shape}")
        if arr.ndim == 2:
            if arr.shape[1] != np.prod(shape):
                raise DataError(
                    f"{path}: rows of {arr.shape[1]} values cannot be images of shape {shape} "
                    f"({np.prod(shape)} values); give the image_shape the rows were made from"
                )
            return arr.reshape(len(arr), *shape)
    if arr.ndim == 3:
        out = arr[:, None]
    elif arr.ndim == 4:
        fits = []  # the layouts the shape allows, as the (N, C, H, W) array each reads
        if arr.shape[1] in (1, 3):
            fits.append(arr)
        if arr.shape[-1] in (1, 3) and not (arr.shape[1] == arr.shape[-1] == 1):
            fits.append(arr.transpose(0, 3, 1, 2))  # (N, H, W, 1) and (N, 1, H, W) agree
        if image_shape is not None and len(fits) == 2:
            fits = [a for a in fits if a.shape[1:] == tuple(image_shape)] or fits
        if len(fits) == 2:
            nchw, nhwc = (a.shape[1:] for a in fits)
            how = (
                f"name the one meant with image_shape={nchw} or {nhwc} (CLI: --image-shape)"
                if nchw != nhwc
                else f"save them flat, (N, {np.prod(nchw)}) in (C, H, W) order, with image_shape"
            )
            raise DataError(
                f"{path}: images of shape {arr.shape} could be (N, C, H, W) or (N, H, W, C); " + how
            )
        if not fits:
            raise _bad_shape(arr, path)
        out = fits[0]
    elif arr.ndim == 2:
        raise DataError(
            f"{path}: flat rows of shape {arr.shape}: give the image shape they hold, "
            f"image_shape=(C, H, W) with C*H*W = {arr.shape[1]} (CLI: --image-shape 1,28,28), "
            f"or (1, 1, {arr.shape[1]}) to keep plain vectors"
        )
    else:
        raise _bad_shape(arr, path)
    if image_shape is not None and out.shape[1:] != tuple(image_shape):
        raise DataError(
            f"{path}: images of shape {out.shape[1:]}, not the image_shape {tuple(image_shape)} "
            "given; leave image_shape out for data that are images already"
        )
    return out


def _bad_shape(arr: np.ndarray, path: Path) -> DataError:
    return DataError(
        f"{path}: images must be (N, H, W), (N, C, H, W) or (N, H, W, C) with C = 1 or 3, "
        f"or flat rows (N, D) with an image_shape; got shape {arr.shape}"
    )
