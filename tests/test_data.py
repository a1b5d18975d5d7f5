import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from lvmkit import data as lvdata
from lvmkit.data import ImageData


def write_idx(path, arr: np.ndarray, compress: bool = False):
    code = {np.uint8: 0x08, np.int32: 0x0C}[arr.dtype.type]
    raw = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw += arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    (gzip.open if compress else open)(path, "wb").write(raw)


def test_digits_is_the_real_dataset():
    d = lvdata.load("digits")
    assert d.x.shape == (1797, 1, 8, 8) and d.x.dtype == torch.float32
    assert d.levels == 17 and d.name == "digits"
    assert d.x.min() == 0 and d.x.max() == 16
    assert sorted(d.y.unique().tolist()) == list(range(10))


def test_repr_names_shapes_not_values():
    data = ImageData(torch.zeros(5, 1, 3, 3), torch.arange(5), levels=2, name="toy",
                     splits={"train": (0, 4), "test": (4, 5)})  # fmt: skip
    assert repr(data) == (
        "ImageData('toy': x (5, 1, 3, 3), 2 levels, 5 labels, splits ['test', 'train'])"
    )


@pytest.mark.parametrize("compress", [False, True])
def test_idx_images_and_labels_beside_them(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    labels = np.arange(5, dtype=np.uint8)
    ext = ".gz" if compress else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{ext}", images, compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{ext}", labels, compress)
    d = lvdata.load(tmp_path / f"train-images-idx3-ubyte{ext}")
    assert d.x.shape == (5, 1, 4, 3) and d.levels == 256
    assert torch.equal(d.x[:, 0], torch.tensor(images, dtype=torch.float32))
    assert d.y.tolist() == labels.tolist()


def test_truncated_idx_is_a_clear_error(tmp_path):
    images = np.zeros((5, 4, 3), dtype=np.uint8)
    write_idx(tmp_path / "t-images-idx3-ubyte", images)
    raw = (tmp_path / "t-images-idx3-ubyte").read_bytes()
    (tmp_path / "t-images-idx3-ubyte").write_bytes(raw[:-7])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        lvdata.load(tmp_path / "t-images-idx3-ubyte")
    (tmp_path / "bad-idx").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not an IDX file"):
        lvdata.load(tmp_path / "bad-idx")


def test_npy_and_npz(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, size=(6, 5, 4), dtype=np.uint8)
    np.save(tmp_path / "a.npy", x)
    d = lvdata.load(tmp_path / "a.npy")
    assert d.x.shape == (6, 1, 5, 4) and d.levels == 256
    hwc = np.random.default_rng(1).random((6, 5, 4, 3)).astype(np.float32)
    np.savez(tmp_path / "b.npz", images=hwc, labels=np.arange(6))
    d = lvdata.load(tmp_path / "b.npz")
    assert d.x.shape == (6, 3, 5, 4) and d.levels is None and d.y.tolist() == list(range(6))
    assert torch.allclose(d.x[2, 1], torch.tensor(hwc[2, :, :, 1]))
    d = lvdata.load_array(tmp_path / "b.npz")  # same door
    np.savez(tmp_path / "c.npz", a=hwc, b=hwc)
    with pytest.raises(ValueError, match="name the images array 'x' or 'images'"):
        lvdata.load(tmp_path / "c.npz")
    np.save(tmp_path / "d.npy", np.zeros((2, 3, 4, 5, 6)))
    with pytest.raises(ValueError, match=r"must be \(N, H, W\)"):
        lvdata.load(tmp_path / "d.npy")


def test_png_folder_grey_rgb_and_class_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (6, 5), dtype=np.uint8), "L").save(flat / f"{i}.png")
    d = lvdata.load(flat)
    assert d.x.shape == (3, 1, 6, 5) and d.y is None and d.levels == 256

    classes = tmp_path / "classes"
    for c in ("cat", "dog"):
        (classes / c).mkdir(parents=True)
        for i in range(2):
            arr = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            Image.fromarray(arr, "RGB").save(classes / c / f"{i}.png")
    d = lvdata.load(classes)
    assert d.x.shape == (4, 3, 4, 4) and d.y.tolist() == [0, 0, 1, 1]
    assert torch.equal(d.x[3].permute(1, 2, 0), torch.tensor(arr, dtype=torch.float32))


def test_png_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no .png images"):
        lvdata.load(tmp_path / "empty")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(mixed / "a.png")
    Image.fromarray(np.zeros((5, 4), dtype=np.uint8)).save(mixed / "b.png")
    with pytest.raises(ValueError, match="differ in size: a.png is 4x4 but b.png is 4x5"):
        lvdata.load(mixed)


def test_unknown_name_and_missing_path():
    with pytest.raises(ValueError, match=r"unknown dataset 'mnits'.*\['digits', 'mnist', "):
        lvdata.load("mnits")
    with pytest.raises(ValueError, match="no such file or folder"):
        lvdata.load("/nonexistent/train-images-idx3-ubyte.gz")


def test_bad_images_name_the_problem():
    with pytest.raises(ValueError, match=r"4 dims \(N, C, H, W\), got shape \(3, 8, 8\)"):
        ImageData(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="empty"):
        ImageData(torch.zeros(0, 1, 8, 8))
    x = torch.zeros(4, 1, 2, 2)
    x[2, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"1 NaN/inf values \(first in image 2\)"):
        ImageData(x)
    with pytest.raises(ValueError, match=r"declared 17 levels.*0\.\.16.*\[17.0, 17.0\]"):
        ImageData(torch.full((2, 1, 2, 2), 17.0), levels=17)
    with pytest.raises(ValueError, match="not all integers"):
        ImageData(torch.full((2, 1, 2, 2), 0.5), levels=17)
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        ImageData(torch.zeros(3, 1, 2, 2), y=torch.zeros(2))


def test_transforms():
    d = lvdata.load("digits")
    s = lvdata.scale(d)
    assert s.levels is None and s.x.min() == 0 and s.x.max() == 1
    b = lvdata.binarize(d)
    assert b.levels == 2 and set(b.x.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(b.x, (d.x / 16 > 0.5).float())
    q = lvdata.quantize(d, 5)
    assert q.levels == 5 and set(q.x.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0, 4.0}
    dyn = lvdata.dynamic_binarize(d)
    assert dyn.dynamic_binarization and dyn.levels == 2
    idx = torch.arange(200)
    (a,), (c,) = dyn.batch(idx), dyn.batch(idx)
    assert set(a.unique().tolist()) == {0.0, 1.0} and not torch.equal(a, c)  # resampled
    assert torch.allclose(
        torch.stack([dyn.batch(idx)[0] for _ in range(300)]).mean(0), dyn.x[idx], atol=0.15
    )


def test_seeded_split():
    d = lvdata.load("digits")
    train, val, test = lvdata.split(d, (0.8, 0.1, 0.1), seed=0)
    assert (len(train), len(val), len(test)) == (1438, 180, 179)
    a, b = lvdata.split(d, (1500, 297), seed=3)
    a2, _ = lvdata.split(d, (1500, 297), seed=3)
    a3, _ = lvdata.split(d, (1500, 297), seed=4)
    assert torch.equal(a.x, a2.x) and not torch.equal(a.x, a3.x)
    # disjoint and complete: every image index appears once
    rows = {tuple(r.tolist()) for r in torch.cat([a.x, b.x]).flatten(1)}
    assert len(rows) == len({tuple(r.tolist()) for r in d.x.flatten(1)})
    with pytest.raises(ValueError, match="do not add up"):
        lvdata.split(d, (100, 100))
