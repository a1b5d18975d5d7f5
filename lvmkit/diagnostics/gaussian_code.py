"""What a built-in model's Gaussian code holds, and how well its encoder infers it: KL per
latent dimension, mutual information I_q(x; z), and the amortization gap (Cremer et al. 2018).
Each takes a model with a Gaussian ``encode`` over the latent site "z"."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor

from lvmkit.core.rng import seeded
from lvmkit.inference.importance import log_likelihood
from lvmkit.inference.programs import evaluating, on_device, per_datapoint, place


@torch.no_grad()
def kl_per_dimension(model, x: Tensor) -> Tensor:
    """Mean over x of KL(q(z_j | x) || N(0, 1)) per latent dim. Dims near 0 carry no
    information about x (collapsed).

    Parameters
    ----------
    model : BuiltinModel
        With a Gaussian ``encode`` and p(z) = N(0, I).
    x : Tensor of shape (N, ...)
        Datapoints in model units.

    Returns
    -------
    Tensor of shape (Z,)
    """
    q = model.encode(x.to(place(model))).base_dist
    return torch.distributions.kl_divergence(q, dist.Normal(0.0, 1.0)).mean(0)


@torch.no_grad()
def mutual_information(model, x: Tensor, seed: int = 0) -> float:
    """I_q(x; z) = E_x KL(q(z|x) || q(z)), q(z) the aggregate posterior over these x, estimated
    with one z per x (Hoffman & Johnson 2016): at most log N nats.

    Parameters
    ----------
    model : BuiltinModel
        With a Gaussian ``encode``.
    x : Tensor of shape (N, ...)
        Datapoints in model units.
    seed : int

    Returns
    -------
    float
    """
    device = place(model)
    q = model.encode(x.to(device))
    with seeded(seed, device):
        z = q.sample()  # (N, Z)
    base = q.base_dist
    cross = dist.Normal(base.loc[None], base.scale[None]).log_prob(z[:, None]).sum(-1)  # (N, N)
    log_aggregate = torch.logsumexp(cross, dim=1) - math.log(len(x))
    return float((cross.diagonal() - log_aggregate).mean())


@dataclass
class AmortizationGap:
    """Cremer et al. 2018, per datapoint averages in nats.

    Parameters
    ----------
    amortized_elbo : float
        L[q], the encoder's q(z|x).
    refined_elbo : float
        L[q*], q refined per datapoint.
    log_likelihood : float
        Importance-sampled log p(x).
    approximation_gap : float
        log p(x) - L[q*].
    amortization_gap : float
        L[q*] - L[q].
    """

    amortized_elbo: float  # L[q]: the encoder's q(z|x)
    refined_elbo: float  # L[q*]: q fitted to each datapoint, starting at the encoder's output
    log_likelihood: float  # log p(x), importance-sampled with q*
    approximation_gap: float  # log p(x) - L[q*]
    amortization_gap: float  # L[q*] - L[q]


def amortization_gap(
    model,
    x: Tensor,
    *,
    steps: int = 200,
    lr: float = 0.1,
    num_samples: int = 16,
    num_ll_samples: int = 1000,
    seed: int = 0,
    device=None,
) -> AmortizationGap:
    """Amortized ELBO, ELBO after refining a Gaussian q per datapoint, and the IS log-likelihood,
    for a built-in model whose guide is a Gaussian ``encode`` over the latent site ``z`` (data
    plate at dim -1; Cremer et al. 2018).

    The refinement is gradient ascent with the "sticking the landing" gradient (Roeder et al.
    2017), exactly 0 at the exact posterior, on loc = loc0 + scale0 * u and log scale =
    log scale0 + v from u = v = 0, where the curvature of a near-Gaussian posterior is about 1;
    each datapoint's step is clipped to length ``lr``. (Adam would blow rounding-level gradients
    near the optimum up to full steps.) Both ELBOs are estimated with the same draws, and a
    datapoint keeps its encoder's q where refinement did not improve it.

    Parameters
    ----------
    model : GaussianLVM
        A fitted built-in model with a Gaussian code.
    x : Tensor of shape (N, ...)
        Datapoints in model units.
    steps : int
        Refinement steps.
    lr : float
        The longest refinement step, per datapoint.
    num_samples : int
        Draws per ELBO estimate.
    num_ll_samples : int
        Importance samples of log p(x).
    seed : int
    device : str or torch.device, optional
        Where to compute (None: where the model is).

    Returns
    -------
    AmortizationGap
        The two ELBOs, log p(x) and the gaps, nats per datapoint.
    """
    device = place(model, device=device)
    x = x.to(device)
    with evaluating(model), on_device(device):
        with torch.no_grad():
            q = model.encode(x).base_dist
        loc0, log_scale0 = q.loc.detach(), q.scale.log().detach()
        u = torch.zeros_like(loc0, requires_grad=True)
        v = torch.zeros_like(loc0, requires_grad=True)

        def local() -> tuple[Tensor, Tensor]:
            return loc0 + log_scale0.exp() * u, log_scale0 + v

        def elbo(sticking: bool = False) -> Tensor:
            """(N,) ELBO estimates of the current local q."""
            loc, log_scale = local()
            scale = log_scale.exp()
            z = loc + scale * torch.randn_like(loc.expand(num_samples, *loc.shape))
            q_loc, q_scale = (loc.detach(), scale.detach()) if sticking else (loc, scale)
            log_q = dist.Normal(q_loc, q_scale).log_prob(z).sum(-1)  # (K, N)
            with pyro.plate("particles", num_samples, dim=-2):
                tr = poutine.trace(poutine.condition(model.model, data={"z": z})).get_trace(x)
            return (per_datapoint(tr, 1) - log_q).mean(0)

        def evaluate() -> Tensor:
            with seeded(seed, device), torch.no_grad():  # the same draws every time
                return elbo()

        amortized = evaluate()
        with seeded(seed + 1, device):
            for _ in range(steps):  # datapoints are independent: the sum optimizes each
                g_u, g_v = torch.autograd.grad(elbo(sticking=True).sum(), [u, v])
                with torch.no_grad():  # each datapoint's step at most lr long: far from the
                    norm = (g_u**2 + g_v**2).sum(-1, keepdim=True).sqrt()  # optimum (a sharp
                    step = lr / norm.clamp(min=1.0)  # untrained decoder) it cannot overshoot
                    u += step * g_u
                    v.add_(step * g_v).clamp_(-10.0, 5.0)
        refined = evaluate()
        worse = ~(refined >= amortized)  # NaN counts as worse
        with torch.no_grad():  # keep the encoder's q where refinement did not help
            u[worse], v[worse] = 0.0, 0.0
        refined = torch.maximum(refined, amortized)

        def local_guide(x):
            loc, log_scale = local()
            with pyro.plate("data", len(x)):
                pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

        with torch.no_grad():
            ll = log_likelihood(
                model.model, local_guide, x, num_samples=num_ll_samples, seed=seed
            ).mean
    a, r = float(amortized.mean()), float(refined.mean())
    return AmortizationGap(a, r, ll, ll - r, r - a)
