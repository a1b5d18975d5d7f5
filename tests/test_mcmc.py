import pyro
import pyro.distributions as dist
import torch

import lvmkit
from lvmkit.models import GaussianMixture, GaussianMixtureConfig


def test_nuts_samples_the_exact_ppca_posterior_with_parameters_fixed():
    g = torch.Generator().manual_seed(0)
    d, q, s = 4, 2, 0.5
    w = torch.randn(d, q, generator=g)
    x = torch.randn(2, d, generator=g)

    def model(x):
        weight = pyro.param("w", w)  # a fitted parameter: fixed, not sampled
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(q), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ weight.T, s).to_event(1), obs=x)

    m = w.T @ w + s**2 * torch.eye(q)
    exact_mean = torch.linalg.solve(m, w.T @ x.T).T  # (2, q)
    exact_std = (s**2 * torch.linalg.inv(m)).diagonal().sqrt()
    pyro.param("w", w)  # fitted into Pyro's global store, as by pyro.infer.SVI
    z = lvmkit.nuts(model, x, num_samples=400, warmup_steps=200, num_chains=1).get_samples()["z"]
    assert z.shape == (400, 2, q)
    assert torch.allclose(z.mean(0), exact_mean, atol=0.1)
    assert torch.allclose(z.std(0), exact_std.expand(2, q), rtol=0.25)


def test_nuts_over_the_parameters_of_a_small_mixture():
    torch.manual_seed(0)
    truth = GaussianMixture(GaussianMixtureConfig(dim=1, components=2))
    truth.set_params(
        torch.tensor([0.4, 0.6]), torch.tensor([[-3.0], [3.0]]), torch.full((2, 1), 0.5)
    )
    x, _ = truth.sample(60)
    gmm = GaussianMixture(GaussianMixtureConfig(dim=1, components=2, covariance_prior_rate=1.0))
    run = lvmkit.nuts(gmm.bayesian_model, x, num_samples=100, warmup_steps=100, num_chains=1)
    samples = run.get_samples()
    means = samples["means"].mean(0).squeeze(-1).sort().values
    assert torch.allclose(means, torch.tensor([-3.0, 3.0]), atol=0.4)
    assert set(samples) == {"weights", "means", "variances"}


def test_nuts_runs_become_inference_data_with_rhat_and_ess():
    import arviz as az

    from lvmkit.diagnostics import mcmc_inference_data

    def model(x):
        loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    import math
    import warnings

    x = torch.randn(50) + 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # quiet by default
        idata = mcmc_inference_data(lvmkit.nuts(model, x, num_samples=100, warmup_steps=50))
        table = az.summary(idata, var_names=["loc"])
    assert idata.posterior.sizes["chain"] == 4  # several chains by default: R-hat is defined
    assert {"r_hat", "ess_bulk", "ess_tail"} <= set(table.columns)
    assert math.isfinite(table.loc["loc", "r_hat"]) and table.loc["loc", "r_hat"] < 1.1
    assert abs(table.loc["loc", "mean"] - float(x.mean())) < 0.3


def test_nuts_names_the_data_axis_as_posterior_does():
    """NUTS draws of local latents line up with lvmkit.posterior's: the same dims, so one
    image's draws are selected the same way in both (global latents keep plain names)."""
    from lvmkit.diagnostics import mcmc_inference_data

    def model(x):
        shift = pyro.sample("shift", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z + shift, 0.5).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x / 1.25, 0.45).to_event(1))

    x = torch.randn(3, 2)
    nuts = mcmc_inference_data(lvmkit.nuts(model, x, num_samples=5, warmup_steps=5, num_chains=1))
    assert nuts.posterior["z"].dims == ("chain", "draw", "datapoint", "z_dim_0")
    assert nuts.posterior["shift"].dims == ("chain", "draw")
    assert nuts.posterior["z"].sizes["datapoint"] == 3

    def local_model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=x)

    q = lvmkit.posterior(local_model, guide, x, num_samples=5)
    assert q.posterior["z"].dims == nuts.posterior["z"].dims
