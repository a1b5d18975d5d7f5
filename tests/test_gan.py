"""The GAN: one step of the adversarial algorithm is the hand-written GAN update, its noise is
drawn by position, AIS from the prior meets quadrature under its noise model, and the CLI fits,
resumes, samples and evaluates it (and refuses the wrong algorithm)."""

import copy
import math

import pyro
import pytest
import torch
from torch.nn import functional as F

import lvmkit
from lvmkit.cli import main
from lvmkit.core.rng import draw_keys, drawn_by
from lvmkit.inference.adversarial import BETAS, Adversarial, standard_normal
from lvmkit.models import GAN, GANConfig
from lvmkit.runs import load_run


def tiny(**settings) -> GAN:
    torch.manual_seed(0)
    return GAN(GANConfig(**{"image_shape": (1, 3, 3), "z_dim": 2, "hidden": (8,), **settings}))


def test_one_step_is_the_hand_written_gan_update():
    gan, x = tiny(), torch.rand(6, 1, 3, 3)
    by_hand = copy.deepcopy(gan)
    algorithm = Adversarial(gan, lr=0.01, device="cpu")
    algorithm.setup(lvmkit.data.ImageData(x), batch_size=6)
    index = torch.arange(6)
    keys = draw_keys(0, 0, 0, index)
    algorithm.step(index, keys=keys, first=True, stop=False)

    with drawn_by(keys):
        z = standard_normal(6, 2, "gan-discriminator", "cpu")
        z_next = standard_normal(6, 2, "gan-generator", "cpu")
    g, d = by_hand.generator, by_hand.discriminator
    opt_d = torch.optim.Adam(d.parameters(), lr=0.01, betas=BETAS)
    opt_g = torch.optim.Adam(g.parameters(), lr=0.01, betas=BETAS)
    real, fake = torch.sigmoid(d(x)), torch.sigmoid(d(g(z).detach()))
    (-(real.log() + (1 - fake).log()).mean()).backward()  # the discriminator's loss
    opt_d.step()
    opt_g.zero_grad()
    (-torch.sigmoid(d(g(z_next))).log().mean()).backward()  # non-saturating generator loss
    opt_g.step()
    for (name, a), b in zip(gan.state_dict().items(), by_hand.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_the_noise_is_standard_normal_and_drawn_by_position():
    keys = draw_keys(3, 0, 0, torch.arange(20000))
    with drawn_by(keys):
        z = standard_normal(20000, 2, "gan-generator", "cpu")
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02
    some = torch.tensor([5, 17, 3])
    with drawn_by(draw_keys(3, 0, 0, some)):
        again = standard_normal(3, 2, "gan-generator", "cpu")
    assert torch.equal(again, z[some])


def test_ais_from_the_prior_meets_quadrature_under_the_noise_model():
    """z_dim = 1 and a 1x1x2 image: p(x) = int N(z; 0, 1) N(x; G(z), s^2 I) dz on a grid."""
    gan = GAN(GANConfig(image_shape=(1, 1, 2), z_dim=1, hidden=(4,), noise_scale=0.2)).double()
    x = torch.tensor([[[[0.3, 0.6]]], [[[0.5, 0.5]]], [[[0.8, 0.2]]]], dtype=torch.float64)
    z = torch.linspace(-8, 8, 20001, dtype=torch.float64)[:, None]
    with torch.no_grad():
        mean = gan.generate(z).reshape(-1, 2)  # (grid, 2), batch norm by running statistics
    noise = torch.distributions.Normal(mean[:, None], 0.2).log_prob(x.reshape(1, 3, 2)).sum(-1)
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(z)
    exact = (noise + prior).logsumexp(0) + math.log(float(z[1] - z[0]))
    ll = lvmkit.ais(gan.model, x, num_samples=64, steps=200)
    assert (ll.values - exact).abs().max() < 4 * ll.mc_errors.max() + 0.01, (ll.values, exact)


def test_importance_sampling_is_refused_with_the_way_to_ais():
    gan = tiny()
    with pytest.raises(ValueError, match=r"lvmkit.ais\(gan.model, data\)"):
        lvmkit.log_likelihood(gan.model, gan.guide, torch.rand(4, 1, 3, 3))
    with pytest.raises(ValueError, match="AIS from the prior"):
        lvmkit.evaluate(gan, lvmkit.data.ImageData(torch.rand(4, 1, 3, 3)), method="importance")


def test_the_cli_fits_resumes_samples_and_evaluates(tmp_path, capsys):
    common = ["--no-progress", "--threads", "1", "--set", "model.hidden=[16]"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(["fit", "gan", "--epochs", "2", "--out", str(whole), *common]) == 0
    assert main(["fit", "gan", "--epochs", "1", "--out", str(part), *common]) == 0
    assert main(["fit", "gan", "--epochs", "2", "--out", str(part), "--resume", *common]) == 0
    a, b = load_run(whole).model.state_dict(), load_run(part).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_run(whole).summary["inference"] == "adversarial"
    capsys.readouterr()
    assert main(["evaluate", str(whole), "--num-samples", "4", "--steps", "5"]) == 0
    assert "AIS 4 chains x 5 steps" in capsys.readouterr().out
    assert (whole / "samples.png").exists()
    wrong = ["--epochs", "1", "--set", "fit.inference=svi"]
    assert main(["fit", "gan", "--out", str(tmp_path / "bad"), *wrong]) == 2
    assert "inference 'adversarial' alone" in capsys.readouterr().err
    wrong = ["--epochs", "1", "--set", "fit.inference=adversarial"]
    assert main(["fit", "lvm", "--out", str(tmp_path / "bad"), *wrong]) == 2
    assert "trains a GAN" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_a_pyro_program_of_its_own_runs_under_the_noise_model():
    gan, x = tiny(noise_scale=0.5), torch.rand(4, 1, 3, 3)
    trace = pyro.poutine.trace(gan.model).get_trace(x)  # in training mode
    z = trace.nodes["z"]["value"]
    gan.generator.eval()  # the program scores x under batch norm's running statistics
    expected = torch.distributions.Normal(gan.generator(z), 0.5).log_prob(x).flatten(1).sum(1)
    gan.generator.train()
    assert torch.allclose(trace.nodes["x"]["fn"].log_prob(x), expected)
    assert torch.allclose(gan.generate(z[:1]), gan.generate(z)[:1])  # pictures independent
    assert gan.generator.training  # and the mode is given back
    assert F.mse_loss(gan.sample(3), gan.sample(3)) > 0  # fresh noise each call
