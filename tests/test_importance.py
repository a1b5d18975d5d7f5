import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

from lvmkit.inference.elbo import IWAELoss
from lvmkit.inference.importance import log_likelihood, log_weights
from lvmkit.inference.programs import max_plate_nesting, modules_behind
from lvmkit.models import GaussianLVM

NOISE = 0.5  # x | z ~ N(z, NOISE^2), z ~ N(0, 1)  =>  x ~ N(0, 1 + NOISE^2)


def model(x):
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, NOISE), obs=x)


def exact_guide(x):
    var = NOISE**2 / (1 + NOISE**2)
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(x / (1 + NOISE**2), math.sqrt(var)))


def narrow_guide(x):
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(x / (1 + NOISE**2), 0.05))


x = torch.linspace(-2, 2, 7, dtype=torch.float64)
log_px = dist.Normal(0.0, math.sqrt(1 + NOISE**2)).log_prob(x)


def test_exact_posterior_gives_log_px_for_every_particle():
    lw = log_weights(model, exact_guide, x, num_samples=5, plate_nesting=1)
    assert lw.shape == (5, 7)
    assert torch.allclose(lw, log_px.expand(5, -1), atol=1e-12)


def test_iwae_bound_is_below_log_px_and_tightens_with_k():
    assert max_plate_nesting(model, narrow_guide, x) == 1
    torch.manual_seed(0)
    bounds = [-IWAELoss(k).loss(model, narrow_guide, x) for k in (1, 10, 1000)]
    assert bounds[0] < bounds[1] < bounds[2] < float(log_px.sum())
    assert abs(-IWAELoss(3).loss(model, exact_guide, x) - float(log_px.sum())) < 1e-6


def test_sites_outside_the_data_plate_are_refused():
    def global_model(x):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    def global_guide(x):
        pyro.sample("loc", dist.Normal(0.0, 1.0))

    try:
        IWAELoss(2).loss(global_model, global_guide, x)
    except ValueError as err:
        assert "site 'loc' is not inside pyro.plate('data', N)" in str(err)
    else:
        raise AssertionError("a global latent must be refused")


class PPCA:
    """z ~ N(0, I_q), x | z ~ N(W z + mu, s^2 I_d): log p(x) and p(z | x) in closed form."""

    def __init__(self, d=5, q=2, s=0.5, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(d, q, generator=g, dtype=torch.float64)
        self.mu = torch.randn(d, generator=g, dtype=torch.float64)
        self.s, self.q = s, q
        self.M = self.W.T @ self.W + s**2 * torch.eye(q, dtype=torch.float64)

    def model(self, x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.q, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.mu, self.s).to_event(1), obs=x)

    def posterior(self, x):
        loc = torch.linalg.solve(self.M, self.W.T @ (x - self.mu).T).T
        return dist.MultivariateNormal(loc, self.s**2 * torch.linalg.inv(self.M))

    def exact_guide(self, x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", self.posterior(x))

    def prior_guide(self, x):  # a poor proposal: ignores x
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(torch.zeros(self.q, dtype=x.dtype), 1.0).to_event(1))

    def log_px(self, x):
        cov = self.W @ self.W.T + self.s**2 * torch.eye(len(self.mu), dtype=torch.float64)
        return dist.MultivariateNormal(self.mu, cov).log_prob(x)

    def sample(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.q, generator=g, dtype=torch.float64)
        return (
            z @ self.W.T
            + self.mu
            + self.s * torch.randn(n, len(self.mu), generator=g, dtype=torch.float64)
        )


def test_ppca_exact_posterior_gives_log_px_to_numerical_precision():
    ppca = PPCA()
    x = ppca.sample(40)
    est = log_likelihood(ppca.model, ppca.exact_guide, x, num_samples=7, batch_size=16)
    assert torch.allclose(est.values, ppca.log_px(x), atol=1e-10)
    assert est.bits_per_dim is None and est.num_samples == 7


