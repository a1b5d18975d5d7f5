"""The second sweep of bad input: each case it found, with its exact outcome now (a one-line
error naming the problem and the fix, a warning, or a right result). Data files first, then
settings, processes, checkpoints and the API."""

import gzip
import os
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from lvmkit import data as lvdata
from lvmkit.data import DataError, PixelRange


def idx_file(path, shape, body=b"", code=0x08):
    raw = bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + body
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


# --- data: sizes ----------------------------------------------------------------------------


def test_an_idx_header_past_the_data_limit_is_refused_before_decompressing(tmp_path):
    """1100 images of 1024x1024 (1.1 GB as bytes, 4.6 GB as float32) fit in this machine's
    memory but pass the default limit of 4 GiB: refused from the header."""
    path = idx_file(tmp_path / "big-idx3-ubyte.gz", (1100, 1024, 1024), bytes(1 << 16))
    limit = r"(the limit LVMKIT_MAX_DATA_GB=4 GiB|half of the memory free now)"
    with pytest.raises(DataError, match=rf"\(1100, 1024, 1024\) images need 5\.4 GiB .*{limit}"):
        lvdata.load(path)


def test_the_data_limit_is_a_setting(tmp_path, monkeypatch):
    np.save(tmp_path / "a.npy", np.zeros((64, 32, 32), np.uint8))  # 64 KiB + 256 KiB as float
    monkeypatch.setenv("LVMKIT_MAX_DATA_GB", "0.0002")  # 210 KB
    with pytest.raises(DataError, match=r"more than the limit LVMKIT_MAX_DATA_GB=0\.0002 GiB"):
        lvdata.load(tmp_path / "a.npy")
    monkeypatch.setenv("LVMKIT_MAX_DATA_GB", "0.001")
    assert len(lvdata.load(tmp_path / "a.npy")) == 64
    monkeypatch.setenv("LVMKIT_MAX_DATA_GB", "lots")
    with pytest.raises(DataError, match=r"LVMKIT_MAX_DATA_GB='lots' is not a number of GiB"):
        lvdata.load(tmp_path / "a.npy")


def test_an_idx_file_of_255_dimensions_is_refused(tmp_path):
    path = idx_file(tmp_path / "a-idx3-ubyte", (1,) * 255, b"\x00")
    with pytest.raises(DataError, match=r"a-idx3-ubyte: an IDX file of 255 dimensions"):
        lvdata.load(path)


@pytest.mark.parametrize("shape", [(5, 0, 0), (5, 4, 0), (5, 0, 4)])
@pytest.mark.parametrize("kind", ["idx", "npy"])
def test_images_of_zero_height_or_width_are_refused(tmp_path, shape, kind):
    if kind == "idx":
        path = idx_file(tmp_path / "a-idx3-ubyte", shape)
    else:
        path = tmp_path / "a.npy"
        np.save(path, np.zeros(shape, np.uint8))
    with pytest.raises(ValueError, match=r"images of shape \(1, \d, \d\) \(C, H, W\) hold no"):
        lvdata.load(path)


# --- data: labels, keys and layouts ---------------------------------------------------------


@pytest.mark.parametrize("big", [10**12, 2**16, 2**63 + 5])
def test_labels_that_are_not_class_numbers_are_refused(tmp_path, big):
    labels = np.array([0, 1, big], dtype=np.uint64)
    np.savez(tmp_path / "a.npz", x=np.zeros((3, 4, 4), np.uint8), y=labels)
    with pytest.raises(DataError, match=rf"K <= 65536, got {big}; renumber them"):
        lvdata.load(tmp_path / "a.npz")
    with pytest.raises(ValueError, match=r"K <= 65536, got 65536"):
        lvdata.ImageData(x=torch.zeros(2, 1, 2, 2), y=torch.tensor([0, 2**16]))


