"""Named datasets against a local server (no test touches the internet), and data that carry
their own split: .npz keys, IDX train/test files, PNG train/test folders, flat rows."""

import dataclasses
import gzip
import hashlib
import http.server
import struct
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from lvmkit import data as lvdata
from lvmkit.data import DATASETS, DataError
from lvmkit.data.datasets import Remote


def idx(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes(), mtime=0)


RNG = np.random.default_rng(0)
FILES = {  # a small dataset in MNIST's format: 30 train and 10 test 6x6 images
    "train-images-idx3-ubyte.gz": idx(RNG.integers(0, 256, (30, 6, 6))),
    "train-labels-idx1-ubyte.gz": idx(RNG.integers(0, 10, 30)),
    "t10k-images-idx3-ubyte.gz": idx(RNG.integers(0, 256, (10, 6, 6))),
    "t10k-labels-idx1-ubyte.gz": idx(RNG.integers(0, 10, 10)),
}


class Server:
    """Serves FILES on 127.0.0.1; ``mode`` makes it cut a file short or send other bytes."""

    def __init__(self):
        self.mode, self.requests = "ok", []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append(name)
                body = FILES.get(name)
                if body is None:
                    self.send_error(404)
                    return
                if server.mode == "corrupt":
                    body = body[:-1] + bytes([body[-1] ^ 1])
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.mode == "drip":  # a byte at a time, each well within the timeout
                    for i in range(len(body)):
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                        time.sleep(0.02)
                    return
                self.wfile.write(body[: len(body) // 2] if server.mode == "cut" else body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server(monkeypatch, tmp_path):
    s = Server()
    files = tuple(
        Remote(name, hashlib.sha256(body).hexdigest(), len(body)) for name, body in FILES.items()
    )
    spec = dataclasses.replace(DATASETS["mnist"], mirrors=(s.url,), files=files)
    monkeypatch.setitem(DATASETS, "mnist", spec)
    monkeypatch.setenv("LVMKIT_DATA", str(tmp_path / "cache"))
    yield s
    s.httpd.shutdown()


def test_a_named_dataset_downloads_once_verified_with_its_split(server, tmp_path):
    data = lvdata.load("mnist")
    assert data.splits == {"train": (0, 30), "test": (30, 40)} and data.levels == 256
    assert data.image_shape == (1, 6, 6) and data.y is not None
    assert len(server.requests) == 4
    assert torch.equal(lvdata.load("mnist", split="test").x, data.x[30:])
    assert len(server.requests) == 4  # from the cache the second time
    cached = tmp_path / "cache" / "mnist"
    assert sorted(p.name for p in cached.iterdir()) == sorted(FILES)


def test_a_damaged_cached_file_is_refused_and_fetched_again(server, tmp_path, capsys):
    lvdata.load("mnist")
    victim = tmp_path / "cache" / "mnist" / "t10k-images-idx3-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:-3])
    assert len(lvdata.load("mnist")) == 40
    assert server.requests[4:] == ["t10k-images-idx3-ubyte.gz"]
    assert "is not the expected file (SHA-256" in capsys.readouterr().out
    assert victim.read_bytes() == FILES["t10k-images-idx3-ubyte.gz"]


def test_a_file_the_user_placed_is_kept_when_no_download_can_replace_it(server, tmp_path):
    lvdata.load("mnist")
    victim = tmp_path / "cache" / "mnist" / "t10k-images-idx3-ubyte.gz"
    mine = gzip.compress(gzip.decompress(FILES["t10k-images-idx3-ubyte.gz"]), mtime=1)
    victim.write_bytes(mine)  # the same images, gzipped otherwise: another SHA-256
    server.mode = "cut"
    with pytest.raises(DataError, match="cannot download 'mnist'"):
        lvdata.load("mnist")
    assert victim.read_bytes() == mine  # not deleted for a download that never came


@pytest.mark.parametrize(
    "mode, message",
    [("cut", "IncompleteRead|interrupted"), ("corrupt", "wrong SHA-256")],
)
def test_an_interrupted_or_wrong_download_leaves_nothing_and_a_retry_works(
    server, tmp_path, mode, message
):
    server.mode = mode
    with pytest.raises(DataError, match=message):
        lvdata.load("mnist")
    cached = tmp_path / "cache" / "mnist"
    assert list(cached.iterdir()) == []  # no partial file, no temporary
    server.mode = "ok"
    assert len(lvdata.load("mnist")) == 40


def test_a_download_that_trickles_meets_its_deadline(server, tmp_path, monkeypatch):
    monkeypatch.setattr(lvdata.datasets, "download_deadline", lambda size: 0.3)
    server.mode = "drip"
    with pytest.raises(DataError, match=r"stalled: \d+ of \d+ bytes in 0 s, below 50 kB/s"):
        lvdata.load("mnist")
    assert list((tmp_path / "cache" / "mnist").iterdir()) == []


def test_offline_the_error_names_the_files_and_where_to_put_them(server, tmp_path, monkeypatch):
    server.httpd.shutdown()
    server.httpd.server_close()  # nothing listens there now
    with pytest.raises(DataError) as err:
        lvdata.load("mnist")
    message = str(err.value)
    assert "cannot download 'mnist'" in message and "Offline? Put its files in" in message
    assert str(tmp_path / "cache" / "mnist") in message and "LVMKIT_DATA" in message
    assert all(f"{name} (sha256 " in message for name in FILES)


def test_image_shape_is_only_for_flat_rows(server):
    with pytest.raises(DataError, match=r"images of shape \(1, 6, 6\), not the image_shape"):
        lvdata.load("mnist", image_shape=(1, 3, 12))
    assert lvdata.load("mnist", image_shape=(1, 6, 6)).image_shape == (1, 6, 6)


def test_the_offline_28x28_digits():
    data = lvdata.load("mnist5k")
    assert data.x.shape == (5000, 1, 28, 28) and data.levels == 256
    assert data.splits == {"train": (0, 4000), "test": (4000, 5000)}
    assert data.part("test").y.bincount().tolist() == [100] * 10
    assert data.x.mean() > 20  # real strokes on a dark background


# --- data files that carry their split -------------------------------------------------------


def test_an_npz_of_flat_rows_with_a_split(tmp_path):
    x_train = RNG.integers(0, 256, (20, 2 * 3), dtype=np.uint8)
    x_test = RNG.integers(0, 256, (5, 6), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", x_train=x_train, y_train=np.arange(20) % 3, x_test=x_test,
             y_test=np.arange(5) % 3)  # fmt: skip
    data = lvdata.load(tmp_path / "a.npz", image_shape=(1, 2, 3))
    assert data.splits == {"train": (0, 20), "test": (20, 25)} and data.levels == 256
    assert torch.equal(data.part("test").x, torch.as_tensor(x_test).float().view(5, 1, 2, 3))
    train, val, test = lvdata.train_val_test(data, 0.2, seed=0)
    assert (len(train), len(val), len(test)) == (16, 4, 5)
    assert torch.equal(test.x, data.part("test").x)  # the given test part, not a re-split
    with pytest.raises(DataError, match=r"flat rows of shape \(20, 6\): give the image shape"):
        lvdata.load(tmp_path / "a.npz")
    with pytest.raises(DataError, match="rows of 6 values cannot be images of shape"):
        lvdata.load(tmp_path / "a.npz", image_shape=(1, 2, 2))
    with pytest.raises(ValueError, match=r"no part 'val' \(the data carry \['test', 'train'\]\)"):
        data.part("val")


def test_an_npz_split_needs_train_and_test(tmp_path):
    np.savez(tmp_path / "a.npz", x_train=np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(DataError, match="a split needs x_train and x_test"):
        lvdata.load(tmp_path / "a.npz")
    part = np.zeros((3, 4, 4), np.uint8)
    np.savez(tmp_path / "b.npz", x_train=part, x_val=part)  # no test part: not a split
    with pytest.raises(DataError, match="a split needs x_train and x_test"):
        lvdata.load(tmp_path / "b.npz")


def test_idx_train_and_test_files_in_a_folder_are_a_split(tmp_path):
    for name, body in FILES.items():
        (tmp_path / name).write_bytes(body)
    data = lvdata.load(tmp_path)
    assert data.splits == {"train": (0, 30), "test": (30, 40)} and len(data.y) == 40


def test_png_train_and_test_folders_are_a_split_with_shared_classes(tmp_path):
    grey = np.zeros((4, 4), np.uint8)
    for part, classes in [("train", ["cat", "dog"]), ("test", ["dog"])]:
        for c in classes:
            (tmp_path / part / c).mkdir(parents=True)
            Image.fromarray(grey).save(tmp_path / part / c / "1.png")
    data = lvdata.load(tmp_path)
    assert data.splits == {"train": (0, 2), "test": (2, 3)}
    assert data.y.tolist() == [0, 1, 1]  # 'dog' is class 1 in both parts


def test_data_without_a_split_are_split_at_random_as_before():
    digits = lvdata.load("digits")
    parts = lvdata.train_val_test(digits, 0.1, seed=0)
    for a, b in zip(parts, lvdata.split(digits, (0.8, 0.1, 0.1), seed=0), strict=True):
        assert torch.equal(a.x, b.x)
    with pytest.raises(ValueError, match="val_fraction must lie strictly between 0 and 1"):
        lvdata.train_val_test(digits, 0.0)
