"""Bad input of every kind, each case with its exact outcome: the error type, and a message
that names the problem (and the file) and the fix. Data files first, then settings and runs."""

import gzip
import json
import os
import resource
import shutil
import struct

import numpy as np
import pytest
import torch
from PIL import Image

import lvmkit
from lvmkit import data as lvdata
from lvmkit.cli import main
from lvmkit.inference import CheckpointError, load_checkpoint, save_checkpoint
from lvmkit.models import build_model


def idx_header(shape, code=0x08) -> bytes:
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


def png(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path)
    return path


GREY = np.arange(64, dtype=np.uint8).reshape(8, 8)


# --- IDX ------------------------------------------------------------------------------------


def test_a_compressed_idx_bomb_is_refused_before_decompressing(tmp_path):
    """A small gzip whose header promises 100000 images of 4000x4000: refused from the header,
    before a byte of the body is inflated (the file would inflate to 1.6 TB)."""
    path = tmp_path / "bomb-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(idx_header((100000, 4000, 4000)) + bytes(1 << 20))
    with pytest.raises(ValueError, match=r"bomb-idx3-ubyte.gz: \(100000, 4000, 4000\) images need"):
        lvdata.load(path)


@pytest.mark.parametrize(
    "body, message",
    [
        (bytes(40), r"promises shape \(3, 4, 4\) \(48 bytes\) but the file holds 40 bytes"),
        (bytes(60), r"promises shape \(3, 4, 4\) \(48 bytes\) but the file holds 60 bytes"),
    ],
)
@pytest.mark.parametrize("compress", [False, True])
def test_an_idx_file_that_does_not_hold_what_its_header_says(tmp_path, body, message, compress):
    path = tmp_path / ("a-idx3-ubyte" + (".gz" if compress else ""))
    raw = idx_header((3, 4, 4)) + body
    path.write_bytes(gzip.compress(raw) if compress else raw)
    if compress and len(body) > 48:
        message = "but the file holds more bytes"
    elif compress:
        message = "but the file holds 40 bytes"
    with pytest.raises(ValueError, match=message):
        lvdata.load(path)


def test_a_truncated_gzip_idx_names_the_file(tmp_path):
    path = tmp_path / "a-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_header((3, 4, 4)) + bytes(48))[:-12])
    with pytest.raises(ValueError, match=r"a-idx3-ubyte.gz: cannot read IDX file"):
        lvdata.load(path)


# --- arrays ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arr, levels",
    [
        (np.arange(3 * 16).reshape(3, 4, 4) * 5 % 256, 256),  # int64 8-bit images
        (np.arange(3 * 16, dtype=np.int32).reshape(3, 4, 4) * 5, 256),
        (np.arange(3 * 16, dtype=np.float64).reshape(3, 4, 4) * 5, 256),  # 8-bit as float
        (np.arange(3 * 16).reshape(3, 4, 4) % 2 == 1, 2),  # bool
        (np.linspace(0, 1, 3 * 16).reshape(3, 4, 4), None),  # continuous in [0, 1]
        (np.full((3, 4, 4), 0.5), None),
    ],
)
def test_integer_and_whole_float_pixels_in_0_255_are_8_bit(tmp_path, arr, levels):
    np.save(tmp_path / "a.npy", arr)
    d = lvdata.load(tmp_path / "a.npy")
    assert d.levels == levels and d.x.dtype == torch.float32
    assert torch.equal(d.x[:, 0], torch.as_tensor(arr.astype(np.float32)))


@pytest.mark.parametrize(
    "arr, message",
    [
        (np.arange(3 * 16).reshape(3, 4, 4) * 100, r"integer pixels span 0\.\.4700, beyond 8 bits"),
        (np.arange(-8, 40).reshape(3, 4, 4), r"integer pixels span -8\.\.39"),
        (np.array([["ab"] * 4] * 12).reshape(3, 4, 4), "have dtype <U2, not numbers"),
        (np.zeros((3, 4, 4), dtype="datetime64[s]"), "have dtype datetime64"),
        (np.zeros((3, 4, 4), dtype=complex), "have dtype complex128"),
        (np.full((3, 4, 4), 1e300), "beyond float32"),
        (np.zeros((3, 2, 4, 4)), r"got shape \(3, 2, 4, 4\)"),
        (np.zeros((0, 4, 4), np.uint8), r"the dataset is empty"),
    ],
)
def test_arrays_lvmkit_cannot_read_are_refused_with_the_fix(tmp_path, arr, message):
    np.save(tmp_path / "a.npy", arr)
    with pytest.raises(ValueError, match=message):
        lvdata.load(tmp_path / "a.npy")