@pytest.mark.parametrize(
    "arrays, message",
    [
        (dict(x=np.zeros((3, 4, 4)), images=np.ones((3, 4, 4))), "holds both 'x' and 'images'"),
        (dict(x=np.zeros((3, 4, 4)), y=np.zeros(3), labels=np.ones(3)), "both 'y' and 'labels'"),
        (
            dict(x_train=np.zeros((3, 4, 4)), x_test=np.zeros((2, 4, 4)), x=np.zeros((5, 4, 4))),
            r"holds both a split \(x_train, x_test\) and 'x'",
        ),
    ],
)
def test_an_npz_that_names_one_thing_twice_is_refused(tmp_path, arrays, message):
    np.savez(tmp_path / "a.npz", **arrays)
    with pytest.raises(DataError, match=message):
        lvdata.load(tmp_path / "a.npz")


def test_a_layout_both_ways_fit_is_refused_or_named(tmp_path):
    arr = np.arange(10 * 3 * 8 * 3, dtype=np.uint8).reshape(10, 3, 8, 3)
    np.save(tmp_path / "a.npy", arr)
    with pytest.raises(DataError, match=r"could be \(N, C, H, W\) or \(N, H, W, C\); name the one"):
        lvdata.load(tmp_path / "a.npy")
    nchw = lvdata.load(tmp_path / "a.npy", image_shape=(3, 8, 3))
    assert torch.equal(nchw.x, torch.as_tensor(arr, dtype=torch.float32))
    nhwc = lvdata.load(tmp_path / "a.npy", image_shape=(3, 3, 8))
    assert torch.equal(nhwc.x, torch.as_tensor(arr.transpose(0, 3, 1, 2), dtype=torch.float32))
    np.save(tmp_path / "b.npy", np.zeros((4, 3, 3, 3), np.uint8))  # both read (3, 3, 3)
    with pytest.raises(DataError, match=r"save them flat, \(N, 27\) in \(C, H, W\) order"):
        lvdata.load(tmp_path / "b.npy", image_shape=(3, 3, 3))
    for shape in [(4, 28, 28, 1), (4, 1, 28, 28), (4, 1, 5, 5), (4, 5, 5, 3), (4, 1, 1, 1)]:
        np.save(tmp_path / "c.npy", np.zeros(shape, np.uint8))  # one layout fits: read as ever
        assert lvdata.load(tmp_path / "c.npy").x.shape[0] == 4


def test_float_pixels_outside_0_1_are_said(tmp_path):
    np.save(tmp_path / "a.npy", np.linspace(-3.5, 300.25, 48).reshape(3, 4, 4))
    with pytest.warns(PixelRange, match=r"continuous values in \[-3\.5, 300\.25\], not \[0, 1\]"):
        data = lvdata.load(tmp_path / "a.npy")
    assert data.levels is None
    np.save(tmp_path / "b.npy", np.linspace(0, 1, 48).reshape(3, 4, 4))
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("error")
        assert lvdata.load(tmp_path / "b.npy").levels is None


# --- data: folders --------------------------------------------------------------------------


def test_a_png_folder_with_a_symlink_loop_is_refused_as_such(tmp_path):
    top = tmp_path / "pngs"
    (top / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(top / "a" / "0.png")
    os.symlink(top / "a", top / "a" / "self")  # inside a class folder: never followed
    assert len(lvdata.load(top)) == 1
    os.symlink(top, top / "again")
    with pytest.raises(DataError, match=r"a symbolic link back to .* \(a loop\); remove the link"):
        lvdata.load(top)


def test_lvmkit_data_at_a_file_or_a_folder_in_a_files_place(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("LVMKIT_DATA", str(tmp_path / "file"))
    with pytest.raises(DataError, match=r"file is a file where lvmkit keeps the 'mnist' dataset"):
        lvdata.load("mnist")
    monkeypatch.setenv("LVMKIT_DATA", str(tmp_path / "cache"))
    (tmp_path / "cache" / "mnist" / "train-images-idx3-ubyte.gz").mkdir(parents=True)
    with pytest.raises(DataError, match=r"is a folder where the file train-images-idx3-ubyte"):
        lvdata.load("mnist")