def test_ppca_poor_guide_is_below_rises_with_k_and_converges():
    ppca = PPCA()
    x = ppca.sample(60)
    truth = float(ppca.log_px(x).mean())
    means = {}
    for k in (1, 10, 100, 5000):
        # particle_chunk=256 streams the 5000 particles in chunks; memory stays bounded
        means[k] = log_likelihood(
            ppca.model, ppca.prior_guide, x, num_samples=k, particle_chunk=256, seed=3
        )
    assert means[1].mean < means[10].mean < means[100].mean < means[5000].mean < truth + 1e-9
    gap = truth - means[5000].mean
    assert gap < 0.05 * abs(truth) and gap < 3 * means[5000].stderr + 0.05


def test_bits_per_dim_for_discrete_data():
    def model(x):
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Bernoulli(0.5 * torch.ones(4)).to_event(1), obs=x)

    x = torch.randint(0, 2, (10, 4)).float()
    est = log_likelihood(model, lambda x: None, x, num_samples=1, discrete=True)
    assert abs(est.bits_per_dim - 1.0) < 1e-6  # a fair coin per dimension: one bit


GLOBAL_NET = torch.nn.Linear(2, 2)


def test_modules_behind_finds_owners_closures_and_globals():
    closed_over = torch.nn.Linear(3, 3)

    def model(x):
        return closed_over(x)

    def guide(x):
        return GLOBAL_NET(x)

    lvm = GaussianLVM()
    found = modules_behind(model, guide, lvm.model, model)
    assert [id(m) for m in found] == [id(closed_over), id(GLOBAL_NET), id(lvm)]
    assert modules_behind(lambda x: x) == []


def test_evaluate_is_exact_where_the_model_says_so_and_sampled_otherwise():
    import pytest

    import lvmkit
    from lvmkit.models import build_model

    digits = lvmkit.data.load("digits")
    data = digits[:40]
    torch.manual_seed(0)
    gmm = build_model("gmm", digits.image_shape, digits.levels, {"components": 3})
    gmm.initialize(gmm.prepare(data))
    ll = lvmkit.evaluate(gmm, data, device="cpu")
    # a density of the dequantized pixels, made a bound on the 17-level digits' likelihood
    assert ll.exact and ll.bits_per_dim == pytest.approx(-ll.mean / (64 * math.log(2)))
    density = gmm.log_prob(gmm.prepare(data)).double()
    assert torch.allclose(ll.values, density - 64 * math.log(17))

    pixelcnn = build_model("pixelcnn", digits.image_shape, digits.levels, {"layers": 2})
    ll = lvmkit.evaluate(pixelcnn, data, batch_size=16)
    sampled = log_likelihood(pixelcnn.model, pixelcnn.guide, data.x, num_samples=1)
    assert ll.exact and torch.allclose(ll.values, sampled.values, atol=1e-4)
    assert ll.bits_per_dim == pytest.approx(-ll.mean / (64 * math.log(2)))

    lvm = build_model("lvm", digits.image_shape, digits.levels, {"likelihood": "bernoulli"})
    ll = lvmkit.evaluate(lvm, data, num_samples=10)  # untrained: p(x_i) ~ 1/2
    assert not ll.exact and ll.num_samples == 10 and 0.9 < ll.bits_per_dim < 1.1

    ae = build_model("ae", digits.image_shape, digits.levels)
    with pytest.raises(ValueError, match="no density p\\(x\\)"):
        lvmkit.evaluate(ae, data)


# ---- latents the guide does not sample: enumerated exactly, or refused by name --------------

MIX_W = torch.tensor([0.2, 0.3, 0.5])
MIX_LOCS = torch.tensor([-3.0, 0.0, 3.0])


def gmm_model(x):
    with pyro.plate("data", len(x)):
        c = pyro.sample("c", dist.Categorical(MIX_W), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(MIX_LOCS[c], 1.0), obs=x)


def empty_guide(x):
    pass


def gmm_exact(x):
    """log p(x_n) and p(c | x_n): (N,), (N, 3)."""
    joint = MIX_W.log() + dist.Normal(MIX_LOCS, 1.0).log_prob(x[:, None])
    return joint.logsumexp(-1), joint.softmax(-1)


