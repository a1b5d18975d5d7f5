"""The low-variance objectives, stl and dreg, on a linear-Gaussian model written as plain Pyro
functions (pyro.param), where the ELBO, its gradient and the exact posterior are closed form."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from lvmkit.inference.elbo import STLELBO, DReGLoss, IWAELoss, ReparamELBO, make_elbo

X0 = 1.3


def model(x):
    w = pyro.param("w", torch.tensor(0.7))
    b = pyro.param("b", torch.tensor(0.1))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(w * z + b, 1.0), obs=x)


def guide(x):
    a = pyro.param("a", torch.tensor(0.3))
    c = pyro.param("c", torch.tensor(0.0))
    s = pyro.param("s", torch.tensor(0.8), constraint=dist.constraints.positive)
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(a * x + c, s))


NAMES = ("w", "b", "a", "c", "s")


def params():
    store = pyro.get_param_store()
    return [store.get_param(n).unconstrained() for n in NAMES]


def gradient(objective, x, seed=0) -> torch.Tensor:
    """d loss / d (w, b, a, c, log s) for one call with the given seed: (5,)."""
    pyro.set_rng_seed(seed)
    loss = objective.differentiable_loss(model, guide, x)
    return torch.stack(torch.autograd.grad(loss, params()))


def exact_elbo_gradient(x) -> torch.Tensor:
    """d(-ELBO)/d params in closed form: E_q log N(x; wz+b, 1) + E_q log N(z; 0, 1) + H[q]."""
    w, b, a, c, log_s = params()
    m, s = a * x + c, log_s.exp()
    elbo = (
        -0.5 * ((x - w * m - b) ** 2 + w**2 * s**2)
        - 0.5 * (m**2 + s**2)
        + torch.log(s)
        - 0.5 * math.log(2 * math.pi)
        + 0.5
    ).sum()
    return torch.stack(torch.autograd.grad(-elbo, params()))


@pytest.fixture(autouse=True)
def store():
    pyro.clear_param_store()
    with torch.no_grad():  # create the params
        guide(torch.zeros(1))
        model(torch.zeros(1))
    yield


def at_exact_posterior():
    """Set q(z|x0) to the exact posterior N(w (x0 - b) / (w^2 + 1), 1 / (w^2 + 1))."""
    store = pyro.get_param_store()
    w, b = float(store["w"]), float(store["b"])
    with torch.no_grad():
        store["a"] = torch.tensor(0.0)
        store["c"] = torch.tensor(w * (X0 - b) / (w**2 + 1))
        store["s"] = torch.tensor((1 / (w**2 + 1)) ** 0.5)


def test_values_equal_the_plain_objectives_from_the_same_draws():
    x = torch.tensor([X0, -0.4, 2.0])
    for plain, low_variance in ((ReparamELBO(3), STLELBO(3)), (IWAELoss(5), DReGLoss(5))):
        pyro.set_rng_seed(1)
        expected = plain.loss(model, guide, x)
        pyro.set_rng_seed(1)
        assert low_variance.loss(model, guide, x) == pytest.approx(expected, rel=1e-6)


def test_dreg_model_gradient_is_iwae_s_draw_for_draw():
    x = torch.tensor([X0, -0.4])
    g_dreg, g_iwae = gradient(DReGLoss(4), x, seed=3), gradient(IWAELoss(4), x, seed=3)
    torch.testing.assert_close(g_dreg[:2], g_iwae[:2])  # w, b: sum_k w~_k d log p(x, z_k)
    assert not torch.allclose(g_dreg[2:], g_iwae[2:])  # the guide's differs


def test_stl_gradient_is_the_elbo_s_in_expectation():
    """Many copies of x0 in one batch: the summed gradient is an average of independent
    single-datapoint estimates, compared with the closed-form ELBO gradient."""
    chunks = [gradient(STLELBO(), torch.full((4000,), X0), seed=s) / 4000 for s in range(10)]
    g = torch.stack(chunks)
    mean, se = g.mean(0), g.std(0) / math.sqrt(len(g))
    exact = exact_elbo_gradient(torch.tensor([X0]))
    assert ((mean - exact).abs() <= 4 * se + 1e-4).all(), (mean, exact, se)


def test_dreg_gradient_is_unbiased_for_iwae_s():
    """Both estimate the gradient of the same bound: their means agree within Monte Carlo
    error on every parameter (model and guide)."""
    x = torch.full((4000,), X0)
    g_d = torch.stack([gradient(DReGLoss(5), x, seed=s) / 4000 for s in range(10)])
    g_i = torch.stack([gradient(IWAELoss(5), x, seed=100 + s) / 4000 for s in range(10)])
    se = (g_d.var(0) / len(g_d) + g_i.var(0) / len(g_i)).sqrt()
    assert ((g_d.mean(0) - g_i.mean(0)).abs() <= 4 * se + 1e-4).all()


def test_at_the_exact_posterior_the_guide_gradient_vanishes():
    """log p(x, z) - log q(z|x) is constant in z there: the path gradient is exactly zero,
    while the plain estimators keep their noisy score term."""
    at_exact_posterior()
    x = torch.tensor([X0])
    assert gradient(STLELBO(), x)[2:].abs().max() < 1e-5
    assert gradient(DReGLoss(8), x)[2:].abs().max() < 1e-5
    assert gradient(ReparamELBO(), x)[2:].abs().max() > 1e-3
    assert gradient(IWAELoss(8), x)[2:].abs().max() > 1e-3


def test_dreg_lowers_the_guide_gradient_variance():
    """Away from the optimum, over 200 single-datapoint draws with K = 10 (Tucker et al.'s
    setting: IWAE's guide gradient grows noisier with K)."""
    x = torch.tensor([X0])
    g_d = torch.stack([gradient(DReGLoss(10), x, seed=s) for s in range(200)])
    g_i = torch.stack([gradient(IWAELoss(10), x, seed=s) for s in range(200)])
    ratio = g_d[:, 2:].var(0) / g_i[:, 2:].var(0)  # a, c, log s
    assert (ratio < 0.5).all(), ratio


def test_they_run_in_pyro_s_svi():
    x = torch.randn(64) + X0
    for objective in (STLELBO(), DReGLoss(5)):
        svi = SVI(model, guide, Adam({"lr": 0.05}), loss=objective)
        first = svi.evaluate_loss(x)
        for _ in range(100):
            svi.step(x)
        assert svi.evaluate_loss(x) < first


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="num_samples >= 2"):
        make_elbo("dreg", 1)

    def discrete_guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Bernoulli(0.5))

    def discrete_model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    for objective, name in ((STLELBO(), "stl"), (DReGLoss(2), "dreg")):
        with pytest.raises(ValueError, match=f"elbo='{name}' needs every latent"):
            objective.loss(discrete_model, discrete_guide, torch.zeros(3))
