"""What a ``GaussianLVM``'s latent layer is made of besides N(0, I) and a diagonal q: learned
priors p(z) (a mixture of Gaussians, the VampPrior) and flow posteriors q(z|x) (inverse
autoregressive flow). Each is a small ``nn.Module`` that returns a Pyro distribution."""

from __future__ import annotations

import copy
import math
import warnings

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import Tensor, nn

from lvmkit.models.common import gaussian_params

PRIORS = ("normal", "mog", "vamp")
GUIDES = ("gaussian", "iaf")


class DiagonalMixture(dist.TorchDistribution):
    """sum_k pi_k N(z; loc_k, diag scale_k^2) over z (Z,), for loc, scale (K, Z) and mixture
    logits (K,). log_prob takes two (., Z) x (Z, K) products, not a (., K, Z) tensor: with K in
    the hundreds (a VampPrior) and K x B particles it is the cost of the prior."""

    arg_constraints = {}
    support = dist.constraints.real_vector

    def __init__(self, loc: Tensor, scale: Tensor, logits: Tensor, validate_args=None):
        self.loc, self.scale, self.logits = loc, scale, logits
        super().__init__(torch.Size(), loc.shape[-1:], validate_args=validate_args)

    def log_prob(self, value: Tensor) -> Tensor:
        precision = self.scale.pow(-2)  # (K, Z)
        quadratic = -0.5 * (value.square() @ precision.T) + value @ (self.loc * precision).T
        const = (
            -0.5 * (self.loc.square() * precision).sum(-1)
            - self.scale.log().sum(-1)
            - 0.5 * self.loc.shape[-1] * math.log(2 * math.pi)
            + self.logits.log_softmax(-1)
        )
        return torch.logsumexp(quadratic + const, dim=-1)

    def sample(self, sample_shape=()) -> Tensor:
        with torch.no_grad():
            k = dist.Categorical(logits=self.logits).sample(torch.Size(sample_shape))
            return self.loc[k] + self.scale[k] * torch.randn_like(self.loc[k])

    @property
    def mean(self) -> Tensor:
        return (self.logits.softmax(-1)[:, None] * self.loc).sum(0)

    def expand(self, batch_shape, _instance=None):
        return dist.ExpandedDistribution(self, batch_shape)


def uniform_mixture(loc: Tensor, scale: Tensor) -> DiagonalMixture:
    """(1/K) sum_k N(loc_k, diag scale_k^2) for loc, scale (K, Z): event shape (Z,)."""
    return DiagonalMixture(
        loc, scale, torch.zeros(loc.shape[0], device=loc.device, dtype=loc.dtype)
    )


class MixturePrior(nn.Module):
    """p(z) = sum_k pi_k N(z; mu_k, diag sigma_k^2) with weights, means and scales learned."""

    def __init__(self, z_dim: int, components: int):
        super().__init__()
        self.loc = nn.Parameter(torch.randn(components, z_dim))
        self.log_scale = nn.Parameter(torch.zeros(components, z_dim))
        self.logits = nn.Parameter(torch.zeros(components))

    def forward(self) -> dist.Distribution:
        return DiagonalMixture(self.loc, self.log_scale.exp(), self.logits)


