"""Readers of MNIST's IDX files: one file, an images/labels pair, or a folder of train and test
files. Sizes are checked against the header before anything is decompressed or allocated."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from lvmkit.data.images import ImageData
from lvmkit.data.limits import DataError, check_size
from lvmkit.data.loaders import PART_NAMES, PART_ORDER, _assemble

# IDX type codes (the third byte of the magic number) -> numpy dtype, big-endian on disk.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CHUNK = 1 << 24  # bytes read at a time from a compressed IDX file


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (plain or gzip) into a numpy array of its stored shape. The header's
    shape is checked against the file's size (or, compressed, against memory) before the data
    are read, so a small file cannot promise gigabytes.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    numpy.ndarray
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
                raise DataError(f"{path}: not an IDX file (bad magic number {magic.hex()!r})")
            ndim = magic[3]
            if not 1 <= ndim <= 4:
                raise DataError(
                    f"{path}: an IDX file of {ndim} dimensions; IDX images are (N, H, W) and "
                    "labels (N,): is this the file meant?"
                )
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
            check_size(shape, path, dtype.itemsize)
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


def _size_mismatch(path, shape, expected, held) -> DataError:
    held = "more bytes" if held == "more" else f"{held} bytes"
    return DataError(
        f"{path}: IDX header promises shape {shape} ({expected} bytes) but the file holds "
        f"{held}; the file is truncated or corrupt"
    )


def load_idx(
    images: str | Path, labels: str | Path | None = None, *, levels: int | None = None
) -> ImageData:
    """MNIST-style IDX images (N, H, W), their levels read off the values as ``load_array``
    does (MNIST: 256); labels from ``labels`` or, if None,
    from the ``*-labels-idx1-ubyte[.gz]`` file beside ``images`` when there is one.

    Parameters
    ----------
    images : str or Path
    labels : str or Path, optional
    levels : int, optional

    Returns
    -------
    ImageData
    """
    images = Path(images)
    return _assemble({None: _read_idx_pair(images, labels)}, images, levels=levels)


def load_idx_folder(folder: str | Path, *, levels: int | None = None) -> ImageData:
    """A folder of IDX files such as MNIST's: ``train-images-idx3-ubyte[.gz]`` and
    ``t10k-images-idx3-ubyte[.gz]`` (with their labels files) become the train and test parts.

    Parameters
    ----------
    folder : str or Path
    levels : int, optional
        Pixel levels, when not the file's 256.

    Returns
    -------
    ImageData
        With ``splits`` "train" and "test".
    """
    folder = Path(folder)
    files = _idx_files(folder)
    parts = {}
    for f in files:
        part = PART_NAMES.get(f.name.split("-")[0].lower())
        if part is None or part in parts:
            found = [f.name for f in files]
            raise DataError(
                f"{folder}: cannot tell the split of the IDX image files {found}; name them "
                "train-images-idx3-ubyte and t10k-images-idx3-ubyte (optionally .gz)"
            )
        parts[part] = _read_idx_pair(f, None)
    return _assemble({p: parts[p] for p in PART_ORDER if p in parts}, folder, levels=levels)


def _idx_files(folder: Path) -> list[Path]:
    """The IDX image files (``*images-idx3-ubyte``, optionally .gz) in ``folder``."""
    return sorted(
        p for p in folder.iterdir() if "idx3-ubyte" in p.name and not p.name.startswith(".")
    )


def _read_idx_pair(images: Path, labels) -> tuple[np.ndarray, np.ndarray | None]:
    arr = read_idx(images)
    if arr.ndim != 3:
        raise DataError(f"{images}: expected IDX images of shape (N, H, W), got {arr.shape}")
    if labels is None:
        guess = images.with_name(images.name.replace("images-idx3", "labels-idx1"))
        labels = guess if guess != images and guess.exists() else None
    if labels is None:
        return arr, None
    y = read_idx(labels)
    if len(y) != len(arr):
        raise DataError(
            f"{labels}: {len(y)} labels for the {len(arr)} images of {images.name}; give the "
            "labels file that belongs to these images, or move this one away to load no labels"
        )
    return arr, y
