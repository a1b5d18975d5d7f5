"""The second sweep of bad input: each case it found, with its exact outcome now (a one-line
error naming the problem and the fix, a warning, or a right result). Data files first, then
settings, processes, checkpoints and the API."""

import gzip
import math
import os
import struct
import subprocess
import time

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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


# --- checkpoints ----------------------------------------------------------------------------


def buffered_pair():
    """A user's model and guide whose encoder holds buffers (batch-norm running statistics)."""
    torch.manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))

    def guide(x):
        pyro.module("enc", enc)
        with pyro.plate("data", x.shape[0]):
            loc, raw = enc(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, torch.nn.functional.softplus(raw) + 1e-3).to_event(1))

    return plated_model, guide


X = torch.randn(24, 3, generator=torch.Generator().manual_seed(0))


def fit_to(folder, epochs=2, **options):
    pyro.clear_param_store()
    return lvmkit.fit(*buffered_pair(), X, epochs=epochs, batch_size=8, progress=False,
                      checkpoint_dir=folder, **options)  # fmt: skip


def rewrite(path, change, *, with_checksum=True):
    """The checkpoint at ``path`` with ``change(state)`` applied, written back as another program
    would: with a checksum computed afresh, or without one."""
    from lvmkit.core.files import checksum

    state = torch.load(path, weights_only=True)
    state.pop("sha256")
    change(state)
    if with_checksum:
        state["sha256"] = checksum(state)
    torch.save(state, path)


def moments(state):
    return next(iter(state["algorithm"]["optimizer"]["state"].values()))