class VampPrior(nn.Module):
    """p(z) = (1/K) sum_k q(z | u_k) over K learned pseudo-inputs u_k (Tomczak & Welling 2018),
    q the encoder's diagonal Gaussian (before any flow steps, whose density at a point would
    need their inverse for every k)."""

    def __init__(self, image_shape: tuple[int, ...], components: int):
        super().__init__()
        # near 0 until ``start_at`` puts them at training images (GaussianLVM.initialize)
        self.pseudo_inputs = nn.Parameter(0.01 * torch.randn(components, *image_shape))
        self.register_buffer("placed", torch.tensor(False))  # saved: a resumed run knows

    @torch.no_grad()
    def start_at(self, x: Tensor, generator: torch.Generator) -> None:
        """Pseudo-inputs at K training images drawn from x ``(N, *image_shape)``, with replacement
        when N < K, plus a little noise so that no two are equal."""
        k = len(self.pseudo_inputs)
        pick = torch.randint(len(x), (k,), generator=generator) if len(x) < k else (
            torch.randperm(len(x), generator=generator)[:k]
        )  # fmt: skip
        noise = 0.01 * torch.randn(self.pseudo_inputs.shape, generator=generator)
        self.pseudo_inputs.copy_(x[pick].to(self.pseudo_inputs) + noise.to(self.pseudo_inputs))
        self.placed.fill_(True)

    def forward(self, gaussian_q) -> dist.Distribution:
        """gaussian_q: x ``(K, *image_shape)`` -> (loc, scale), each (K, Z)."""
        if self.training and not self.placed and torch.is_grad_enabled():
            # training from the near-zero start works, but converges nats worse
            warnings.warn(
                "the VampPrior's pseudo-inputs were never placed at training images: call "
                "model.initialize(train_data) before fitting (lvmkit fit does)",
                stacklevel=2,
            )
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
    steps (Kingma et al. 2016) conditioned on a context h(x), each a MADE giving a shift and a
    log-scale clipped to [-5, 3], the variable order reversed between steps. A draw costs one
    pass per step; log q of its own draw is read from the draw (no inverse). log q elsewhere
    (AIS, the held draws of stl and dreg) runs the inverse, one pass per dimension; the clipped
    scale keeps it finite everywhere, where the gated update's sigmoid can divide by ~0."""

    def __init__(self, z_dim: int, context_dim: int, steps: int, hidden: int):
        super().__init__()
        order = torch.arange(z_dim)
        self.steps = nn.ModuleList(
            ConditionalAffineAutoregressive(
                ConditionalAutoRegressiveNN(
                    z_dim, context_dim, [hidden, hidden], permutation=order.flip(0) if i % 2
                    else order,
                ),
            )
            for i in range(steps)
        )  # fmt: skip

    def forward(self, loc: Tensor, scale: Tensor, context: Tensor) -> FlowPosterior:
        """loc, scale (B, Z), context (B, C) -> q with batch shape (B,), event shape (Z,)."""
        base = dist.Normal(loc, scale).to_event(1)
        return FlowPosterior(base, [step.condition(context) for step in self.steps])


class FlowGuide(nn.Module):
    """An IAF guide for your own model: q(z|x) = the diagonal Gaussian ``encoder`` gives,
    followed by ``flow_steps`` inverse autoregressive flow steps conditioned on the encoder.

    The guide samples site ``site`` (event shape (z_dim,)) inside ``pyro.plate("data", B)``,
    as a model with ``pyro.sample(site, ...to_event(1))`` there expects; it is called with the
    model's arguments and reads the first.

    Parameters
    ----------
    encoder : nn.Module
        (B, ...) -> (B, 4 * z_dim): loc, raw scale (softplus), and a context of 2 * z_dim for
        the flow.
    z_dim : int
        The latent's size.
    flow_steps : int
        IAF steps after the Gaussian.
    site : str
        The model's latent site.
    name : str
        The name its ``pyro.module`` registers.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist, torch, lvmkit
    >>> from torch import nn
    >>> from lvmkit.models import FlowGuide
    >>> decoder = nn.Linear(2, 6)
    >>> def model(x):
    ...     pyro.module("decoder", decoder)
    ...     with pyro.plate("data", len(x)):
    ...         z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    ...         pyro.sample("x", dist.Normal(decoder(z), 0.5).to_event(1), obs=x)
    >>> guide = FlowGuide(nn.Linear(6, 8), z_dim=2)  # 8 = 4 * z_dim
    >>> result = lvmkit.fit(model, guide, torch.randn(40, 6), epochs=2, progress=False)
    >>> guide.q(torch.randn(5, 6)).sample().shape
    torch.Size([5, 2])
    """

    def __init__(self, encoder: nn.Module, z_dim: int, *, flow_steps: int = 2,
                 site: str = "z", name: str = "flow_guide"):  # fmt: skip
        super().__init__()
        if flow_steps < 1:
            raise ValueError(f"flow_steps={flow_steps}: a flow needs at least one step")
        self.encoder, self.z_dim, self.site, self.name = encoder, z_dim, site, name
        self.flow = InverseAutoregressiveFlow(z_dim, 2 * z_dim, flow_steps, 4 * z_dim)

    def q(self, x: Tensor) -> FlowPosterior:
        """q(z|x) for a batch x: batch shape (B,), event shape (z_dim,)."""
        h = self.encoder(x)
        if h.shape[-1] != 4 * self.z_dim:
            raise ValueError(
                f"the encoder gives {h.shape[-1]} numbers per datapoint; FlowGuide with "
                f"z_dim={self.z_dim} needs 4 * z_dim = {4 * self.z_dim} (loc, scale, context)"
            )
        loc, scale = gaussian_params(h[..., : 2 * self.z_dim])
        return self.flow(loc, scale, h[..., 2 * self.z_dim :])

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        pyro.module(self.name, self)
        with pyro.plate("data", len(x)):
            return pyro.sample(self.site, self.q(x))