def test_declared_levels_override_and_are_checked(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(3 * 16).reshape(3, 4, 4) * 100)
    assert lvdata.load(tmp_path / "a.npy", levels=4701).levels == 4701
    with pytest.raises(ValueError, match=r"declared 1000 levels, so pixels must be integers"):
        lvdata.load(tmp_path / "a.npy", levels=1000)


@pytest.mark.parametrize(
    "labels, message",
    [
        (
            np.array([0.0, np.nan, 1.0]),
            r"1 labels are not whole numbers \(the first, .*nan.*at 1\)",
        ),
        (np.array(["a", "b", "c"]), "the labels have dtype <U1, not numbers"),
        (np.zeros((3, 2)), r"labels must be one number per image, got shape \(3, 2\)"),
        (np.array([-1, 0, 1]), "labels must be class numbers 0..K-1 with K <= 65536, got -1"),
        (np.array([0, 1]), "3 images but 2 labels"),
    ],
)
def test_bad_labels_are_refused_when_loaded(tmp_path, labels, message):
    np.savez(tmp_path / "a.npz", x=np.zeros((3, 4, 4), np.uint8), y=labels)
    with pytest.raises(ValueError, match=message):
        lvdata.load(tmp_path / "a.npz")


def test_whole_float_labels_are_read_as_classes(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((3, 4, 4), np.uint8), y=np.array([[0.0], [2.0], [1.0]]))
    assert lvdata.load(tmp_path / "a.npz").y.tolist() == [0, 2, 1]


def test_array_headers_that_promise_more_than_memory_are_refused_before_reading(tmp_path):
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**6, 1000, 1000)}
    with open(tmp_path / "big.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(bytes(64))
    with pytest.raises(ValueError, match=r"big.npy: cannot read as a numpy array|need .* GiB"):
        lvdata.load(tmp_path / "big.npy")
    import zipfile

    with zipfile.ZipFile(tmp_path / "big.npz", "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("x.npy", "w") as f:  # a header promising 8 TB, and a few bytes
            np.lib.format.write_array_header_1_0(f, header)
            f.write(bytes(64))
    with pytest.raises(ValueError, match=r"big.npz: \(1000000, 1000, 1000\) images need"):
        lvdata.load(tmp_path / "big.npz")


# --- PNG folders ----------------------------------------------------------------------------


def test_hidden_folders_are_skipped_and_labels_follow_the_classes(tmp_path):
    for name in ("cat", "dog", ".ipynb_checkpoints"):
        png(tmp_path / name / "1.png", GREY)
    png(tmp_path / "dog" / "2.png", GREY)
    png(tmp_path / "dog" / ".hidden.png", GREY)
    d = lvdata.load(tmp_path)
    assert d.y.tolist() == [0, 1, 1] and len(d) == 3


def test_loose_pngs_beside_class_folders_are_refused(tmp_path):
    png(tmp_path / "cat" / "1.png", GREY)
    png(tmp_path / "stray.png", GREY)
    with pytest.raises(ValueError, match=r"holds both class folders \(cat.*and loose PNGs \(stray"):
        lvdata.load(tmp_path)


@pytest.mark.parametrize(
    "arr, mode, channels",
    [
        (GREY, "L", 1),
        (np.stack([GREY, np.full_like(GREY, 255)], -1), "LA", 1),  # opaque alpha is dropped
        (np.stack([GREY, GREY, GREY, np.full_like(GREY, 255)], -1), "RGBA", 3),
        (np.stack([GREY, 255 - GREY, GREY], -1), "RGB", 3),
    ],
)
def test_png_modes_read_as_grey_or_rgb(tmp_path, arr, mode, channels):
    png(tmp_path / "a.png", arr, mode)
    d = lvdata.load(tmp_path)
    assert d.image_shape == (channels, 8, 8) and d.levels == 256
    assert torch.equal(d.x[0, 0], torch.as_tensor(GREY, dtype=torch.float32))


def test_palette_pngs_are_read_through_their_palette(tmp_path):
    (tmp_path / "grey").mkdir()
    Image.fromarray(GREY).convert("P").save(tmp_path / "grey" / "a.png")  # a palette of greys
    d = lvdata.load(tmp_path / "grey")
    assert d.image_shape == (1, 8, 8) and torch.equal(d.x[0, 0], torch.as_tensor(GREY).float())
    colour = np.stack([GREY, 255 - GREY, np.zeros_like(GREY)], -1)
    (tmp_path / "colour").mkdir()
    Image.fromarray(colour).quantize(64).save(tmp_path / "colour" / "a.png")
    c = lvdata.load(tmp_path / "colour")
    assert c.image_shape == (3, 8, 8) and c.x[0, 1].sum() > 0  # colour kept, not greyed


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda p: png(p, np.full((8, 8), 40000, np.uint16)),
            r"a I;16 .*image; lvmkit reads 8-bit",
        ),
        (
            lambda p: png(p, np.stack([GREY, GREY], -1), "LA"),
            "has transparent pixels; .* flatten them onto a background",
        ),
        (lambda p: p.write_bytes(b""), "cannot read as a PNG image"),
        (lambda p: p.write_text("not an image"), "cannot read as a PNG image"),
        (lambda p: Image.fromarray(GREY).save(p, format="JPEG"), "is a JPEG image, not a PNG"),
        (lambda p: os.symlink(p.parent / "gone.png", p), "a symbolic link to nothing"),
    ],
)
def test_pngs_lvmkit_cannot_read_are_refused_naming_the_file(tmp_path, make, message):
    png(tmp_path / "a.png", GREY)
    make(tmp_path / "b.png")
    with pytest.raises(ValueError, match=f"b.png: {message}"):
        lvdata.load(tmp_path)


