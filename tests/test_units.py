"""Numbers on the literature's scales: levels read off low-valued integer data (or refused
silently as 8-bit no more), dequantized densities as bounds on discrete likelihoods in bits/dim,
bits/dim over the dimensions a model predicts."""

import json
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from test_data import write_idx

import lvmkit
from lvmkit import data as lvdata
from lvmkit.data import LevelsInferred


def digits_values() -> np.ndarray:
    """The digits' own grey values 0..16 as uint8, (N, 8, 8)."""
    return lvdata.load("digits").x[:50, 0].numpy().astype(np.uint8)


@pytest.mark.parametrize("fmt", ["npy", "npz", "idx"])
def test_integers_0_to_16_are_read_as_17_levels_and_say_so(tmp_path, fmt):
    values = digits_values()
    path = tmp_path / f"d.{fmt}" if fmt != "idx" else tmp_path / "d-images-idx3-ubyte"
    if fmt == "npy":
        np.save(path, values)
    elif fmt == "npz":
        np.savez(path, x=values)
    else:
        write_idx(path, values)
    with pytest.warns(LevelsInferred, match=r"whole numbers 0\.\.16, read as 17 levels"):
        data = lvdata.load(path)
    assert data.levels == 17
    assert float(lvdata.scale(data).x.max()) == 1.0  # not squeezed into [0, 16/255]
    declared = lvdata.load(path, levels=256)  # what the warning tells a user to write
    assert declared.levels == 256


def test_8_bit_data_and_0_1_integers_keep_their_levels(tmp_path):
    np.save(tmp_path / "a.npy", (np.arange(64).reshape(1, 8, 8) * 4).astype(np.uint8))
    assert lvdata.load(tmp_path / "a.npy").levels == 256
    np.save(tmp_path / "b.npy", (np.arange(64).reshape(1, 8, 8) % 2).astype(np.uint8))
    with pytest.warns(LevelsInferred):
        assert lvdata.load(tmp_path / "b.npy").levels == 2


def test_the_cli_fits_low_level_data_on_their_levels(tmp_path, capsys):
    from lvmkit.cli import main

    np.save(tmp_path / "d.npy", digits_values())
    run = tmp_path / "run"
    args = ["fit", "lvm", "--data", str(tmp_path / "d.npy"), "--epochs", "1", "--out", str(run)]
    code = main([*args, "--no-progress"])
    # the command says it in one line, like its errors
    said = [line for line in capsys.readouterr().err.splitlines() if "levels" in line]
    assert said == [said[0]] and said[0].startswith("lvmkit: LevelsInferred: ")
    assert "read as 17 levels" in said[0]
    assert code == 0
    assert lvmkit.load_run(run).data["levels"] == 17
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_bits_per_dim"] == pytest.approx(
        (summary["val_loss"] + 64 * math.log(17)) / (64 * math.log(2))  # dequantized on 17 levels
    )
    settings = ["--method", "ais", "--num-samples", "2", "--steps", "3", "--no-progress"]
    assert main(["evaluate", str(run), *settings]) == 0
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["method"] == "ais" and evaluation["steps"] == 3
    assert evaluation["unit"] == "nats per datapoint"
    rows = evaluation["convergence"]
    assert [r["num_samples"] for r in rows] == [1, 10, 100, 1000, 2]
    assert rows[-1]["method"] == "ais" and rows[-1]["mean"] == evaluation["log_likelihood"]
    assert all(r["bits_per_dim"] > 0 for r in rows)
    assert (run / "convergence.png").is_file()


def uniform_density(x):
    """p(x) = 1 on [0, 1)^D: a continuous density with no latent."""
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Uniform(torch.zeros_like(x[0]), 1.0).to_event(3), obs=x)


def test_a_dequantized_density_bounds_the_discrete_likelihood_in_bits_per_dim():
    """The uniform density on [0, 1) gives every level the same mass 1/L: log P(x) = -D log L,
    log2 L bits per dimension; dequantized batches lie in [0, 1)."""
    x = torch.randint(0, 4, (30, 1, 3, 3)).float()
    data = lvdata.dequantize(lvdata.ImageData(x, levels=4))
    batch = data.batch(torch.arange(30))[0]
    assert (
        batch.min() >= 0
        and batch.max() < 1
        and not torch.equal(batch, data.batch(torch.arange(30))[0])
    )
    assert torch.equal((batch * 4).floor(), x)  # each value stays in its own bin
    ll = lvmkit.log_likelihood(uniform_density, None, data)
    assert ll.method == "exact"
    assert torch.allclose(ll.values, torch.full((30,), -9 * math.log(4), dtype=torch.float64))
    assert ll.bits_per_dim == pytest.approx(2.0)


def test_a_gaussian_decoder_on_digits_reports_bits_per_dim_of_a_discrete_bound():
    digits = lvdata.load("digits")
    lvm = lvmkit.models.GaussianLVM()
    prepared = lvm.prepare(digits[:20])
    assert prepared.dequantized and prepared.levels == 17
    ll = lvmkit.evaluate(lvm, digits[:20], num_samples=5)
    assert ll.bits_per_dim == pytest.approx(-ll.mean / (64 * math.log(2)))
    assert ll.bits_per_dim > 0  # an untrained decoder: a bound well below log P(x) = 0


def test_bits_per_dim_of_a_completion_count_the_hidden_pixels_only():
    digits = lvdata.load("digits")[:24]
    clvm = lvmkit.models.ConditionalLVM()
    ll = lvmkit.evaluate(clvm, digits, num_samples=3)
    hidden = ll.dims
    assert 16 <= hidden <= 48  # one to three of four 4x4 quadrants hidden, never all 64
    assert ll.bits_per_dim == pytest.approx(-ll.mean / (hidden * math.log(2)))


def test_the_cli_evaluates_a_completion_model_in_bits_per_hidden_pixel(tmp_path, capsys):
    """The conditional model's importance-sampled rows count its hidden pixels, as
    lvmkit.evaluate does."""
    from lvmkit.cli import main

    run = tmp_path / "clvm"
    assert main(["fit", "clvm", "--epochs", "1", "--out", str(run), "--no-progress"]) == 0
    assert main(["evaluate", str(run), "--num-samples", "10", "--no-progress"]) == 0
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert all(r["bits_per_dim"] > 0 for r in evaluation["convergence"])
    assert evaluation["bits_per_dim"] == evaluation["convergence"][-1]["bits_per_dim"]