CRAFTED = {
    "config is a list": (lambda s: s.update(config=[1, 2]), r"its config is a list, not the table"),
    "epoch is text": (lambda s: s["loop"].update(epoch="2"), r"loop state's epoch is '2'"),
    "epoch below 0": (lambda s: s["loop"].update(epoch=-5), r"loop state's epoch is -5"),
    "step past the epoch": (lambda s: s["loop"].update(step=10**6), r"step is 1000000, which"),
    "a short permutation": (
        lambda s: s["loop"].update(step=1, perm=torch.arange(23)),
        r"perm is a tensor of shape \(23,\), which a fit of 24 datapoints in 3 steps per epoch",
    ),
    "a 3-byte random state": (
        lambda s: s["rng"].update(torch=torch.zeros(3, dtype=torch.uint8)),
        r"its random streams are not what lvmkit writes",
    ),
    "a moment of the wrong shape": (
        lambda s: moments(s).update(exp_avg=torch.zeros(7)),
        r"optimizer state 'exp_avg' of parameter .* is \(7,\) torch.float32, not the parameter's",
    ),
    "no optimizer state": (
        lambda s: s["algorithm"]["optimizer"].update(state={}),
        r"holds no optimizer moments after 6 steps",
    ),
    "a buffer broadcast": (
        lambda s: s["algorithm"]["buffers"].update(
            {k: torch.zeros(1) for k in s["algorithm"]["buffers"] if k.endswith("running_mean")}
        ),
        r"buffer '.*running_mean' is \(1,\) torch.float32, not \(4,\) torch.float32",
    ),
    "a parameter that is not a tensor": (
        lambda s: s["algorithm"]["params"].update(noise=3.0) if "noise" in s["algorithm"]["params"]
        else s["algorithm"]["params"].update({next(iter(s["algorithm"]["params"])): 3.0}),
        r"parameter '.*' is not a tensor",
    ),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_crafted_checkpoint_is_refused_field_by_field(tmp_path, case):
    change, message = CRAFTED[case]
    fit_to(tmp_path)
    path = tmp_path / "checkpoint.pt"
    kept = path.read_bytes()
    rewrite(path, change)
    with pytest.raises(lvmkit.CheckpointError, match=message) as err:
        fit_to(tmp_path, epochs=3, resume=True)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    path.write_bytes(kept)
    rewrite(path, change, with_checksum=False)  # hand-edited: refused before any field is read
    with pytest.raises(lvmkit.CheckpointError, match=r"has no checksum, which lvmkit writes"):
        fit_to(tmp_path, epochs=3, resume=True)
    assert path.exists()  # refused, never replaced


def test_a_checkpoint_that_is_a_link_to_a_device_is_named(tmp_path):
    os.symlink("/dev/zero", tmp_path / "checkpoint.pt")
    with pytest.raises(lvmkit.CheckpointError, match=r"checkpoint.pt is not a regular file"):
        fit_to(tmp_path, resume=True)


def test_a_writer_killed_mid_write_leaves_no_temporary_for_long(tmp_path):
    fit_to(tmp_path, epochs=1)
    dead = _dead_pid()
    stale = tmp_path / f".checkpoint.pt.{dead}.0123abcd.tmp"
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f".checkpoint.pt.{os.getppid()}.0123abcd.tmp"  # a live writer's: kept
    live.write_bytes(b"being written")
    fit_to(tmp_path, epochs=2, resume=True)
    assert not stale.exists() and live.exists()


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_fuzz_crafted_checkpoints_resume_or_are_refused_in_one_line(tmp_path_factory, data):
    """Any one field of a checkpoint replaced (with a checksum computed afresh, as a program that
    knows the format would write it): the fit resumes, or a one-line CheckpointError."""
    folder = tmp_path_factory.mktemp("fuzz")
    fit_to(folder, epochs=1)
    path = folder / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    leaves = list(_leaves(state))
    where = data.draw(st.sampled_from(leaves), label="field")
    value = data.draw(
        st.one_of(
            st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.text(max_size=3),
            st.floats(allow_nan=True), st.just([]), st.just({}),
            st.builds(torch.zeros, st.integers(0, 9)),
            st.builds(lambda n: torch.ones(n, dtype=torch.uint8), st.integers(0, 9)),
        ),
        label="value",
    )  # fmt: skip

    def change(s):
        *parents, last = where
        for key in parents:
            s = s[key]
        if isinstance(s, tuple):  # tuples are rebuilt by their parent: replace in a list
            return
        s[last] = value

    rewrite(path, change)
    try:
        fit_to(folder, epochs=2, resume=True)
    except (lvmkit.CheckpointError, ValueError) as err:
        assert "\n" not in str(err)


def _leaves(value, where=()):
    if isinstance(value, dict):
        for k, v in value.items():
            if where or k != "sha256":
                yield from _leaves(v, (*where, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, (*where, i))
    if where:
        yield where


# --- EM settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(max_iter=0), "max_iter must be a positive int, got 0"),
        (dict(max_iter=-1), "max_iter must be a positive int, got -1"),
        (dict(tol=float("nan")), "tol must be a finite number >= 0, got nan"),
    ],
)
def test_closed_form_em_refuses_settings_that_fit_nothing(options, message):
    gmm = build_model("gmm", (1, 1, 2), None, {"components": 2})
    with pytest.raises(ValueError, match=message):
        lvmkit.em(gmm, torch.randn(30, 2), **options)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(num_samples=0), "num_samples must be a positive int, got 0"),
        (dict(batch_size=0), "batch_size must be a positive int, got 0"),
        (dict(m_steps=0), "m_steps must be a positive int, got 0"),
    ],
)
def test_generic_em_refuses_settings_that_fit_nothing(options, message):
    with pytest.raises(ValueError, match=message):
        lvmkit.em(plated_model, torch.randn(20, 3), guide=plated_guide, e_step="importance",
                  **options)  # fmt: skip


# --- the command line -----------------------------------------------------------------------