def test_a_truncated_png_names_the_file(tmp_path):
    path = png(tmp_path / "a.png", np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"a.png: cannot read as a PNG image \(.*truncated"):
        lvdata.load(tmp_path)


def test_a_decompression_bomb_png_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a 64x64 image is a "bomb" here
    png(tmp_path / "a.png", np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="a.png: cannot read as a PNG image .*decompression bomb"):
        lvdata.load(tmp_path)


def test_a_folder_of_more_pngs_than_open_files_allowed_loads(tmp_path):
    for i in range(300):
        png(tmp_path / f"{i:03}.png", GREY)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    open_now = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + 64, hard))
    try:
        assert len(lvdata.load(tmp_path)) == 300  # one file open at a time
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_continuous_pixels_outside_0_1_are_refused_by_a_gaussian_model():
    x = torch.rand(20, 1, 8, 8) * 255  # 8-bit values kept as continuous floats
    model = build_model("lvm", (1, 8, 8), None)
    with pytest.raises(
        ValueError, match=r"continuous pixels span \[.*\]; the 'gaussian'.*\[0, 1\]"
    ):
        model.prepare(lvdata.ImageData(x))
    assert model.prepare(lvdata.ImageData(x / 255)).x.max() <= 1  # scaled: fine


# --- settings, devices, folders -------------------------------------------------------------


