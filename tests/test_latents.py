"""GaussianLVM's learned priors, flow posterior and second latent layer: densities checked
against quadrature and autograd, estimators against the exact log p(x), settings refused."""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

import lvmkit
from lvmkit.cli import main
from lvmkit.data import ImageData
from lvmkit.models import FlowGuide, GaussianLVM, GaussianLVMConfig
from lvmkit.models.common import gaussian_params
from lvmkit.runs import load_run


def tiny(**settings) -> GaussianLVM:
    """A 3x3 binary-image model with z (and z2) one-dimensional, whose guide is wider than the
    posterior (the scale outputs raised), so that importance sampling has light tails."""
    torch.manual_seed(0)
    base = {"image_shape": (1, 3, 3), "likelihood": "bernoulli", "z_dim": 1, "hidden": (8,)}
    lvm = GaussianLVM(GaussianLVMConfig(**{**base, **settings})).eval()
    for net in (lvm.encoder, lvm.up):
        if net is not None:
            last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
            width = lvm.config.top_dim if net is lvm.up else lvm.config.z_dim
            with torch.no_grad():
                last.bias[width : 2 * width] += 3.0  # softplus(raw + 3): scale about 3
    return lvm


def images(n=4) -> torch.Tensor:
    return (torch.rand(n, 1, 3, 3, generator=torch.Generator().manual_seed(1)) > 0.5).float()


def log_prior_by_hand(lvm: GaussianLVM, z: torch.Tensor) -> torch.Tensor:
    """log p(z) for z (G, 1), from the parameters, not from ``lvm.prior()``."""
    if lvm.config.prior == "mog":
        net = lvm.prior_net
        comps = dist.Normal(net.loc, net.log_scale.exp()).log_prob(z[:, None]).sum(-1)
        return torch.logsumexp(comps + net.logits.log_softmax(0), dim=1)
    if lvm.config.prior == "vamp":
        h = lvm.encoder(lvm.prior_net.pseudo_inputs)
        loc, scale = gaussian_params(h[:, :2])
        comps = dist.Normal(loc, scale).log_prob(z[:, None]).sum(-1)
        return torch.logsumexp(comps, dim=1) - math.log(len(loc))
    return dist.Normal(0.0, 1.0).log_prob(z).sum(-1)


@torch.no_grad()
def exact_log_px(lvm: GaussianLVM, x: torch.Tensor) -> torch.Tensor:
    """log p(x) per image by quadrature over z (one layer) or (z2, z) (two layers), z and z2
    one-dimensional: (N,)."""
    grid = torch.linspace(-9, 9, 1801 if not lvm.config.top_dim else 601)[:, None]
    step = float(grid[1] - grid[0])
    log_px_z = lvm.decode(grid).log_prob(x[:, None]).T  # (G, N)
    if not lvm.config.top_dim:
        log_joint = log_prior_by_hand(lvm, grid)[:, None] + log_px_z
        return torch.logsumexp(log_joint, 0) + math.log(step)
    loc, scale = gaussian_params(lvm.top_decoder(grid))  # p(z | z2) for each z2 on the grid
    log_z_z2 = dist.Normal(loc.T, scale.T).log_prob(grid)  # (G z, G z2)
    inner = torch.logsumexp(log_z_z2[:, :, None] + log_px_z[:, None], 0)  # (G z2, N)
    return torch.logsumexp(log_prior_by_hand(lvm, grid)[:, None] + inner, 0) + 2 * math.log(step)


CASES = [
    {"prior": "mog", "prior_components": 3},
    {"prior": "vamp", "prior_components": 3},
    {"guide": "iaf", "flow_steps": 2},
    {"top_dim": 1},
    {"top_dim": 1, "prior": "vamp", "prior_components": 2},
]


@pytest.mark.parametrize("settings", CASES, ids=lambda s: "-".join(map(str, s.values())))
def test_importance_sampling_meets_the_exact_log_likelihood(settings):
    lvm, x = tiny(**settings), images()
    if lvm.config.prior != "normal":  # a proper density: integrates to 1 over the grid
        grid = torch.linspace(-12, 12, 4801)[:, None]
        with torch.no_grad():
            mass = float(lvm.prior().log_prob(grid).exp().sum() * (grid[1] - grid[0]))
        assert mass == pytest.approx(1.0, abs=1e-3)
    exact = exact_log_px(lvm, x)
    estimate = lvmkit.log_likelihood(lvm.model, lvm.guide, x, num_samples=200_000)
    torch.testing.assert_close(estimate.values.double(), exact.double(), atol=0.02, rtol=0)


