"""Autoencoders as Pyro programs with a point-estimate (Delta) guide, as representation baselines.

With q(z|x) = Delta(f(x)) the ELBO is log p(x | z = f(x)) + log p(f(x)): the reconstruction
likelihood plus a penalty on the code. A flat (improper) prior gives the plain bottleneck
autoencoder; a Laplace prior gives the L1 penalty of a sparse autoencoder; corrupting x before
encoding, while training, gives a denoising autoencoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

from lvmkit.distributions import check_support
from lvmkit.models.base import BuiltinModel
from lvmkit.models.common import (
    check_batch,
    fill_unknown,
    make_decoder,
    make_encoder,
    observation_for,
)

KINDS = ("bottleneck", "sparse", "denoising")
NO_PRIOR = (
    "an autoencoder has no generative prior over codes, so it cannot sample: "
    "use reconstruct/encode, or a GaussianLVM to sample"
)


@dataclass
class AutoencoderConfig:
    kind: str = "bottleneck"  # bottleneck | sparse | denoising
    image_shape: tuple[int, ...] = (1, 8, 8)
    z_dim: int = 8  # code dimensions
    hidden: tuple[int, ...] = (256, 256)
    net: str = "mlp"  # "mlp" or "conv"
    likelihood: str = "gaussian"  # gaussian | lowrank | bernoulli | categorical | logistic
    levels: int | None = None
    components: int = 1
    rank: int = 2
    min_scale: float = 0.03
    sparsity: float = 1.0  # sparse: the L1 weight lambda, i.e. a Laplace(0, 1/lambda) prior
    noise: float = 0.3  # denoising: the share of pixels zeroed before encoding, while training


class Autoencoder(BuiltinModel):
    """x -> z = f(x) -> p(x | z). ``kind`` picks the bottleneck, sparse or denoising variant.

    Parameters
    ----------
    config : AutoencoderConfig, optional
        Its settings, the defaults where None (``lvmkit fit ae --help`` lists them with
        their meaning).
    """

    config_class = AutoencoderConfig
    can_complete = True  # by iterated reconstruction; no sampling: no prior over codes
    can_reconstruct = True
    can_encode = True
    density = None  # the code has no (proper) prior: no p(x)

    def __init__(self, config: AutoencoderConfig | None = None):
        super().__init__()
        self.config = c = config or AutoencoderConfig()
        if c.kind not in KINDS:
            raise ValueError(f"unknown autoencoder kind {c.kind!r}; choose one of {KINDS}")
        self.obs = observation_for(c)
        self.encoder = make_encoder(c.net, c.image_shape, c.hidden, c.z_dim)
        self.decoder = make_decoder(c.net, c.z_dim, c.hidden, self.obs)
        self.register_buffer("code_loc", torch.zeros(c.z_dim))  # follows the module's device

    def code_prior(self) -> dist.Distribution:
        """The codes' prior: flat (bottleneck, denoising) or Laplace (sparse); event shape (Z,)."""
        if self.config.kind == "sparse":
            return dist.Laplace(self.code_loc, 1.0 / self.config.sparsity).to_event(1)
        return dist.ImproperUniform(constraints.real, (), (self.config.z_dim,))  # log density 0

    def model(self, x: Tensor | None = None, n: int | None = None) -> Tensor:
        if x is None:
            raise ValueError(NO_PRIOR)
        check_batch(self, x, self.config.image_shape)
        check_support(self.obs, x)
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", self.code_prior())
            return pyro.sample("x", self.obs(self.decoder(z)), obs=x)

    def guide(self, x: Tensor | None = None, n: int | None = None) -> Tensor:
        if x is None:
            raise ValueError("the autoencoder's guide needs x")
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", len(x)):
            return pyro.sample("z", dist.Delta(self.encoder(self._corrupt(x))).to_event(1))

    def _corrupt(self, x: Tensor) -> Tensor:
        """Masking noise (Vincent et al. 2008), for the denoising kind in training mode."""
        if self.config.kind != "denoising" or not self.training:
            return x
        return x * (torch.rand_like(x) >= self.config.noise)

    def encode(self, x: Tensor) -> dist.Distribution:
        """The code as a point mass: ``.mean`` is f(x), (B, Z)."""
        check_batch(self, x, self.config.image_shape)
        return dist.Delta(self.encoder(x)).to_event(1)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x | z = f(x)]: ``(B, *image_shape)``."""
        return self.obs.mean(self.decoder(self.encode(x).mean))

    @torch.no_grad()
    def complete(self, x: Tensor, known: Tensor, steps: int = 20) -> Tensor:
        """Fill unknown pixels by iterating reconstruction; known pixels stay."""
        fill = fill_unknown(x, known, torch.zeros_like(x))
        for _ in range(steps):
            fill = fill_unknown(x, known, self.reconstruct(fill))
        return fill

    def sample(self, n: int) -> Tensor:
        raise ValueError(NO_PRIOR)

    def sample_images(self, n: int) -> Tensor:
        raise ValueError(NO_PRIOR)
