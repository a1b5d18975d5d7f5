"""Loaders for real image data: the bundled digits, MNIST IDX, .npy/.npz arrays, PNG folders.

Every loader checks sizes before it decompresses or allocates, reads files one at a time, and
turns any failure to read a file into a DataError (a ValueError) that names the file."""

from __future__ import annotations

import gzip
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

from lvmkit.data.images import ImageData

BUNDLED = ("digits",)


class DataError(ValueError):
    """A data file or folder lvmkit cannot use; the message names it and the fix."""


# IDX type codes (the third byte of the magic number) -> numpy dtype, big-endian on disk.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CHUNK = 1 << 24  # bytes read at a time from a compressed IDX file


def load(source: str | Path, *, levels: int | None = None) -> ImageData:
    """Load a dataset by name (``"digits"``) or from a path.

    Paths: an MNIST IDX file (``*-idx3-ubyte``, optionally ``.gz``; the matching labels file
    beside it is read too), a ``.npy`` / ``.npz`` array, or a folder of PNG images (sub-folders
    become class labels). ``levels`` declares the number of discrete pixel values when the file
    does not imply it (8-bit data implies 256).
    """
    name = str(source)
    if not name.strip():
        raise DataError("no dataset given (an empty name); pass 'digits' or a path")
    if name in BUNDLED:
        return load_digits()
    path = Path(source).expanduser()
    if not path.exists():
        if path.is_symlink():
            raise DataError(f"{path} is a symbolic link to nothing; fix or remove the link")
        looks_like_path = path.suffix or "/" in name or "\\" in name
        if looks_like_path:
            raise DataError(f"no such file or folder: {str(path)!r}; check the path")
        raise DataError(
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
    raise DataError(
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


def memory_limit() -> int | None:
    """The most bytes a loaded dataset may take: half of this machine's memory (None: unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return None


def _check_size(shape: tuple[int, ...], path: Path) -> None:
    """Refuse, before anything is allocated, data whose float32 copy would not fit in memory."""
    needed = 4 * int(np.prod(shape, dtype=object))
    limit = memory_limit()
    if limit is not None and needed > limit:
        raise DataError(
            f"{path}: {shape} images need {needed / 2**30:.1f} GiB as float32, more than half "
            f"of this machine's memory ({2 * limit / 2**30:.1f} GiB); load a part of them "
            "(e.g. save a slice as .npy) or use a machine with more memory"
        )


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (plain or gzip) into a numpy array of its stored shape. The header's
    shape is checked against the file's size (or, compressed, against memory) before the data
    are read, so a small file cannot promise gigabytes."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
                raise DataError(f"{path}: not an IDX file (bad magic number {magic.hex()!r})")
            ndim = magic[3]
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise DataError(f"{path}: IDX header truncated; is the file complete?")
            shape = struct.unpack(f">{ndim}I", dims)
            dtype = np.dtype(_IDX_DTYPES[magic[2]])
            expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if opener is open:
                held = path.stat().st_size - 4 - 4 * ndim
                if held != expected:
                    raise _size_mismatch(path, shape, expected, held)
            _check_size(shape, path)
            raw = bytearray(expected)
            view, got = memoryview(raw), 0
            while got < expected:
                n = f.readinto(view[got : got + _CHUNK])
                if not n:
                    raise _size_mismatch(path, shape, expected, got)
                got += n
            if f.read(1):
                raise _size_mismatch(path, shape, expected, "more")
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot read IDX file ({err}); is it complete?") from err
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _size_mismatch(path, shape, expected, held) -> ValueError:
    held = "more bytes" if held == "more" else f"{held} bytes"
    return ValueError(
        f"{path}: IDX header promises shape {shape} ({expected} bytes) but the file holds "
        f"{held}; the file is truncated or corrupt"
    )


def load_idx(images: str | Path, labels: str | Path | None = None) -> ImageData:
    """MNIST-style IDX images (N, H, W) as 256-level data; labels from ``labels`` or, if None,
    from the ``*-labels-idx1-ubyte[.gz]`` file beside ``images`` when there is one."""
    images = Path(images)
    arr = read_idx(images)
    if arr.ndim != 3:
        raise DataError(f"{images}: expected IDX images of shape (N, H, W), got {arr.shape}")
    if labels is None:
        guess = images.with_name(images.name.replace("images-idx3", "labels-idx1"))
        labels = guess if guess != images and guess.exists() else None
    y = None if labels is None else _labels(read_idx(labels), len(arr), Path(labels))
    x = _to_nchw(arr, images)
    return ImageData(x=_floats(x, images), y=y, levels=_levels(x, None, images), name=images.name)


def load_array(path: str | Path, *, levels: int | None = None) -> ImageData:
    """A .npy array, or a .npz with images under ``x``/``images`` (or its only array) and labels
    under ``y``/``labels``. Shapes (N, H, W), (N, C, H, W) or (N, H, W, C) with C in {1, 3}.

    Pixel values: bool data are 2 levels; integers in 0..255 (any integer dtype) and floats that
    are all whole numbers in 0..255 (above 1) are 8-bit, 256 levels; other floats are continuous.
    ``levels`` overrides this."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npz":
            arr, y = _read_npz(path)
        else:
            arr, y = np.load(path, mmap_mode="r", allow_pickle=False), None
            _check_dtype(arr.dtype, path, "images")
            _check_size(arr.shape, path)
            arr = np.array(arr)  # read it, now that its size is known to fit
    except (DataError, MemoryError):
        raise  # already ours, or not a parse failure
    except Exception as err:  # numpy's parser fails in many ways on damaged bytes
        raise DataError(f"{path}: cannot read as a numpy array ({err})") from err
    x = _to_nchw(arr, path)
    labels = None if y is None else _labels(y, len(x), path)
    return ImageData(x=_floats(x, path), y=labels, levels=_levels(x, levels, path), name=path.name)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The images and (if any) labels of a .npz, each header checked before it is read."""
    with np.load(path, allow_pickle=False) as npz:
        keys = list(npz.keys())
        key = next((k for k in ("x", "images") if k in keys), keys[0] if len(keys) == 1 else None)
        if key is None:
            raise DataError(f"{path}: .npz holds {keys}; name the images array 'x' or 'images'")
        label_key = next((k for k in ("y", "labels") if k in keys), None)
        for k, what in ((key, "images"), (label_key, "labels")):
            if k is not None:
                shape, dtype = _npz_header(npz, k)
                _check_dtype(dtype, path, what)
                _check_size(shape, path)
        return npz[key], None if label_key is None else npz[label_key]


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
    if len(arr) and arr.min() < 0:
        raise DataError(
            f"{path}: labels must be class numbers 0..K-1, got {arr.min()}; renumber them"
        )
    return torch.as_tensor(arr.astype(np.int64))


def _levels(arr: np.ndarray, levels: int | None, path: Path) -> int | None:
    """The number of discrete values the pixels take (None: continuous); see load_array."""
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
        return 256
    whole = bool(np.isfinite(arr).all() and (arr == np.round(arr)).all())
    return 256 if whole and lo >= 0 and 1 < hi <= 255 else None


def _floats(arr: np.ndarray, path: Path) -> torch.Tensor:
    """float32 pixels; values float32 cannot hold are refused rather than made inf."""
    with np.errstate(over="ignore", invalid="ignore"):
        x = arr.astype(np.float32)
    if np.isinf(x).any() and not np.isinf(arr).any():
        raise DataError(
            f"{path}: values reach {np.abs(arr).max():g}, beyond float32; scale them first"
        )
    return torch.as_tensor(x)


def _to_nchw(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim == 3:
        return arr[:, None]
    if arr.ndim == 4 and arr.shape[1] in (1, 3):
        return arr
    if arr.ndim == 4 and arr.shape[-1] in (1, 3):
        return arr.transpose(0, 3, 1, 2)
    raise DataError(
        f"{path}: images must be (N, H, W), (N, C, H, W) or (N, H, W, C) with C = 1 or 3; "
        f"got shape {arr.shape}"
    )


def load_image_folder(folder: str | Path) -> ImageData:
    """All PNG images in ``folder`` as 256-level grey or RGB data. If the PNGs sit in sub-folders,
    each sub-folder is a class and labels follow the sorted sub-folder names. Hidden files and
    folders (``.ipynb_checkpoints``) are skipped. Palette PNGs are read through their palette
    (grey if it holds only greys); an alpha channel is dropped when every pixel is opaque and
    refused otherwise; 16-bit PNGs are refused."""
    folder = Path(folder)
    files, classes = _png_files(folder)
    arrays, first = [], None
    for f, _ in files:
        a = _read_png(f, first)
        if first is None:
            first = (f, a.shape[:2])
            _check_size((len(files), 3 if a.ndim == 3 else 1, *a.shape[:2]), folder)
        arrays.append(a)
    if any(a.ndim == 3 for a in arrays):  # mixed grey and colour: grey repeats into RGB
        arrays = [a if a.ndim == 3 else np.repeat(a[..., None], 3, -1) for a in arrays]
    x = _to_nchw(np.stack(arrays), folder)  # (N, C, H, W) uint8
    y = torch.tensor([i for _, i in files]) if classes else None
    return ImageData(x=_floats(x, folder), y=y, levels=256, name=folder.name)


def _png_files(folder: Path) -> tuple[list[tuple[Path, int | None]], list[str]]:
    """(file, class index) pairs and the class names; refuses PNGs both loose and in classes."""
    visible = sorted(p for p in folder.iterdir() if not p.name.startswith("."))

    def pngs(where):
        return sorted(p for p in where.iterdir() if _is_png(p))

    classes = [p for p in visible if p.is_dir() and pngs(p)]
    loose = [p for p in visible if _is_png(p)]
    if classes and loose:
        raise DataError(
            f"{folder}: holds both class folders ({', '.join(c.name for c in classes[:3])}...) "
            f"and loose PNGs ({loose[0].name}...); move the loose images into a class folder "
            "or out of this folder"
        )
    files = [(f, i) for i, c in enumerate(classes) for f in pngs(c)] or [(f, None) for f in loose]
    if not files:
        raise DataError(f"{folder}: the folder holds no .png images")
    return files, [c.name for c in classes]


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
        raise DataError(f"{f}: cannot read as a PNG image ({err})") from err


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
