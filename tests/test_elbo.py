import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from lvmkit.inference.elbo import ReparamELBO
from lvmkit.models import GaussianLVM, GaussianLVMConfig


def both(model, guide, *args, num_particles=1):
    """(lvmkit loss, Trace_ELBO loss) and their gradients, from the same random draws."""
    out = []
    for elbo in (ReparamELBO(num_particles), Trace_ELBO(num_particles=num_particles)):
        pyro.clear_param_store()
        torch.manual_seed(0)
        loss = elbo.differentiable_loss(model, guide, *args)
        params = [p for _, p in sorted(pyro.get_param_store().named_parameters())]
        out.append((loss, torch.autograd.grad(loss, params)))
    return out


@pytest.mark.parametrize(
    "settings", [{}, {"beta": 2.5}, {"free_bits": 0.3}, {"likelihood": "bernoulli"}]
)
def test_same_loss_and_gradients_as_trace_elbo(settings):
    torch.manual_seed(0)
    lvm = GaussianLVM(GaussianLVMConfig(**settings))
    x = torch.rand(16, 1, 8, 8)
    if settings.get("likelihood") == "bernoulli":
        x = x.round()
    (ours, g_ours), (theirs, g_theirs) = both(lvm.model, lvm.guide, x, num_particles=3)
    assert torch.allclose(ours, theirs, rtol=1e-6)
    assert all(
        torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(g_ours, g_theirs, strict=True)
    )


def test_subsampled_plate_scales_like_trace_elbo():
    data = torch.randn(100)

    def model(x):
        loc = pyro.param("loc", torch.tensor(0.0))
        with pyro.plate("data", 100, subsample_size=10) as idx:
            z = pyro.sample("z", dist.Normal(loc, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x[idx])

    def guide(x):
        s = pyro.param("s", torch.tensor(1.0), constraint=dist.constraints.positive)
        with pyro.plate("data", 100, subsample_size=10):
            pyro.sample("z", dist.Normal(0.0, s))

    (ours, _), (theirs, _) = both(model, guide, data)
    assert torch.allclose(ours, theirs)
    elbo = ReparamELBO()
    elbo.differentiable_loss(model, guide, data)
    assert elbo.use_fallback is False  # the one-pass path handled it


def test_masks_scales_and_nested_events_match_trace_elbo():
    """Each way a site's log-density gets weighted: per-datapoint and scalar scales, a mask on
    the site, a masked distribution, events of two dims."""
    x = torch.randn(6, 2, 3)
    weights = torch.rand(6) + 0.5
    keep = torch.tensor([True, False, True, True, False, True])

    def model(x):
        w = pyro.param("w", torch.ones(2, 3))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, 3), 1.0).to_event(2))
            with pyro.poutine.scale(scale=weights):
                pyro.sample("x", dist.Normal(w * z, 1.0).to_event(2), obs=x)
            with pyro.poutine.mask(mask=keep), pyro.poutine.scale(scale=torch.tensor(0.7)):
                pyro.sample("y", dist.Normal(z.sum((-1, -2)), 1.0), obs=x[:, 0, 0])
            pyro.sample("u", dist.Normal(z, 2.0).mask(keep[:, None, None]).to_event(2), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.zeros(6, 2, 3))
        with pyro.plate("data", len(x)), pyro.poutine.scale(scale=3.0):
            pyro.sample("z", dist.Normal(loc, 0.5).to_event(2))

    (ours, g_ours), (theirs, g_theirs) = both(model, guide, x, num_particles=2)
    assert ours.shape == ()
    assert torch.allclose(ours, theirs, rtol=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-5) for a, b in zip(g_ours, g_theirs, strict=True))
    elbo = ReparamELBO()
    elbo.differentiable_loss(model, guide, x)
    assert elbo.use_fallback is False


def test_non_reparameterized_guides_fall_back_to_trace_elbo():
    def model(x):
        p = pyro.param("p", torch.tensor(0.3), constraint=dist.constraints.unit_interval)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Bernoulli(p))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        q = pyro.param("q", torch.tensor(0.5), constraint=dist.constraints.unit_interval)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Bernoulli(q))

    x = torch.randn(8)
    elbo = ReparamELBO()
    torch.manual_seed(0)
    ours = elbo.differentiable_loss(model, guide, x)
    assert elbo.use_fallback is True
    torch.manual_seed(0)
    assert torch.allclose(ours, Trace_ELBO().differentiable_loss(model, guide, x))
