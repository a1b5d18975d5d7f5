"""The second sweep of bad input: each case it found, with its exact outcome now (a one-line
error naming the problem and the fix, a warning, or a right result). Data files first, then
settings, processes, checkpoints and the API."""

import gzip
import math
import os
import struct

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from PIL import Image

import lvmkit
from lvmkit import data as lvdata
from lvmkit.data import DataError, PixelRange
from lvmkit.models import build_model


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


# --- API ------------------------------------------------------------------------------------


def plated_model(x):
    loc = pyro.param("loc", torch.zeros(3))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        pyro.sample("x", dist.Normal(loc + z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)


def plated_guide(x):
    m = pyro.param("m", torch.zeros(2))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(m, 1.0).to_event(1))


def test_a_guide_drawing_the_wrong_shape_is_named():
    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 3), 1.0).to_event(1))

    said = r"the guide draws site 'z' with shape \(20, 3\) but the model's distribution there"
    for run in (
        lambda: lvmkit.fit(plated_model, guide, torch.randn(20, 3), epochs=1, progress=False),
        lambda: lvmkit.log_likelihood(plated_model, guide, torch.randn(20, 3), num_samples=2),
    ):
        with pytest.raises(ValueError, match=said):
            run()


@pytest.mark.parametrize("elbo", ["elbo", "meanfield", "iwae"])
def test_a_model_without_the_data_plate_is_told_to_add_it(elbo):
    def model(x):
        loc = pyro.param("loc", torch.zeros(3))
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([x.shape[0], 2]).to_event(1))
        pyro.sample("x", dist.Normal(loc + z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)

    def guide(x):
        m = pyro.param("m", torch.zeros(2))
        pyro.sample("z", dist.Normal(m, 1.0).expand([x.shape[0], 2]).to_event(1))

    said = r"the model has no pyro.plate\('data', N\).*`with pyro.plate\('data', x.shape\[0\]\):`"
    with pytest.raises(ValueError, match=said):
        lvmkit.fit(model, guide, torch.randn(20, 3), epochs=1, elbo=elbo, progress=False)
    with pytest.raises(ValueError, match=said):
        lvmkit.log_likelihood(model, guide, torch.randn(20, 3), num_samples=2)


def test_data_on_the_meta_device_are_refused():
    meta = torch.empty(20, 3, device="meta")
    said = r"tensor 0 is on the meta device, which holds shapes but no values"
    with pytest.raises(ValueError, match="data: " + said):
        lvmkit.fit(plated_model, plated_guide, meta, epochs=1, progress=False)
    with pytest.raises(ValueError, match="val_data: " + said):
        lvmkit.fit(plated_model, plated_guide, torch.randn(20, 3), val_data=meta, epochs=1,
                   progress=False)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float64, torch.int64, torch.uint8])
def test_data_of_another_dtype_than_the_nets_are_named(dtype):
    lvm = build_model("lvm", (1, 8, 8), 17, {"hidden": [8], "z_dim": 2})
    x = lvdata.load("digits").x[:20].to(dtype)
    said = rf"the model's nets hold torch.float32 parameters but the data are {dtype}"
    with pytest.raises(ValueError, match=said):
        lvmkit.fit(lvm.model, lvm.guide, x, epochs=1, progress=False)
    with pytest.raises(ValueError, match=said):
        lvmkit.log_likelihood(lvm.model, lvm.guide, x, num_samples=2)


def test_validation_data_unlike_the_training_data_are_refused_before_fitting():
    x = torch.randn(20, 3)
    for val, said in [
        (torch.randn(5, 4), r"\[\(\(4,\), torch.float32\)\] but data hold \[\(\(3,\), torch.f"),
        (torch.randn(5, 3).double(), r"torch.float64\)\] but data hold \[\(\(3,\), torch.float32"),
        ((torch.randn(5, 3), torch.zeros(5)), r"\(\(\), torch.float32\)\] but data hold \[\(\(3"),
    ]:
        with pytest.raises(ValueError, match="val_data hold .*" + said):
            lvmkit.fit(plated_model, plated_guide, x, val_data=val, epochs=1, progress=False)
        assert "loc" not in pyro.get_param_store()  # refused before a step was taken


def test_a_posterior_of_no_datapoints_is_refused():
    with pytest.raises(ValueError, match=r"data is empty \(0 datapoints\)"):
        lvmkit.diagnostics.posterior(plated_model, plated_guide, torch.randn(0, 3))


def test_particles_past_what_memory_holds_are_refused_at_once():
    lvm = build_model("lvm", (1, 8, 8), 17, {"hidden": [8], "z_dim": 2})
    x = lvdata.load("digits").x[:2]
    said = r"10000000 particles \(or chains\) for each of 2 datapoints is 20,000,000 in one pass"
    with pytest.raises(ValueError, match=said):
        lvmkit.log_likelihood(lvm.model, lvm.guide, x, num_samples=10**7, particle_chunk=10**7)
    with pytest.raises(ValueError, match=r"300000 particles \(or chains\) for each of 2"):
        lvmkit.ais(lvm.model, x, guide=lvm.guide, num_samples=300_000, steps=2)
    # the default chunking keeps any num_samples within bounds
    assert lvmkit.log_likelihood(lvm.model, lvm.guide, x, num_samples=300_000).values.shape == (2,)


def test_em_of_identical_datapoints_is_the_exact_degenerate_fit():
    """Fewer distinct points than components: k-means++ has nothing left to spread over; the
    fit puts every component on the point, at the variance floor, as scikit-learn does."""
    gmm = build_model("gmm", (1, 1, 4), None, {"components": 3})
    result = lvmkit.em(gmm, torch.ones(50, 4))
    floor = gmm.config.min_variance
    exact = 4 * 0.5 * math.log(2 * math.pi * floor)  # -log N(x; x, floor I) per datapoint
    assert result.losses[-1] == pytest.approx(exact, rel=1e-4)


def test_a_mixture_estimator_refuses_non_finite_settings():
    from lvmkit.inference import GaussianMixtureEM

    x = np.random.default_rng(0).normal(size=(50, 2))
    for setting in ("tol", "reg_covar"):
        with pytest.raises(ValueError, match=rf"{setting} must be a finite number >= 0, got nan"):
            GaussianMixtureEM(n_components=2, **{setting: float("nan")}).fit(x)