def test_an_enumerated_latent_with_an_empty_guide_is_summed_out_exactly():
    import pytest

    import lvmkit

    x = 2 * torch.randn(40, generator=torch.Generator().manual_seed(0))
    exact, resp = gmm_exact(x)
    ll = log_likelihood(gmm_model, empty_guide, x, num_samples=3)
    assert torch.allclose(ll.values, exact.double(), atol=1e-5)  # was off by about log 3
    assert ll.exact  # nothing was sampled: every latent was enumerated
    assert IWAELoss(1).loss(gmm_model, empty_guide, x) == pytest.approx(-float(exact.sum()))
    # the posterior draws c from p(c | x), as infer_discrete would
    idata = lvmkit.posterior(gmm_model, empty_guide, x, num_samples=4000)
    c = torch.as_tensor(idata.posterior["c"].values[0])  # (K, N)
    freq = torch.stack([(c == k).double().mean(0) for k in range(3)], -1)
    assert torch.allclose(freq, resp.double(), atol=0.04)
    assert idata.posterior.attrs["draws"].startswith("p(c|x)")
    lw = torch.as_tensor(idata.sample_stats["log_importance_weight"].values[0])
    assert torch.allclose(lw, exact.expand_as(lw), atol=1e-5)


def test_a_mixture_of_ppca_with_enumerated_c_and_amortized_z():
    """p(c) p(z) p(x | z, c) with c enumerated in the model and q(z | x) amortized: the
    importance-sampled log p(x) reaches the closed form sum_c p(c) N(x | mu_c, W_c W_c^T + s^2)."""
    g = torch.Generator().manual_seed(1)
    d, pi, s = 3, torch.tensor([0.4, 0.6]), 0.5
    w, mu = torch.randn(2, d, 1, generator=g), 2 * torch.randn(2, d, generator=g)
    enc = torch.randn(d, 1, generator=g) * 0.3

    def model(x):
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Categorical(pi), infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            loc = (w[c] @ z.unsqueeze(-1)).squeeze(-1) + pyro.param("mu", mu)[c]
            pyro.sample("x", dist.Normal(loc, s).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x @ enc, 1.2).to_event(1))

    x = torch.cat(
        [mu[0] + torch.randn(20, d, generator=g), mu[1] + torch.randn(20, d, generator=g)]
    )
    cov = w @ w.transpose(-1, -2) + s**2 * torch.eye(d)
    exact = (pi.log() + dist.MultivariateNormal(mu, cov).log_prob(x[:, None])).logsumexp(-1)
    pyro.param("mu", mu)  # the value the closed form uses, as a fit would leave it
    ll = log_likelihood(model, guide, x, num_samples=4000)
    assert abs(ll.mean - float(exact.mean())) < 0.02  # was off by about log 2

    import lvmkit

    with pytest.warns(Warning, match="did not converge in 1 iterations"):  # one E-step is all
        fit = lvmkit.em(model, x, guide=guide, e_step="importance", num_samples=2000, max_iter=1)
    assert abs(-fit.losses[0] - float(exact.mean())) < 0.05  # the E-step's log p(x) too


def test_a_latent_the_guide_misses_is_named():
    import pytest

    def unmarked(x):
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Categorical(MIX_W))
            pyro.sample("x", dist.Normal(MIX_LOCS[c], 1.0), obs=x)

    with pytest.raises(ValueError, match="latent site 'c' is in the model but the guide does not"):
        log_likelihood(unmarked, empty_guide, torch.zeros(4), num_samples=2)
    with pytest.raises(ValueError, match="latent site 'c'"):
        IWAELoss(2).loss(unmarked, empty_guide, torch.zeros(4))


def test_posterior_refuses_a_global_latent_by_name():
    import pytest
    from pyro.infer.autoguide import AutoNormal

    import lvmkit

    x = torch.randn(30, 2)
    y = x @ torch.tensor([1.0, -2.0]) + 0.1 * torch.randn(30)

    def regression(x, y):
        w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(x @ w, 0.1), obs=y)

    with pytest.raises(ValueError, match="site 'w' is not inside pyro.plate\\('data', N\\).*nuts"):
        lvmkit.posterior(regression, AutoNormal(regression), x, y)


