"""Loaders for real image data: the bundled digits, MNIST IDX, .npy/.npz arrays, PNG folders."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from lvmkit.data.images import ImageData

BUNDLED = ("digits",)

# IDX type codes (the third byte of the magic number) -> numpy dtype, big-endian on disk.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load(source: str | Path, *, levels: int | None = None) -> ImageData:
    """Load a dataset by name (``"digits"``) or from a path.

    Paths: an MNIST IDX file (``*-idx3-ubyte``, optionally ``.gz``; the matching labels file
    beside it is read too), a ``.npy`` / ``.npz`` array, or a folder of PNG images (sub-folders
    become class labels). ``levels`` declares the number of discrete pixel values when the file
    does not imply it (uint8 data implies 256).
    """
    name = str(source)
    if name in BUNDLED:
        return load_digits()
    path = Path(source).expanduser()
    if not path.exists():
        looks_like_path = path.suffix or "/" in name or "\\" in name
        if looks_like_path:
            raise ValueError(f"no such file or folder: {str(path)!r}; check the path")
        raise ValueError(
            f"unknown dataset {name!r}: the bundled datasets are {list(BUNDLED)}; otherwise pass "
            "a path to an MNIST IDX file, a .npy/.npz array or a folder of PNG images"
        )
    if path.is_dir():
        return load_image_folder(path)
    suffixes = "".join(path.suffixes).lower()
    if suffixes.endswith((".npy", ".npz")):
        return load_array(path, levels=levels)
    if "idx" in path.name or "ubyte" in path.name:
        return load_idx(path)
    raise ValueError(
        f"cannot tell the format of {str(path)!r}: expected an IDX file (name containing 'idx' "
        "or 'ubyte', optionally .gz), a .npy/.npz file, or a folder of PNG images"
    )


def load_digits() -> ImageData:
    """scikit-learn's 1797 real 8x8 handwritten digits: grey levels 0..16, labels 0..9."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    return ImageData(x=x, y=y, levels=17, name="digits")


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (plain or gzip) into a numpy array of its stored shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: cannot read IDX file ({err}); is it truncated?") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: IDX header truncated")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: IDX header promises shape {shape} ({expected} bytes) but the file holds "
            f"{len(raw) - header} bytes; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def load_idx(images: str | Path, labels: str | Path | None = None) -> ImageData:
    """MNIST-style IDX images (N, H, W) as 256-level data; labels from ``labels`` or, if None,
    from the ``*-labels-idx1-ubyte[.gz]`` file beside ``images`` when there is one."""
    images = Path(images)
    arr = read_idx(images)
    if arr.ndim != 3:
        raise ValueError(f"{images}: expected IDX images of shape (N, H, W), got {arr.shape}")
    if labels is None:
        guess = images.with_name(images.name.replace("images-idx3", "labels-idx1"))
        labels = guess if guess != images and guess.exists() else None
    y = None
    if labels is not None:
        y = torch.as_tensor(read_idx(labels).astype(np.int64))
    x = torch.as_tensor(arr.astype(np.float32)).unsqueeze(1)
    return ImageData(x=x, y=y, levels=256 if arr.dtype == np.uint8 else None, name=images.name)


def load_array(path: str | Path, *, levels: int | None = None) -> ImageData:
    """A .npy array, or a .npz with images under ``x``/``images`` (or its only array) and labels
    under ``y``/``labels``. Shapes (N, H, W), (N, C, H, W) or (N, H, W, C) with C in {1, 3}."""
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{path}: cannot read as a numpy array ({err})") from err
    y = None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = list(loaded.keys())
            key = next(
                (k for k in ("x", "images") if k in keys), keys[0] if len(keys) == 1 else None
            )
            if key is None:
                raise ValueError(
                    f"{path}: .npz holds {keys}; name the images array 'x' or 'images'"
                )
            arr = loaded[key]
            label_key = next((k for k in ("y", "labels") if k in keys), None)
            if label_key is not None:
                y = torch.as_tensor(loaded[label_key].astype(np.int64))
    else:
        arr = loaded
    if arr.dtype == np.uint8 and levels is None:
        levels = 256
    x = torch.as_tensor(_to_nchw(arr, path).astype(np.float32))
    return ImageData(x=x, y=y, levels=levels, name=path.name)


def _to_nchw(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim == 3:
        return arr[:, None]
    if arr.ndim == 4 and arr.shape[1] in (1, 3):
        return arr
    if arr.ndim == 4 and arr.shape[-1] in (1, 3):
        return arr.transpose(0, 3, 1, 2)
    raise ValueError(
        f"{path}: images must be (N, H, W), (N, C, H, W) or (N, H, W, C) with C = 1 or 3; "
        f"got shape {arr.shape}"
    )


def load_image_folder(folder: str | Path) -> ImageData:
    """All PNG images in ``folder`` (grey or RGB, 256 levels). If the PNGs sit in sub-folders,
    each sub-folder is a class and labels follow the sorted sub-folder names."""
    from PIL import Image

    folder = Path(folder)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if classes:
        files = [(f, i) for i, c in enumerate(classes) for f in sorted((folder / c).glob("*.png"))]
    else:
        files = [(f, None) for f in sorted(folder.glob("*.png"))]
    if not files:
        raise ValueError(f"{folder}: the folder holds no .png images")
    images = [Image.open(f) for f, _ in files]
    rgb = any(im.mode not in ("L", "1", "I;16", "I") for im in images)
    arrays, first = [], None
    for (f, _), im in zip(files, images, strict=True):
        a = np.asarray(im.convert("RGB" if rgb else "L"))
        if first is None:
            first = (f, a.shape[:2])
        elif a.shape[:2] != first[1]:
            raise ValueError(
                f"{folder}: images differ in size: {first[0].name} is {first[1][1]}x{first[1][0]} "
                f"but {f.name} is {a.shape[1]}x{a.shape[0]}; resize them to one size first"
            )
        arrays.append(a)
    arr = np.stack(arrays)  # (N, H, W) or (N, H, W, 3)
    x = torch.as_tensor(_to_nchw(arr, folder).astype(np.float32))
    y = torch.tensor([i for _, i in files]) if classes else None
    return ImageData(x=x, y=y, levels=256, name=folder.name)
