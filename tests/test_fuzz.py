"""Fuzzing the doors bad input comes through: data files and config values. Whatever the bytes
or values, the outcome is data, a config, a model, or lvmkit's own error (ValueError and its
subclasses, CheckpointError included): never another exception.

Derandomized, so a failure is the same in every run."""

import gzip
import io
import string
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lvmkit import data as lvdata
from lvmkit.models import MODELS, build_model
from lvmkit.runs import read_config

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def outcome(fn):
    """fn() -> its value, or None where it raised lvmkit's error; anything else propagates."""
    try:
        return fn()
    except ValueError:
        return None


def loads_or_refuses(path) -> None:
    data = outcome(lambda: lvdata.load(path))
    if data is not None:  # what loads is valid data
        lvdata.check_images(data.x, data.levels, probabilities=data.dynamic_binarization)
        if data.y is not None:
            lvdata.check_labels(data.y, len(data.x))


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _png_bytes(arr: np.ndarray, mode: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


# Valid files of each format, which the mutations below damage.
_PIXELS = np.arange(3 * 6 * 6, dtype=np.uint8).reshape(3, 6, 6)
SEEDS = {
    "a-idx3-ubyte": _idx_bytes(_PIXELS),
    "a-idx3-ubyte.gz": gzip.compress(_idx_bytes(_PIXELS), mtime=0),
    "a.png": _png_bytes(_PIXELS[0], "L"),
    "a.npy": (lambda b: (np.save(b, _PIXELS), b.getvalue())[1])(io.BytesIO()),
    "a.npz": (lambda b: (np.savez_compressed(b, x=_PIXELS, y=[0, 1, 2]), b.getvalue())[1])(
        io.BytesIO()
    ),
}


@st.composite
def damaged(draw):
    """(name, bytes): a valid file of some format with bytes flipped, cut, or inserted."""
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "set"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif data:  # "set": a header field to an extreme value
            data[at] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
    return name, bytes(data)


@FUZZ
@given(damaged())
def test_damaged_files_load_or_are_refused(case):
    name, content = case
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "data"
        folder.mkdir()
        path = folder / name
        path.write_bytes(content)
        loads_or_refuses(folder if name.endswith(".png") else path)


@FUZZ
@given(st.sampled_from(sorted(SEEDS)), st.binary(max_size=300))
def test_arbitrary_bytes_load_or_are_refused(name, content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(content)
        loads_or_refuses(path)


ARRAY_DTYPES = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(),
    hnp.unsigned_integer_dtypes(),
    hnp.floating_dtypes(),
    hnp.complex_number_dtypes(),
    hnp.datetime64_dtypes(),
    hnp.unicode_string_dtypes(max_len=3),
    hnp.byte_string_dtypes(max_len=3),
)


SIDE = st.integers(1, 5)
IMAGE_SHAPES = st.one_of(
    st.tuples(SIDE, SIDE, SIDE),  # (N, H, W)
    st.tuples(SIDE, st.sampled_from([1, 3]), SIDE, SIDE),  # (N, C, H, W)
    st.tuples(SIDE, SIDE, SIDE, st.sampled_from([1, 3])),  # (N, H, W, C)
    hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4),  # anything
)


@FUZZ
@given(
    hnp.arrays(ARRAY_DTYPES, IMAGE_SHAPES),
    st.one_of(st.none(), hnp.arrays(ARRAY_DTYPES, st.one_of(st.tuples(SIDE), IMAGE_SHAPES))),
)
def test_arrays_of_any_dtype_and_shape_load_or_are_refused(x, y):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("a.npz" if y is not None else "a.npy")
        if y is None:
            np.save(path, x)
        else:
            np.savez(path, x=x, y=y)
        loads_or_refuses(path)


NPZ_KEYS = ["x", "images", "y", "labels", "x_train", "x_test", "x_val", "y_train", "y_test", "z"]


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(NPZ_KEYS),
        hnp.arrays(
            np.int64, st.one_of(st.tuples(SIDE), IMAGE_SHAPES), elements=st.integers(-1, 2**40)
        ),
        min_size=1,
        max_size=5,
    ),
    st.one_of(st.none(), st.tuples(st.integers(0, 4), st.integers(0, 5), st.integers(0, 5))),
)
def test_npz_files_of_any_keys_load_or_are_refused(arrays, image_shape):
    """Which arrays a .npz holds, under which names, with labels of any size, and any
    image_shape: its data, or lvmkit's error; never a guess between two arrays."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.npz"
        np.savez(path, **arrays)
        data = outcome(lambda: lvdata.load(path, image_shape=image_shape))
        if data is not None:
            lvdata.check_images(data.x, data.levels)
            named = {"x", "images"} & set(arrays)
            assert len(named) <= 1 and len({"y", "labels"} & set(arrays)) <= 1


@FUZZ
@given(
    st.sampled_from(["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F"]),
    st.integers(1, 5),
    st.integers(1, 5),
    st.integers(0, 2**31 - 1),
)
def test_pngs_of_any_mode_load_or_are_refused(mode, h, w, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        im = Image.frombytes(mode, (w, h), rng.bytes(len(Image.new(mode, (w, h)).tobytes())))
        try:
            im.save(Path(tmp) / "a.png")
        except OSError:  # PIL cannot write every mode as PNG
            return
        loads_or_refuses(Path(tmp))


# --- config values --------------------------------------------------------------------------

KEYS = sorted({k for name in MODELS for k in read_config(None, name)["model"]}) + [
    "epochs",
    "batch_size",
    "lr",
    "seed",
    "device",
    "jit",
    "patience",
    "optimizer",
    "elbo",
    "num_samples",
    "name",
    "split_seed",
    "unknown_key",
]
SCALARS = st.one_of(
    st.booleans(),
    st.integers(-3, 40),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=string.ascii_letters + "0123456789_.-:", max_size=12),
    st.sampled_from(["gaussian", "categorical", "logistic", "conv", "mlp", "cpu", "adam", "iwae"]),
)
VALUES = st.one_of(SCALARS, st.lists(st.one_of(st.integers(-2, 40), st.floats()), max_size=3))


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(v), repr(v))
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, str):
        return '"' + v + '"'
    return str(v)


@FUZZ
@given(
    st.sampled_from(sorted(MODELS)),
    st.dictionaries(
        st.sampled_from(["data", "model", "fit", "other"]),
        st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4),
        max_size=3,
    ),
)
def test_config_values_are_accepted_only_when_a_model_can_be_built(model_name, tables):
    """What read_config accepts builds a model or is refused by build_model (an unknown
    likelihood name, say); nothing else escapes."""
    text = "".join(
        f"[{table}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())
        for table, values in tables.items()
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.toml"
        path.write_text(text)
        config = outcome(lambda: read_config(path, model_name))
    if config is None:
        return
    torch.manual_seed(0)
    outcome(lambda: build_model(model_name, (1, 8, 8), 17, config["model"]))


@FUZZ
@given(st.text(max_size=200))
def test_arbitrary_config_text_is_read_or_refused(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.toml"
        path.write_text(text)
        outcome(lambda: read_config(path, "lvm"))


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e308"])
def test_non_finite_config_numbers_are_refused(tmp_path, value):
    (tmp_path / "run.toml").write_text(f"[fit]\nlr = {value}\n")
    if value == "1e308":
        assert read_config(tmp_path / "run.toml", "lvm")["fit"]["lr"] == 1e308
        return
    with pytest.raises(ValueError, match=r"\[fit\] lr = .*must be a finite number"):
        read_config(tmp_path / "run.toml", "lvm")