@pytest.mark.parametrize("device, message", [
    ("mps", "device 'mps' is not supported"),
    ("meta", "device 'meta' is not supported"),
    ("tpu", "unknown device 'tpu'"),
    ("cuda:7", "cuda:7"),
])  # fmt: skip
def test_unusable_devices_are_refused_before_anything_is_written(tmp_path, capsys, device, message):
    out = tmp_path / "run"
    assert main(["fit", "lvm", "--epochs", "1", "--device", device, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()
    x = torch.randn(10, 3)
    from test_svi import user_pair

    with pytest.raises(ValueError, match=message):
        lvmkit.fit(*user_pair(), x, epochs=1, device=device, progress=False)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "{tmp}"], "is a folder; give a TOML file"),
        (["--out", "{tmp}/file"], "--out {tmp}/file is a file; give a folder"),
        (["--data", ""], "--data is empty; give 'digits' or a path"),
        (["--data", "  "], "--data is empty"),
    ],
)
def test_a_wrong_kind_of_path_is_a_clear_error(tmp_path, capsys, args, message):
    (tmp_path / "file").write_text("mine")
    args = [a.format(tmp=tmp_path) for a in args]
    out = ["--out", str(tmp_path / "run")] if "--out" not in args else []
    assert main(["fit", "lvm", "--epochs", "1", *args, *out]) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.parametrize(
    "text, message",
    [
        ("fit = 3\n", "fit = 3 should be a table: a line [fit] followed by key = value lines"),
        ("[train]\nlr = 1\n", "unknown table [train]; valid tables are ['data', 'model', 'fit']"),
        ("[fit]\nlr = nan\n", "[fit] lr = nan: must be a finite number"),
        ("[model]\nz_dim = 10000000000\n", "needs more memory than this machine has"),
        ("[fit\n", "is not valid TOML"),
    ],
)
def test_config_files_that_cannot_be_used_say_why_without_contradiction(
    tmp_path, capsys, text, message
):
    (tmp_path / "run.toml").write_text(text)
    out = tmp_path / "run"
    assert main(["fit", "lvm", "--config", str(tmp_path / "run.toml"), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_checkpoint_version_messages_do_not_contradict(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"params": {}}, path)
    state = torch.load(path, weights_only=True)
    state.pop("sha256")
    for version, message in [
        ("1", r"a version field of '1' \(str, not a number\): the file was edited"),
        (2, "has checkpoint version 2; this lvmkit reads version 1 only"),
    ]:
        state["version"] = version
        torch.save(state, path)
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(path)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, d, x: lvmkit.log_likelihood(m.model, m.guide, x, batch_size=0), "batch_size"),
        (lambda m, d, x: lvmkit.log_likelihood(m.model, m.guide, x, num_samples=0), "num_sampl"),
        (lambda m, d, x: lvmkit.posterior(m.model, m.guide, x.x[:2], num_samples=0), "num_sampl"),
        (lambda m, d, x: m.sample_images(-1), "n must be a positive int, got -1"),
        (lambda m, d, x: lvmkit.diagnose(m, d, num_samples=1), "num_samples must be an int >= 10"),
        (lambda m, d, x: lvmkit.diagnose(m, d, num_images=0), "num_images must be a positive int"),
        (lambda m, d, x: lvmkit.evaluate(m, d, num_samples=-1), "num_samples must be a positive"),
        (lambda m, d, x: lvmkit.diagnostics.psis_khat(torch.zeros(3, 5)), "at least 10 draws"),
    ],
)
def test_counts_below_what_an_estimate_needs_are_refused(call, message):
    model = build_model("lvm", (1, 8, 8), 17, {"hidden": (16,), "z_dim": 2})
    data = lvdata.load("digits")[:20]
    with pytest.raises(ValueError, match=message):
        call(model, data, model.prepare(data))


# --- run folders ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "lvm"
    config = run.parent / "small.toml"
    config.write_text("[model]\nhidden = [16]\nz_dim = 2\n")
    args = ["fit", "lvm", "--epochs", "1", "--config", str(config), "--no-progress"]
    assert main([*args, "--out", str(run)]) == 0
    return run


def copy_run(finished_run, tmp_path):
    return shutil.copytree(finished_run, tmp_path / "run")


@pytest.mark.parametrize(
    "file, content, command, message",
    [
        ("evaluation.json", "", "diagnose", "evaluation.json is not valid JSON"),
        ("summary.json", "{", "sample", "summary.json is not valid JSON"),
    ],
)
def test_a_damaged_result_file_is_named_with_the_fix(
    finished_run, tmp_path, capsys, file, content, command, message
):
    run = copy_run(finished_run, tmp_path)
    (run / file).write_text(content)
    assert main([command, str(run)]) == 2
    err = capsys.readouterr().err
    assert message in err and "delete it, or write it again" in err


