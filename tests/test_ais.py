"""AIS and BDMC against closed forms: PPCA, a mixture of PPCA with its component summed out, a
Gamma-Poisson model (a latent with positive support), and the errors a user can meet."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from test_importance import PPCA

import lvmkit
from lvmkit.inference.annealing import sigmoid_schedule


def shifted_guide(ppca):
    """A poor encoder: the posterior's mean shifted by 1.5 and its scale doubled."""

    def guide(x):
        post = ppca.posterior(x)
        scale = 2 * post.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(post.loc + 1.5, scale).to_event(1))

    return guide


def test_schedule_runs_from_zero_to_one_and_rises():
    betas = sigmoid_schedule(10)
    assert betas[0] == 0 and betas[-1] == 1 and (betas.diff() > 0).all()


def test_ais_from_the_exact_posterior_is_exact_for_every_datapoint():
    ppca = PPCA()
    x = ppca.sample(12)
    ll = lvmkit.ais(ppca.model, x, guide=ppca.exact_guide, num_samples=3, steps=5)
    assert torch.allclose(ll.values, ppca.log_px(x), atol=1e-9)
    assert ll.method == "ais" and ll.steps == 5 and ll.mc_stderr < 1e-6


def test_ais_beats_importance_sampling_at_equal_cost_with_a_poor_encoder():
    ppca = PPCA()
    x = ppca.sample(30)
    truth = float(ppca.log_px(x).mean())
    guide = shifted_guide(ppca)
    k, steps, leapfrog = 8, 100, 5
    annealed = lvmkit.ais(
        ppca.model, x, guide=guide, num_samples=k, steps=steps, leapfrog_steps=leapfrog
    )
    # the same number of model evaluations (and no gradients) for importance sampling
    sampled = lvmkit.log_likelihood(ppca.model, guide, x, num_samples=k * steps * (leapfrog + 1))
    assert truth - annealed.mean < 0.05
    assert truth - annealed.mean < 0.5 * (truth - sampled.mean)


@pytest.mark.parametrize("style", ["one site", "scaled", "with a factor"])
def test_a_one_site_guides_kept_distribution_gives_what_rerunning_the_guide_gives(
    style, monkeypatch
):
    """AIS keeps q(z|x) of a guide with one sample site instead of rerunning the guide at every
    density evaluation; its estimate equals the rerun's to rounding, for a guide under
    poutine.scale too, and a guide with a pyro.factor (a second site) is rerun."""
    from pyro import poutine

    from lvmkit.inference.annealing import AnnealingPath

    ppca = PPCA()
    x = ppca.sample(10)

    def guide(x):
        post = ppca.posterior(x)
        scale = 2 * post.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()
        with pyro.plate("data", len(x)), poutine.scale(scale=0.5 if style == "scaled" else 1.0):
            pyro.sample("z", dist.Normal(post.loc + 1.5, scale).to_event(1))
            if style == "with a factor":
                pyro.factor("tilt", -0.1 * x.sum(-1))

    settings = dict(guide=guide, num_samples=4, steps=10, seed=3)
    kept = lvmkit.ais(ppca.model, x, **settings).values
    built = AnnealingPath.__init__
    paths = []

    def rerunning(self, *args, **kwargs):
        built(self, *args, **kwargs)
        paths.append(self.fixed_q is not None)
        self.fixed_q = None

    monkeypatch.setattr(AnnealingPath, "__init__", rerunning)
    rerun = lvmkit.ais(ppca.model, x, **settings).values
    assert paths and all(paths) == (style != "with a factor")
    assert torch.allclose(kept, rerun, rtol=1e-12, atol=1e-9)


def test_ais_from_the_prior_converges_to_log_px_as_steps_grow():
    ppca = PPCA()
    x = ppca.sample(30)
    truth = float(ppca.log_px(x).mean())
    gaps = [
        truth - lvmkit.ais(ppca.model, x, num_samples=8, steps=s, seed=1).mean for s in (1, 200)
    ]
    assert gaps[1] < 0.05 and gaps[1] < gaps[0] / 3