def test_the_flow_density_is_the_change_of_variables():
    """log q(z|x) of a draw = log N(eps) - log|det dz/deps|, the Jacobian by autograd; and
    the same from the flow's inverse at a fresh copy of the draw."""
    lvm = tiny(z_dim=3, guide="iaf", flow_steps=3)
    x = images(1)
    h = lvm.encoder(x)
    q = lvm._q(h)
    loc, scale = gaussian_params(h[..., :6])
    eps = torch.randn(1, 3)

    def flow(e):
        v = loc + scale * e
        for t in q.transforms:
            v = t._call(v)
        return v

    z = flow(eps)
    jac = torch.autograd.functional.jacobian(lambda e: flow(e[None])[0], eps[0])
    expected = dist.Normal(0.0, 1.0).log_prob(eps).sum() - torch.logdet(jac)
    fresh = lvm._q(h)  # new transforms: no cached draw, so log_prob runs the inverse
    torch.testing.assert_close(fresh.log_prob(z.detach().clone())[0], expected, atol=1e-4, rtol=0)
    draw = q.rsample()
    assert torch.isfinite(q.log_prob(draw)).all()  # the cached path


def test_settings_that_cannot_work_are_refused_before_anything_runs():
    for settings, words in [
        ({"prior": "vamp", "prior_components": 0}, "no pseudo-inputs: set prior_components"),
        ({"prior": "mog", "prior_components": 0}, "no components"),
        ({"guide": "iaf", "flow_steps": 0}, "flow with no steps: set flow_steps >= 1"),
        ({"prior": "lognormal"}, "unknown prior"),
        ({"guide": "planar"}, "unknown guide"),
        ({"top_dim": -1}, "top_dim"),
        ({"prior": "mog", "prior_components": 2.5}, "prior_components must be an int"),
        ({"prior": "vamp", "free_bits": 0.5}, "set free_bits = 0"),
        ({"guide": "iaf", "free_bits": 0.5}, "set free_bits = 0"),
    ]:
        with pytest.raises((ValueError, TypeError), match=words):
            tiny(**settings)
    with pytest.raises(ValueError, match="in closed form, and site 'z' has none.*use elbo='elbo'"):
        lvm = tiny(prior="mog")
        lvmkit.fit(lvm.model, lvm.guide, images(), elbo="meanfield", progress=False)
    with pytest.raises(ValueError, match=r"mean-field guide.*\['z2', 'z'\]; this guide samples"):
        lvm = tiny(top_dim=1)  # q(z2 | z): not mean field, though each KL has a closed form
        lvmkit.fit(lvm.model, lvm.guide, images(), elbo="meanfield", progress=False)


def test_a_two_layer_model_samples_completes_and_encodes():
    lvm = tiny(z_dim=2, top_dim=2, guide="iaf")
    x = images(6)
    known = lvm.top_half_known(x)
    filled = lvm.complete(x, known)
    assert torch.equal(filled[known], x[known])
    assert lvm.sample(5).shape == (5, 1, 3, 3)
    assert lvm.encode(x).mean.shape == (6, 2)
    with pytest.raises(ValueError, match="method='gibbs'"):
        lvm.complete(x, known, method="importance")
    one = tiny(z_dim=2, guide="iaf", prior="vamp", prior_components=4)
    filled = one.complete(x, known, method="importance", num_samples=16)
    assert torch.equal(filled[known], x[known])


def test_flow_draws_come_from_positions_not_the_stream():
    lvm = tiny(z_dim=2, guide="iaf")
    trainer = lvmkit.Trainer(lvm.model, lvm.guide)
    trainer.init(images())
    keys = torch.arange(4)
    trainer.step(images(), keys=keys)
    assert trainer.unseeded == set()


def test_fitting_a_vampprior_never_placed_at_training_images_warns():
    lvm = tiny(prior="vamp", prior_components=3).train()
    with pytest.warns(UserWarning, match=r"call model.initialize\(train_data\)"):
        lvmkit.fit(lvm.model, lvm.guide, images(8), epochs=1, batch_size=4, progress=False)
    placed = tiny(prior="vamp", prior_components=3).initialize(images(8)).train()
    copy = tiny(prior="vamp", prior_components=3)
    copy.load_state_dict(placed.state_dict())  # a checkpoint remembers the placing
    for model in (placed, copy.train()):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            lvmkit.fit(model.model, model.guide, images(8), epochs=1, batch_size=4, progress=False)