def test_posterior_resampled_draws_are_the_posterior_not_the_proposal():
    """With the prior as proposal, q's draws ignore x; resampled in proportion to p/q they
    follow p(z | x), and the InferenceData says which draws it holds."""
    import lvmkit

    ppca = PPCA()
    x = ppca.sample(8)
    exact = ppca.posterior(x).mean  # (8, q)
    raw = lvmkit.posterior(ppca.model, ppca.prior_guide, x, num_samples=4000)
    fixed = lvmkit.posterior(ppca.model, ppca.prior_guide, x, num_samples=4000, resample=True)
    raw_mean = torch.as_tensor(raw.posterior["z"].values[0]).mean(0)
    resampled_mean = torch.as_tensor(fixed.posterior["z"].values[0]).mean(0)
    assert (raw_mean - exact).abs().max() > 0.3  # the prior's draws are not p(z|x)'s
    assert (resampled_mean - exact).abs().max() < 0.1
    assert raw.posterior.attrs["draws"].startswith("q(z|x)")
    assert fixed.posterior.attrs["draws"].startswith("p(z|x)")


def test_params_may_be_a_dict_of_values_of_your_own():
    """Scoring a model at parameters you choose (or at result.params): a two-component mixture
    with its component summed out by an empty guide, so log_likelihood is exact and equals the
    closed form at exactly those values, constraints and all."""
    from pyro.distributions import constraints

    import lvmkit

    def mixture(x):
        w = pyro.param("w", torch.tensor([0.5, 0.5]), constraint=constraints.simplex)
        loc = pyro.param("loc", torch.tensor([-1.0, 1.0]))
        scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Categorical(w), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(loc[c], scale), obs=x)

    def empty_guide(x):
        pass

    x = torch.randn(50) * 2
    values = {"w": torch.tensor([0.2, 0.8]), "loc": torch.tensor([-3.0, 2.0]), "scale": 0.7}
    comp = dist.Normal(values["loc"], values["scale"]).log_prob(x[:, None])
    exact = (comp + values["w"].log()).logsumexp(-1)
    ll = lvmkit.log_likelihood(mixture, empty_guide, x, num_samples=1, params=values)
    assert torch.allclose(ll.values, exact.double(), atol=1e-5)

    fit = lvmkit.fit(mixture, empty_guide, x, elbo="enum", epochs=3, progress=False)
    by_result = lvmkit.log_likelihood(mixture, empty_guide, x, num_samples=1, params=fit)
    by_values = lvmkit.log_likelihood(mixture, empty_guide, x, num_samples=1, params=fit.params)
    assert torch.allclose(by_result.values, by_values.values, atol=1e-6)
    with pytest.raises(ValueError, match="dict of pyro.param names"):
        lvmkit.log_likelihood(mixture, empty_guide, x, params=[1.0])
    with pytest.raises(ValueError, match=r"params\['w'\] is not a tensor"):
        lvmkit.log_likelihood(mixture, empty_guide, x, params={"w": "heavy"})


def test_module_weights_in_a_params_dict_that_the_module_lacks_are_named():
    """A dict of saved weights cannot reach a module (pyro.module keeps its own): say so,
    rather than score with the module's fresh weights in silence."""
    import pytest
    from torch import nn

    import lvmkit

    enc = nn.Linear(1, 2)

    def guide(x):
        pyro.module("enc", enc)
        with pyro.plate("data", len(x)):
            loc, log_scale = enc(x.unsqueeze(-1)).unbind(-1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()))

    xs = x.float()
    fitted = lvmkit.fit(model, guide, xs, epochs=2, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the trained module itself: nothing to say
        lvmkit.log_likelihood(model, guide, xs, num_samples=5, params=fitted.params)
    saved = {k: v.clone() for k, v in fitted.params.items()}
    with torch.no_grad():
        enc.weight.add_(1.0)  # as a fresh module in another process would differ
    with pytest.warns(UserWarning, match=r"\['enc\$\$\$weight'\] that differ"):
        lvmkit.log_likelihood(model, guide, xs, num_samples=5, params=saved)