def test_nproc_past_the_cores_is_refused_before_any_worker(tmp_path, capsys):
    from lvmkit.cli import main

    out = tmp_path / "run"
    assert main(["fit", "lvm", "--nproc", "10000", "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lvmkit: error: --nproc 10000 is more processes than this machine's ")
    assert err.count("\n") == 1 and not out.exists()


def test_settings_of_a_multi_process_fit_are_checked_once_before_its_workers(tmp_path, capsys):
    from lvmkit.cli import main

    out = tmp_path / "run"
    argv = ["fit", "lvm", "--nproc", "2", "--set", "model.z_dim=0", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "z_dim" in err and "must be above 0" in err
    assert not out.exists()


def test_an_interrupt_outside_training_is_one_line(tmp_path, capsys, monkeypatch):
    from lvmkit.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lvdata, "load", interrupted)  # Ctrl-C while the data load
    out = tmp_path / "run"
    assert main(["fit", "lvm", "--epochs", "1", "--out", str(out), "--no-progress"]) == 130
    assert capsys.readouterr().err == (
        "lvmkit: interrupted outside training (no file is left half-written); run the command "
        "again (fit: with --resume once OUT holds a checkpoint.pt)\n"
    )


# --- found by a new user's trial of the above ---------------------------------------------------


def test_files_of_the_users_where_a_fit_would_write_are_not_replaced(tmp_path, capsys):
    from lvmkit.cli import main

    out = tmp_path / "mine"
    out.mkdir()
    (out / "samples.png").write_bytes(b"my picture")
    (out / "summary.json").write_text("{}")
    assert main(["fit", "lvm", "--epochs", "1", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "holds files a fit would write over (summary.json, samples.png) but no run" in err
    assert (out / "samples.png").read_bytes() == b"my picture" and len(list(out.iterdir())) == 2


def test_a_run_into_the_current_folder_or_a_config_that_never_ends_is_refused(
    tmp_path, capsys, monkeypatch
):
    from lvmkit.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["fit", "lvm", "--epochs", "1", "--out", "", "--no-progress"]) == 2
    assert "is the current folder, where a run would write among your own files" in (
        capsys.readouterr().err
    )
    assert list(tmp_path.iterdir()) == []
    argv = ["fit", "lvm", "--config", "/dev/zero", "--out", "r", "--resume", "--overwrite"]
    assert main(argv) == 2
    assert "--resume and --overwrite contradict each other" in capsys.readouterr().err
    assert main(["fit", "lvm", "--config", "/dev/zero", "--out", "r"]) == 2
    assert "--config /dev/zero is not a regular file" in capsys.readouterr().err


def test_a_guide_site_the_model_lacks_and_a_plate_sized_for_all_the_data_are_refused():
    def extra_guide(x):
        m = pyro.param("m", torch.zeros(2))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(m, 1.0).to_event(1))
            pyro.sample("w", dist.Normal(torch.zeros(x.shape[0]), 1.0))

    def whole_data_model(x):  # the plate sized for the dataset, not the batch
        loc = pyro.param("loc", torch.zeros(3))
        with pyro.plate("data", 24):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Normal(loc + z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)

    for run in (
        lambda m, g: lvmkit.fit(m, g, X, epochs=1, batch_size=8, progress=False),
        lambda m, g: lvmkit.log_likelihood(m, g, X, num_samples=2, batch_size=8),
    ):
        with pytest.raises(ValueError, match=r"the guide samples 'w', which the model has no site"):
            run(plated_model, extra_guide)
        with pytest.raises(ValueError, match=r"has 24 elements but the batch holds 8 datapoints"):
            run(whole_data_model, plated_guide)


@pytest.mark.parametrize(
    "setting, message",
    [
        (dict(min_variance=-1.0), "min_variance must be a finite number > 0, got -1.0"),
        (dict(min_variance=float("nan")), "min_variance must be a finite number > 0, got nan"),
        (dict(min_variance=0.0), "min_variance must be a finite number > 0, got 0.0"),
        (dict(components=0), "components must be a positive int, got 0"),
        (dict(dim=0), "dim must be a positive int, got 0"),
    ],
)
def test_mixture_settings_are_checked_when_built(setting, message):
    from lvmkit.models import GaussianMixture, GaussianMixtureConfig

    with pytest.raises(ValueError, match=message):
        GaussianMixture(GaussianMixtureConfig(**{"dim": 2, **setting}))


def test_em_of_integer_data_says_to_convert_it():
    from lvmkit.models import GaussianMixture, GaussianMixtureConfig

    gmm = GaussianMixture(GaussianMixtureConfig(dim=2, components=2))
    with pytest.raises(TypeError, match=r"EM fits floating-point data, got torch.int64"):
        lvmkit.em(gmm, torch.ones(10, 2, dtype=torch.int64))


@pytest.mark.parametrize(
    "seed, error, message",
    [
        (float("nan"), TypeError, "seed must be an int, got float nan"),
        (-1, ValueError, r"seed must be a seed in 0 .. \d+ - 1, got -1"),
        (2**70, ValueError, r"seed must be a seed in 0 .. \d+ - 1, got 1180591620717411303424"),
    ],
)
def test_seeds_are_checked_by_every_function_that_takes_one(seed, error, message):
    with pytest.raises(error, match=message):
        lvmkit.fit(plated_model, plated_guide, X, epochs=1, seed=seed, progress=False)
    with pytest.raises(error, match=message):
        lvmkit.log_likelihood(plated_model, plated_guide, X, num_samples=2, seed=seed)


def test_a_checkpoint_path_that_is_a_folder_is_refused_before_training(tmp_path):
    (tmp_path / "checkpoint.pt").mkdir()
    with pytest.raises(lvmkit.CheckpointError, match=r"checkpoint.pt is a folder where the"):
        fit_to(tmp_path, overwrite=True)
    assert "loc" not in pyro.get_param_store()


def test_a_nan_running_loss_in_a_checkpoint_is_refused(tmp_path):
    fit_to(tmp_path, epochs=1)
    rewrite(tmp_path / "checkpoint.pt", lambda s: s["algorithm"].update(loss_sum=float("nan")))
    with pytest.raises(lvmkit.CheckpointError, match=r"running loss nan/0 is no finite sum"):
        fit_to(tmp_path, epochs=2, resume=True)


def test_more_threads_than_cores_are_warned_about():
    from lvmkit.core.processes import threads_during

    before = torch.get_num_threads()
    with pytest.warns(UserWarning, match=r"threads 1000 is more than this machine's \d+ cores"):
        with threads_during(1000):
            pass
    assert torch.get_num_threads() == before


def test_auto_threads_leave_a_busy_neighbour_its_core_and_do_not_count_their_own():
    """'auto' counts the threads of other processes running now: a spinning neighbour takes a
    core away; this process's own busy threads (its pools spin after each operation) do not."""
    import sys
    import threading

    from lvmkit.core.processes import _others_running, auto_threads, usable_cores

    stop = threading.Event()

    def busy_here():
        a = torch.randn(64, 64)
        while not stop.is_set():
            a @ a  # releases the GIL: a thread of this process running on a core

    mine = [threading.Thread(target=busy_here) for _ in range(2)]
    for t in mine:
        t.start()
    try:
        with_own = [_others_running() for _ in range(5)]
    finally:
        stop.set()
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        deadline = time.monotonic() + 10
        while _others_running() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _others_running() >= 1
        assert auto_threads() <= max(1, usable_cores() - 1)
    finally:
        spinner.kill()
        spinner.wait()
    # two threads of ours were running throughout; a median of 2 or more would count them
    assert sorted(with_own)[2] < 2


def test_ais_steps_past_memory_are_refused():
    with pytest.raises(ValueError, match=r"steps must be at most 10,000,000"):
        lvmkit.ais(plated_model, X, guide=plated_guide, steps=10**12)


def test_workers_stop_when_their_launcher_is_killed(tmp_path):
    """kill -9 of ``lvmkit fit --nproc 2``: its workers get SIGTERM, checkpoint and stop,
    rather than train on alone holding the run's lock."""
    import signal
    import sys
    import time

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores for --nproc 2")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "lvmkit.cli", "fit", "lvm", "--epochs", "100000", "--nproc",
           "2", "--out", str(out), "--set", "model.hidden=[8]", "--no-progress"]  # fmt: skip
    launcher = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    workers = [p for p in _children(launcher.pid)]
    assert len(workers) == 2
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    deadline = time.monotonic() + 60
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(_alive(p) for p in workers)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_list_for_data_is_named_in_one_short_line():
    with pytest.raises(TypeError, match=r"got list, list, list, \.\.\. \(24 items\)") as err:
        lvmkit.fit(plated_model, plated_guide, X.tolist(), epochs=1, progress=False)
    assert len(str(err.value)) < 250