def test_ais_sums_out_an_enumerated_component_exactly():
    """A mixture of PPCA, p(c) p(z) p(x | z, c), annealed from the prior over z with c
    enumerated in the model: log p(x) = log sum_c p(c) N(x | mu_c, W_c W_c^T + s^2 I)."""
    g = torch.Generator().manual_seed(1)
    d, pi, s = 3, torch.tensor([0.4, 0.6], dtype=torch.float64), 0.5
    w = torch.randn(2, d, 1, generator=g, dtype=torch.float64)
    mu = 2 * torch.randn(2, d, generator=g, dtype=torch.float64)

    def model(x):
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Categorical(pi), infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(torch.zeros(1, dtype=x.dtype), 1.0).to_event(1))
            loc = (w[c] @ z.unsqueeze(-1)).squeeze(-1) + mu[c]
            pyro.sample("x", dist.Normal(loc, s).to_event(1), obs=x)

    x = torch.cat(
        [mu[0] + torch.randn(10, d, generator=g), mu[1] + torch.randn(10, d, generator=g)]
    )
    cov = w @ w.transpose(-1, -2) + s**2 * torch.eye(d)
    exact = (pi.log() + dist.MultivariateNormal(mu, cov).log_prob(x[:, None])).logsumexp(-1)
    ll = lvmkit.ais(model, x, num_samples=16, steps=150)
    assert abs(ll.mean - float(exact.mean())) < 3 * ll.mc_stderr + 0.01, (ll, exact.mean())
    assert (ll.values - exact).abs().max() < 4 * ll.mc_errors.max() + 0.01


def test_a_latent_with_positive_support_moves_in_unconstrained_coordinates():
    """z ~ Gamma(a, b), x | z ~ Poisson(z): p(x) is negative binomial."""
    a, b = 3.0, 0.5

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Gamma(torch.tensor(a, dtype=x.dtype), b))
            pyro.sample("x", dist.Poisson(z), obs=x)

    x = torch.tensor([0.0, 1, 3, 6, 12, 20], dtype=torch.float64)
    exact = dist.NegativeBinomial(total_count=a, probs=1 / (1 + b)).log_prob(x)
    ll = lvmkit.ais(model, x, num_samples=64, steps=200)
    assert (ll.values - exact).abs().max() < 4 * ll.mc_errors.max(), (ll.values, exact)
    assert abs(ll.mean - float(exact.mean())) < 3 * ll.mc_stderr + 0.01


def test_leapfrog_paths_through_a_nan_gradient_are_rejected_not_raised():
    """Beyond a wall at z = 1 the model's density and gradient are NaN: a leapfrog path that
    crosses it must be rejected, even where the guide's kept distribution checks its values.
    p(x) is then the mass below the wall: N(x; 0, 2) Phi((1 - x/2) / sqrt(1/2))."""

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))
            pyro.factor("wall", 0 * (1 - z).sqrt())  # 0 below; NaN, and a NaN gradient, above
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):  # far below the wall: no draw starts beyond it
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(torch.full_like(x, -1.0), 0.3))

    x = torch.tensor([0.0, 0.5, -0.5], dtype=torch.float64)
    below = dist.Normal(0.0, 1.0).cdf((1 - x / 2) / math.sqrt(0.5)).log()
    exact = dist.Normal(0.0, math.sqrt(2)).log_prob(x) + below
    ll = lvmkit.ais(model, x, guide=guide, num_samples=64, steps=100, step_size=0.5)
    assert (ll.values - exact).abs().max() < 4 * ll.mc_errors.max(), (ll.values, exact)


def test_pyro_param_values_come_from_params_or_the_store():
    def model(x):
        loc = pyro.param("loc", torch.tensor(0.0, dtype=x.dtype))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(loc, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    x = torch.linspace(-1, 3, 5, dtype=torch.float64)
    exact = dist.Normal(1.0, math.sqrt(1.25)).log_prob(x)
    ll = lvmkit.ais(
        model, x, num_samples=64, steps=100, params={"loc": torch.tensor(1.0, dtype=torch.float64)}
    )
    assert (ll.values - exact).abs().max() < 4 * ll.mc_errors.max()
    assert abs(ll.mean - float(exact.mean())) < 3 * ll.mc_stderr + 0.01
    pyro.param("loc", torch.tensor(1.0, dtype=torch.float64))
    again = lvmkit.ais(model, x, num_samples=64, steps=100)
    assert torch.equal(again.values, ll.values)  # the same seed gives the same draws


def test_monte_carlo_stderr_matches_the_spread_over_seeds():
    """With a proposal wider than the posterior (light-tailed weights) the delta method's
    error is the spread of the estimate over seeds."""
    ppca = PPCA()
    x = ppca.sample(20)

    def wide_guide(x):
        post = ppca.posterior(x)
        scale = 1.5 * post.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(post.loc, scale).to_event(1))

    runs = [
        lvmkit.log_likelihood(ppca.model, wide_guide, x, num_samples=20, seed=s) for s in range(40)
    ]
    spread = torch.tensor([r.mean for r in runs]).std()
    reported = torch.tensor([r.mc_stderr for r in runs]).median()
    assert 0.5 < float(reported / spread) < 2, (float(reported), float(spread))
    one = lvmkit.log_likelihood(ppca.model, shifted_guide(ppca), x, num_samples=1)
    assert math.isnan(one.mc_stderr)  # one draw says nothing of its spread
    exact = lvmkit.log_likelihood(ppca.model, ppca.exact_guide, x, num_samples=5)
    assert exact.mc_stderr < 1e-6  # the square root of round-off


