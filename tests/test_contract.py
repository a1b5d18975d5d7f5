"""The built-in model contract: a toy model written in this file only, registered by name, and
driven through the CLI (fit, sample, complete, evaluate, diagnose) and ``load_run``."""

import json
import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import lvmkit
from lvmkit import data as lvdata
from lvmkit.cli import main
from lvmkit.models import MODELS, BuiltinModel, register_model


@dataclass
class PPCAConfig:
    image_shape: tuple[int, ...] = (1, 8, 8)
    z_dim: int = 2


class PPCA(BuiltinModel):
    """Probabilistic PCA over the pixels: z ~ N(0, I), x = W z + b + s * noise, with an
    amortized diagonal Gaussian q(z | x). Its log p(x) is known in closed form."""

    config_class = PPCAConfig
    can_sample = True
    can_complete = True
    can_reconstruct = True
    can_encode = True
    gaussian_code = True
    data_kind = "continuous"

    def __init__(self, config: PPCAConfig | None = None):
        super().__init__()
        self.config = c = config or PPCAConfig()
        d = math.prod(c.image_shape)
        self.decoder = nn.Linear(c.z_dim, d)
        self.log_noise = nn.Parameter(torch.tensor(-1.0))
        self.encoder = nn.Linear(d, 2 * c.z_dim)

    def prepare(self, data):
        return lvdata.scale(data)

    def model(self, x=None, n=None):
        pyro.module("ppca", self)
        n = len(x) if x is not None else n
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.config.z_dim), 1.0).to_event(1))
            loc = self.decode_mean(z)
            return pyro.sample("x", dist.Normal(loc, self.log_noise.exp()).to_event(3), obs=x)

    def guide(self, x=None, n=None):
        pyro.module("ppca", self)
        with pyro.plate("data", len(x)):
            pyro.sample("z", self.encode(x))

    def encode(self, x):
        loc, raw = self.encoder(x.flatten(1)).chunk(2, -1)
        return dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1)

    def decode_mean(self, z):
        return self.decoder(z).reshape(*z.shape[:-1], *self.config.image_shape)

    @torch.no_grad()
    def sample(self, n):
        with pyro.poutine.block():
            return self.model(n=n)

    @torch.no_grad()
    def reconstruct(self, x):
        return self.decode_mean(self.encode(x).mean)

    @torch.no_grad()
    def complete(self, x, known):
        return torch.where(known, x, self.reconstruct(torch.where(known, x, 0.0)))

    def exact_log_prob(self, x):
        """log p(x) = log N(x | b, W W^T + s^2 I), per image."""
        w, b = self.decoder.weight.double(), self.decoder.bias.double()
        cov = w @ w.T + self.log_noise.double().exp() ** 2 * torch.eye(len(b), dtype=w.dtype)
        return dist.MultivariateNormal(b, cov).log_prob(x.flatten(1).double())


@pytest.fixture
def toy():
    register_model("ppca", PPCA, "probabilistic PCA (a test's toy)")
    yield "ppca"
    MODELS.pop("ppca")


def test_a_toy_model_runs_through_every_command(toy, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["fit", toy, "--epochs", "15", "--lr", "0.01", "--out", str(run), "--no-progress"]
    assert main(args) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == toy and summary["epochs"] == 15
    assert 0.1 < summary["linear_probe_accuracy"] <= 1
    for name in ("samples.png", "reconstructions.png", "completions.png", "losses.png"):
        assert (run / name).is_file(), name
    assert main(["sample", str(run), "--n", "4"]) == 0
    assert main(["complete", str(run), "--n", "4"]) == 0

    assert main(["evaluate", str(run), "--num-samples", "2000", "--no-progress"]) == 0
    estimate = json.loads((run / "evaluation.json").read_text())
    assert estimate["exact"] is False and estimate["num_samples"] == 2000
    loaded = lvmkit.load_run(run)
    assert isinstance(loaded.model, PPCA) and loaded.summary == summary
    assert loaded.config["fit"]["epochs"] == 15 and loaded.config["fit"]["lr"] == 0.01
    with torch.no_grad():
        exact = loaded.model.exact_log_prob(loaded.model.inputs(loaded.test_data())[0])
    # importance sampling with the amortized guide reaches the closed form
    assert estimate["log_likelihood"] == pytest.approx(float(exact.mean()), abs=0.02)

    assert main(["diagnose", str(run), "--num-samples", "50", "--no-progress"]) == 0
    results = json.loads((run / "diagnostics.json").read_text())
    assert results["evaluation"] == estimate and results["active_units"] >= 1
    assert len(results["kl_per_dim"]) == 2
    page = (run / "report.html").read_text()
    for name in ("khat.png", "kl_per_dim.png", "traversals.png", "latent_space.png"):
        assert f"<figcaption>{name}</figcaption>" in page


def test_register_model_wants_the_contract():
    class NotAModel(nn.Module):
        pass

    class NoComplete(PPCA):
        complete = None  # declares can_complete without the method

    class NoLogProb(PPCA):
        density = "exact"

    with pytest.raises(ValueError, match="not a BuiltinModel subclass"):
        register_model("bad", NotAModel, "no contract")
    with pytest.raises(ValueError, match="can_complete = True but has no complete"):
        register_model("bad", NoComplete, "an ability without its method")
    with pytest.raises(ValueError, match="density = 'exact' but has no log_prob"):
        register_model("bad", NoLogProb, "an exact density without log_prob")
    assert "bad" not in MODELS


def test_runs_and_estimators_say_what_they_were_given(toy, tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    assert "is not a finished run (no model.pt" in capsys.readouterr().err
    with pytest.raises(ValueError, match="use lvmkit.log_likelihood"):
        lvmkit.evaluate(PPCA().model, lvdata.load("digits"))
    with pytest.raises(ValueError, match="takes ImageData"):
        lvmkit.diagnose(PPCA(), torch.rand(4, 1, 8, 8))
    run = tmp_path / "run"
    assert main(["fit", toy, "--epochs", "1", "--out", str(run), "--no-progress"]) == 0
    MODELS.pop(toy)
    with pytest.raises(ValueError, match="'ppca', which is not registered in this process"):
        lvmkit.load_run(run)
    register_model(toy, PPCA, "back again, for the fixture's clean-up")