def test_the_cli_fits_resumes_and_evaluates_a_combined_model(tmp_path, capsys):
    """A VampPrior, an IAF posterior, two layers and DReG: resumed exactly, evaluated by IS."""
    common = ["--no-progress", "--threads", "1", "--set", "model.guide=iaf",
              "--set", "model.prior=vamp", "--set", "model.prior_components=10",
              "--set", "model.top_dim=2", "--set", "model.z_dim=3",
              "--set", "model.hidden=[32]", "--set", "fit.elbo=dreg",
              "--set", "fit.num_samples=3"]  # fmt: skip
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(["fit", "lvm", "--epochs", "2", "--out", str(whole), *common]) == 0
    assert main(["fit", "lvm", "--epochs", "1", "--out", str(part), *common]) == 0
    assert main(["fit", "lvm", "--epochs", "2", "--out", str(part), "--resume", *common]) == 0
    a, b = load_run(whole).model.state_dict(), load_run(part).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert main(["evaluate", str(whole), "--num-samples", "50"]) == 0
    capsys.readouterr()
    assert main(["fit", "lvm", "--out", str(tmp_path / "bad"), "--set", "fit.elbo=dreg"]) == 2
    assert "set num_samples >= 2" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    # refused by the first trace (after config.toml is written): nothing is left behind, and
    # the corrected run starts in the same folder
    meanfield = ["--set", "model.prior=mog", "--set", "fit.elbo=meanfield", "--epochs", "1"]
    assert main(["fit", "lvm", "--out", str(tmp_path / "bad"), *meanfield]) == 2
    assert "in closed form" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["fit", "lvm", "--out", str(tmp_path / "bad"), *meanfield[:2], "--epochs", "1",
                 "--no-progress"]) == 0  # fmt: skip


def test_a_users_own_model_takes_the_flow_guide():
    """Plain Pyro functions (pyro.module): fitted with FlowGuide, then log p(x) by IS meets
    quadrature."""
    torch.manual_seed(0)
    decoder = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 9))

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    encoder = torch.nn.Linear(9, 4)
    guide = FlowGuide(encoder, z_dim=1, flow_steps=2)
    x = images(64).reshape(64, 9)
    lvmkit.fit(model, guide, x, epochs=20, batch_size=16, lr=1e-2, progress=False)
    grid = torch.linspace(-9, 9, 1801)[:, None]
    with torch.no_grad():
        log_px_z = dist.Bernoulli(logits=decoder(grid)[:, None]).log_prob(x[:4]).sum(-1)
        log_joint = dist.Normal(0.0, 1.0).log_prob(grid) + log_px_z  # (G, 4)
        exact = torch.logsumexp(log_joint, 0) + math.log(float(grid[1] - grid[0]))
    estimate = lvmkit.log_likelihood(model, guide, x[:4], num_samples=100_000)
    torch.testing.assert_close(estimate.values.double(), exact.double(), atol=0.02, rtol=0)
    with pytest.raises(ValueError, match="needs 4 \\* z_dim = 8"):
        FlowGuide(torch.nn.Linear(9, 3), z_dim=2)(x)


def test_ais_and_diagnose_handle_the_two_layer_model_with_a_flow():
    """AIS over (z2, z) from the guide meets the exact log p(x) within its Monte Carlo error
    (the flow's density at AIS's points runs its inverse); the report weighs the guide
    (k-hat) and its codes, and leaves out what needs a Gaussian code."""
    lvm, x = tiny(top_dim=1, guide="iaf", prior="vamp", prior_components=2), images()
    exact = exact_log_px(lvm, x)
    annealed = lvmkit.ais(lvm.model, x, guide=lvm.guide, num_samples=16, steps=100)
    assert abs(annealed.mean - float(exact.mean())) < 4 * annealed.mc_stderr + 0.02
    report = lvmkit.diagnose(lvm, ImageData(images(40), levels=2), num_samples=100,
                             num_images=20, ais_steps=5)  # fmt: skip
    assert set(report.results["khat_bands"]) == {"good (<0.5)", "usable (0.5-0.7)",
                                                 "unreliable (>0.7)"}  # fmt: skip
    assert 0 <= report.results["active_units"] <= 1  # z is one-dimensional here
    assert "kl_per_dim" not in report.results  # needs a Gaussian code