def test_bdmc_sandwiches_the_exact_value_and_its_gap_falls_with_steps():
    ppca = PPCA()
    like = ppca.sample(25)
    short = lvmkit.bdmc(ppca.model, like, num_samples=4, steps=10)
    long = lvmkit.bdmc(ppca.model, like, num_samples=4, steps=200)
    for sandwich in (short, long):
        (simulated,) = sandwich.data
        assert simulated.shape == like.shape and not torch.equal(simulated, like)
        truth = float(ppca.log_px(simulated).mean())
        # stochastic bounds: each within its Monte Carlo error of its side of the truth
        assert sandwich.lower.mean <= truth + 3 * sandwich.lower.mc_stderr
        assert truth - 3 * sandwich.upper.mc_stderr <= sandwich.upper.mean
    assert torch.equal(short.data[0], long.data[0])  # the same seed simulates the same data
    assert long.gap < short.gap / 3 and abs(long.gap) < 0.3, (short.gap, long.gap)
    assert long.gap_mc_stderr > 0


def test_bdmc_with_a_guide_simulates_what_the_guide_then_reads():
    ppca = PPCA()
    sandwich = lvmkit.bdmc(
        ppca.model, ppca.sample(10), guide=ppca.exact_guide, num_samples=2, steps=3
    )
    truth = ppca.log_px(sandwich.data[0])
    assert torch.allclose(sandwich.lower.values, truth, atol=1e-9)
    assert torch.allclose(sandwich.upper.values, truth, atol=1e-9)


def bad_cases():
    def discrete(x):
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    def no_latent(x):
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    def global_latent(x):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    def two_latents(x):
        with pyro.plate("data", len(x)):
            a = pyro.sample("a", dist.Normal(0.0, 1.0))
            b = pyro.sample("b", dist.Normal(a, 1.0))
            pyro.sample("x", dist.Normal(b, 1.0), obs=x)

    def guide_a_only(x):
        with pyro.plate("data", len(x)):
            pyro.sample("a", dist.Normal(0.0, 1.0))

    def impossible(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)
            pyro.factor("wall", torch.full((len(x),), -math.inf))

    return [
        (discrete, None, {}, "is discrete"),
        (no_latent, None, {}, "is exact"),
        (global_latent, None, {}, "not inside pyro.plate('data', N)"),
        (two_latents, guide_a_only, {}, "latent site 'b'"),
        (impossible, None, {}, "site 'wall' of the model"),
        (two_latents, None, {"steps": 0}, "steps must be a positive int"),
        (two_latents, None, {"leapfrog_steps": 0}, "leapfrog_steps must be a positive int"),
        (two_latents, None, {"step_size": -1.0}, "step_size must be a positive number"),
    ]


@pytest.mark.parametrize("model, guide, settings, words", bad_cases())
def test_bad_input_is_a_clear_error(model, guide, settings, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        settings = {"num_samples": 2, "steps": 3} | settings
        lvmkit.ais(model, torch.zeros(4), guide=guide, **settings)


def test_bdmc_refuses_an_observation_that_is_not_an_argument():
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=2 * x + 1)  # a transform of the argument

    with pytest.raises(ValueError, match="observed site 'x': its obs is not one of the model"):
        lvmkit.bdmc(model, torch.randn(5), num_samples=2, steps=2)


def test_evaluate_by_ais_for_a_built_in_model_is_at_least_as_tight_as_by_importance():
    digits = lvmkit.data.load("digits")
    lvm = lvmkit.models.GaussianLVM(lvmkit.models.GaussianLVMConfig(hidden=(32,)))
    lvmkit.fit(lvm.model, lvm.guide, lvm.prepare(digits[:300]), epochs=5, progress=False)
    lvm.eval()
    sampled = lvmkit.evaluate(lvm, digits[1500:1530], num_samples=50)
    annealed = lvmkit.evaluate(lvm, digits[1500:1530], method="ais", num_samples=8, steps=30)
    assert annealed.method == "ais" and annealed.bits_per_dim is not None
    noise = 3 * math.hypot(sampled.mc_stderr, annealed.mc_stderr)
    assert annealed.mean > sampled.mean - noise
