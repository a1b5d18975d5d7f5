"""What a ``GaussianLVM``'s latent layer is made of besides N(0, I) and a diagonal q: learned
priors p(z) (a mixture of Gaussians, the VampPrior) and flow posteriors q(z|x) (inverse
autoregressive flow). Each is a small ``nn.Module`` that returns a Pyro distribution."""

from __future__ import annotations

import copy

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import Tensor, nn

PRIORS = ("normal", "mog", "vamp")
GUIDES = ("gaussian", "iaf")


def uniform_mixture(loc: Tensor, scale: Tensor) -> dist.Distribution:
    """(1/K) sum_k N(loc_k, diag scale_k^2) for loc, scale (K, Z): event shape (Z,)."""
    weights = dist.Categorical(logits=torch.zeros(loc.shape[0], device=loc.device, dtype=loc.dtype))
    return dist.MixtureSameFamily(weights, dist.Normal(loc, scale).to_event(1))


class MixturePrior(nn.Module):
    """p(z) = sum_k pi_k N(z; mu_k, diag sigma_k^2) with weights, means and scales learned."""

    def __init__(self, z_dim: int, components: int):
        super().__init__()
        self.loc = nn.Parameter(torch.randn(components, z_dim))
        self.log_scale = nn.Parameter(torch.zeros(components, z_dim))
        self.logits = nn.Parameter(torch.zeros(components))

    def forward(self) -> dist.Distribution:
        normals = dist.Normal(self.loc, self.log_scale.exp()).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), normals)


class VampPrior(nn.Module):
    """p(z) = (1/K) sum_k q(z | u_k) over K learned pseudo-inputs u_k (Tomczak & Welling 2018),
    q the encoder's diagonal Gaussian (before any flow steps, whose density at a point would
    need their inverse for every k)."""

    def __init__(self, image_shape: tuple[int, ...], components: int):
        super().__init__()
        # near 0 until ``start_at`` puts them at training images (GaussianLVM.initialize)
        self.pseudo_inputs = nn.Parameter(0.01 * torch.randn(components, *image_shape))

    @torch.no_grad()
    def start_at(self, x: Tensor, generator: torch.Generator) -> None:
        """Pseudo-inputs at K training images drawn from x (N, *image_shape), with replacement
        when N < K, plus a little noise so that no two are equal."""
        k = len(self.pseudo_inputs)
        pick = torch.randint(len(x), (k,), generator=generator) if len(x) < k else (
            torch.randperm(len(x), generator=generator)[:k]
        )  # fmt: skip
        noise = 0.01 * torch.randn(self.pseudo_inputs.shape, generator=generator)
        self.pseudo_inputs.copy_(x[pick].to(self.pseudo_inputs) + noise.to(self.pseudo_inputs))

    def forward(self, gaussian_q) -> dist.Distribution:
        """gaussian_q: x (K, *image_shape) -> (loc, scale), each (K, Z)."""
        return uniform_mixture(*gaussian_q(self.pseudo_inputs))


class FlowPosterior(dist.TransformedDistribution):
    """A diagonal Gaussian pushed through flow steps. Its ``mean`` is the image of the
    Gaussian's mean under the flow (E[z|x] has no closed form): the representation ``encode``
    gives."""

    @property
    def mean(self) -> Tensor:
        z = self.base_dist.mean
        for t in self.transforms:  # on copies: a step caches its last call, which log_prob
            z = copy.copy(t)(z)  # of a draw reads
        return z


class InverseAutoregressiveFlow(nn.Module):
    """q(z|x): N(loc(x), diag scale(x)^2) followed by ``steps`` inverse autoregressive flow
    steps (Kingma et al. 2016) conditioned on a context h(x), each a MADE with the numerically
    stable gated update, the variable order reversed between steps. A draw costs one pass per
    step; log q of its own draw is read from the draw (no inverse)."""

    def __init__(self, z_dim: int, context_dim: int, steps: int, hidden: int):
        super().__init__()
        order = torch.arange(z_dim)
        self.steps = nn.ModuleList(
            ConditionalAffineAutoregressive(
                ConditionalAutoRegressiveNN(
                    z_dim, context_dim, [hidden, hidden], permutation=order.flip(0) if i % 2
                    else order,
                ),
                stable=True,
            )
            for i in range(steps)
        )  # fmt: skip

    def forward(self, loc: Tensor, scale: Tensor, context: Tensor) -> FlowPosterior:
        """loc, scale (B, Z), context (B, C) -> q with batch shape (B,), event shape (Z,)."""
        base = dist.Normal(loc, scale).to_event(1)
        return FlowPosterior(base, [step.condition(context) for step in self.steps])
