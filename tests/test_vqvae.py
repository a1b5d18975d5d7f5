"""The VQ-VAE: its PixelCNN prior sums to one over every code grid, its training loss and
gradients are the hand-written VQ-VAE objective's, its bound is the ELBO, and the CLI fits,
resumes, evaluates and samples it."""

import itertools
import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from lvmkit.cli import main
from lvmkit.models import VQVAE, VQVAEConfig
from lvmkit.runs import load_run


def tiny(**settings) -> VQVAE:
    torch.manual_seed(0)
    base = dict(image_shape=(1, 4, 4), levels=3, codes=3, code_dim=2, channels=4,
                prior_features=4, prior_layers=2)  # fmt: skip
    return VQVAE(VQVAEConfig(**{**base, **settings}))


def images(n=5) -> torch.Tensor:
    return torch.randint(0, 3, (n, 1, 4, 4), generator=torch.Generator().manual_seed(1)).float()


def test_the_prior_sums_to_one_over_every_code_grid():
    vq = tiny()
    with torch.no_grad():  # a prior that is not uniform
        for p in vq.prior_net.parameters():
            p.add_(0.5 * torch.randn_like(p))
    grids = torch.tensor(list(itertools.product(range(3), repeat=4)), dtype=torch.float)
    grids = grids.reshape(-1, 1, 2, 2)  # all 3^4 grids of the 2x2 code grid
    with torch.no_grad():
        total = vq.prior(len(grids)).log_prob(grids).logsumexp(0)
    assert abs(float(total)) < 1e-5


def test_the_training_loss_and_its_gradients_are_the_vq_vae_objectives():
    """-ELBO while training = -log p(x | z_e + sg(e - z_e)) - log p(code) + ||sg(z_e) - e||^2
    + beta ||z_e - sg(e)||^2, gradients included (straight through to the encoder)."""
    vq, x = tiny(commitment=0.4).train(), images()
    pyro.clear_param_store()
    loss = Trace_ELBO().differentiable_loss(vq.model, vq.guide, x)
    ours = torch.autograd.grad(loss, list(vq.parameters()), allow_unused=True)

    z_e = vq.encoder(x)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 2)
    code = torch.cdist(flat, vq.codebook.weight).argmin(-1).reshape(len(x), 1, 2, 2).float()
    e = vq.codebook.weight[code.long()[:, 0]].permute(0, 3, 1, 2)
    fit = vq.obs(vq.decoder(z_e + (e - z_e).detach())).log_prob(x)
    penalty = (z_e.detach() - e).square().sum((1, 2, 3))
    penalty = penalty + 0.4 * (z_e - e.detach()).square().sum((1, 2, 3))
    by_hand = (-fit - vq.prior(len(x)).log_prob(code) + penalty).sum()
    theirs = torch.autograd.grad(by_hand, list(vq.parameters()), allow_unused=True)
    assert torch.allclose(loss, by_hand, rtol=1e-5)
    for (name, _), a, b in zip(vq.named_parameters(), ours, theirs, strict=True):
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), name
    encoder_grads = [g for (n, _), g in zip(vq.named_parameters(), ours, strict=True)
                     if n.startswith("encoder")]  # fmt: skip
    assert all(g is not None and g.abs().sum() > 0 for g in encoder_grads)


def test_the_bound_is_the_elbo_of_the_point_mass_guide():
    vq, x = tiny().eval(), images()
    elbo = -Trace_ELBO().loss(vq.model, vq.guide, x)
    with torch.no_grad():
        bound = vq.log_prob(x)
    assert math.isclose(elbo, float(bound.sum()), rel_tol=1e-5)


def test_samples_reconstructions_and_codes():
    vq, x = tiny().eval(), images()
    s = vq.sample(4)
    assert s.shape == (4, 1, 4, 4) and set(s.unique().tolist()) <= {0.0, 1.0, 2.0}
    assert vq.reconstruct(x).shape == x.shape
    codes = vq.encode(x).mean
    assert codes.shape == (5, 2 * 2 * 2)
    assert all(any(torch.equal(v, e) for e in vq.codebook.weight)
               for v in codes.reshape(5, 2, 4).permute(0, 2, 1).reshape(-1, 2))  # fmt: skip


def test_the_cli_fits_resumes_evaluates_and_samples_on_the_digits(tmp_path, capsys):
    common = ["--no-progress", "--threads", "1", "--set", "model.channels=8",
              "--set", "model.codes=8", "--set", "model.prior_features=8"]  # fmt: skip
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(["fit", "vqvae", "--epochs", "2", "--out", str(whole), *common]) == 0
    assert main(["fit", "vqvae", "--epochs", "1", "--out", str(part), *common]) == 0
    assert main(["fit", "vqvae", "--epochs", "2", "--out", str(part), "--resume", *common]) == 0
    a, b = load_run(whole).model.state_dict(), load_run(part).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    assert main(["evaluate", str(whole)]) == 0
    result = json.loads((whole / "evaluation.json").read_text())
    assert result["method"] == "bound" and not result["exact"]
    assert 0 < result["bits_per_dim"] < 20  # a bound on the 17-level likelihood
    assert "a lower bound" in capsys.readouterr().out
    assert main(["sample", str(whole), "--n", "4"]) == 0
    assert main(["diagnose", str(whole), "--no-progress"]) == 0
    quality = json.loads((whole / "diagnostics.json").read_text())["sample_quality"]
    assert quality["frechet_distance"] > 0 and 1 <= quality["inception_score"] <= 10


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"codes": 0}, "codes must be a positive int"),
        ({"downsample": 3}, r"divisible by 8; \(4, 4\) is not"),
        ({"commitment": -1.0}, "commitment"),
    ],
)
def test_settings_that_cannot_work_are_refused(settings, words):
    with pytest.raises(ValueError, match=words):
        tiny(**settings)


def test_pixels_outside_the_likelihoods_support_are_refused():
    vq = tiny()
    with pyro.validation_enabled(), pytest.raises(ValueError, match="integer pixels in 0..2"):
        vq.model(images() + 0.5)
    assert isinstance(vq.encode(images()), dist.Independent)