def test_a_model_file_from_other_settings_is_refused(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    state = load_checkpoint(run / "model.pt")
    edits = {
        "other settings": lambda s: s["config"].update(z_dim=5),
        "an unknown setting": lambda s: s["config"].update(bogus=1),
        "no data": lambda s: s.pop("data"),
    }
    for edit in edits.values():
        changed = {k: v for k, v in state.items() if k not in ("format", "version", "sha256")}
        changed["config"] = dict(changed["config"])
        edit(changed)
        save_checkpoint(changed, run / "model.pt")
        with pytest.raises(CheckpointError, match="model.pt"):
            lvmkit.load_run(run)
        assert main(["sample", str(run)]) == 2
        assert "model.pt" in capsys.readouterr().err


def test_outputs_are_checked_writable_before_computing(finished_run, tmp_path, capsys, monkeypatch):
    run = copy_run(finished_run, tmp_path)
    (run / "evaluation.json").mkdir()  # in the way of the file evaluate writes
    (run / "samples.png").unlink()
    (run / "samples.png").mkdir()
    import lvmkit.runs.scoring as scoring

    def never(*args, **kwargs):
        raise AssertionError("computed before checking that the result can be written")

    monkeypatch.setattr(scoring, "evaluate", never)
    monkeypatch.setattr(scoring, "convergence", never)
    assert main(["evaluate", str(run)]) == 2
    assert "evaluation.json: a folder of that name is in the way" in capsys.readouterr().err
    assert main(["sample", str(run)]) == 2
    assert "samples.png: a folder of that name is in the way" in capsys.readouterr().err
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the folder should be")
    with pytest.raises(OSError, match="cannot write into"):
        lvmkit.core.files.check_writable(blocked / "sub" / "x.json")


def test_labels_a_probe_cannot_use_are_said_at_the_start_and_the_run_finishes(tmp_path, capsys):
    x = np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "one.npz", x=x, y=np.zeros(40, int))  # a single class
    out = tmp_path / "run"
    args = ["fit", "ae", "--data", str(tmp_path / "one.npz"), "--epochs", "1", "--no-progress"]
    assert main([*args, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "no linear probe: the labels hold 1 class(es)" in err
    summary = json.loads((out / "summary.json").read_text())
    assert "linear_probe_accuracy" not in summary and summary["epochs"] == 1


def test_pngs_of_different_sizes_are_refused_as_such(tmp_path):
    png(tmp_path / "a.png", GREY)
    png(tmp_path / "b.png", np.zeros((4, 6), np.uint8))
    with pytest.raises(
        lvdata.DataError, match=r"images differ in size: a.png is 8x8 but b.png is 6x4"
    ):
        lvdata.load(tmp_path)


def test_resume_of_a_folder_without_a_run_is_an_error(tmp_path, capsys):
    """A typo in --out with --resume must not start a new run on the default data."""
    out = tmp_path / "run"
    args = ["fit", "lvm", "--epochs", "1", "--no-progress"]
    assert main([*args, "--out", str(out), "--resume"]) == 2
    assert capsys.readouterr().err == (
        f"lvmkit: error: --resume: {out} holds no run (no config.toml or checkpoint.pt); check "
        "the folder's name, or leave --resume out to start a new run there\n"
    )
    assert not out.exists()


@pytest.mark.parametrize("with_checksum", [True, False])
def test_nan_weights_in_a_model_file_are_named_on_loading(finished_run, tmp_path, capsys,
                                                           with_checksum):  # fmt: skip
    run = copy_run(finished_run, tmp_path)
    state = torch.load(run / "model.pt", weights_only=True)
    key = next(k for k, v in state["state_dict"].items() if v.is_floating_point())
    state["state_dict"][key] = torch.full_like(state["state_dict"][key], float("nan"))
    state.pop("sha256")
    if with_checksum:  # a file another program wrote whole, checksum and all
        from lvmkit.core.files import checksum

        state["sha256"] = checksum(state)
    torch.save(state, run / "model.pt")
    assert main(["sample", str(run)]) == 2
    err = capsys.readouterr().err
    if with_checksum:
        assert f"model.pt: state['state_dict'][{key!r}] holds NaN/inf values" in err
    else:  # without its checksum a file is refused before its contents are looked at
        assert "model.pt has no checksum, which lvmkit writes into every checkpoint" in err
    assert "constraint" not in err


# --- found by a new user's trial --------------------------------------------------------------


@pytest.mark.parametrize(
    "setting, message",
    [
        ("fit.elbo=foo", "must be one of ['dreg', 'elbo', 'enum', 'iwae', 'meanfield', 'stl']"),
        ("fit.optimizer=lbfgs", "must be one of ['adam', 'adamw', 'sgd']"),
        ("fit.seed=-1", "must be a seed in 0 .. 2**32 - 1"),
        ("data.levels=1", "must be"),
    ],
)
def test_settings_that_would_fail_late_are_refused_before_the_run_folder_exists(
    tmp_path, capsys, setting, message
):
    out = tmp_path / "run"
    assert main(["fit", "lvm", "--epochs", "1", "--set", setting, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_fit_never_replaces_a_checkpoint_unasked(tmp_path):
    from test_svi import user_pair

    x = torch.randn(30, 6)
    lvmkit.fit(*user_pair(), x, epochs=2, checkpoint_dir=tmp_path, progress=False)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match="holds an earlier fit: continue it with resume=True"):
        lvmkit.fit(*user_pair(), x, epochs=1, checkpoint_dir=tmp_path, progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    lvmkit.fit(*user_pair(), x, epochs=1, checkpoint_dir=tmp_path, progress=False, overwrite=True)
    assert (tmp_path / "checkpoint.pt").read_bytes() != before
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ValueError, match="checkpoint_dir .*file is a file; give a folder"):
        lvmkit.fit(*user_pair(), x, epochs=1, checkpoint_dir=tmp_path / "file", progress=False)


def test_a_damaged_model_file_says_the_checkpoint_can_rebuild_it(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    (run / "model.pt").write_bytes(b"")
    assert main(["evaluate", str(run)]) == 2
    assert f"move model.pt away and resume the run (lvmkit.runs.fit_run with resume, or lvmkit fit MODEL --out {run} --resume)" in (  # noqa: E501
        capsys.readouterr().err
    )


def test_a_folder_in_the_way_of_a_run_file_is_found_before_training(tmp_path, capsys, monkeypatch):
    import lvmkit.runs.fitting as fitting

    monkeypatch.setattr(fitting, "fit", lambda *a, **k: pytest.fail("trained before checking"))
    (tmp_path / "run" / "model.pt").mkdir(parents=True)
    assert main(["fit", "lvm", "--out", str(tmp_path / "run"), "--overwrite"]) == 2
    assert "model.pt: a folder of that name is in the way" in capsys.readouterr().err


def test_an_os_error_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    import lvmkit.runs as runs

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system", str(tmp_path / "x"))

    monkeypatch.setattr(runs, "write_samples", read_only)
    assert main(["sample", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"lvmkit: error: {tmp_path / 'x'}: read-only file system; check that the path is right "
        "and that you may write there (--debug shows where it happened)"
    )


def test_idx_labels_of_another_length_name_the_labels_file(tmp_path):
    (tmp_path / "a-images-idx3-ubyte").write_bytes(idx_header((3, 4, 4)) + bytes(48))
    (tmp_path / "a-labels-idx1-ubyte").write_bytes(idx_header((2,)) + bytes(2))
    with pytest.raises(lvdata.DataError, match=r"a-labels-idx1-ubyte: 2 labels for the 3 images"):
        lvdata.load(tmp_path / "a-images-idx3-ubyte")


def test_a_text_file_named_npy_is_not_an_invitation_to_unpickle(tmp_path):
    (tmp_path / "a.npy").write_text("hello")
    with pytest.raises(lvdata.DataError, match="which lvmkit never does|cannot read") as err:
        lvdata.load(tmp_path / "a.npy")
    assert "allow_pickle" not in str(err.value) and "unsafely" not in str(err.value)


def test_data_changed_since_the_fit_are_refused_and_levels_can_be_declared(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "wide.npy", rng.integers(0, 1000, (60, 8, 8)))  # 10-bit integers
    run = tmp_path / "run"
    args = ["fit", "gmm", "--data", str(tmp_path / "wide.npy"), "--epochs", "1", "--no-progress"]
    assert main([*args, "--out", str(run)]) == 2
    assert "declare their number of levels" in capsys.readouterr().err
    assert main([*args, "--set", "data.levels=1000", "--out", str(run)]) == 0
    wide = np.load(tmp_path / "wide.npy")
    wide[-1, 0, 0] = (wide[-1, 0, 0] + 1) % 1000  # one pixel, wherever it landed in the split
    np.save(tmp_path / "wide.npy", wide)
    assert main(["evaluate", str(run), "--no-progress"]) == 2
    assert "changed since" in capsys.readouterr().err
