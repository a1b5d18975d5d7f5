import math

import pyro
import pyro.distributions as dist
import torch

from lvmkit.inference.importance import IWAELoss, log_weights, max_plate_nesting

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
    lw = log_weights(model, exact_guide, x, num_particles=5, plate_nesting=1)
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
