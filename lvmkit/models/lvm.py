"""The Gaussian-decoder latent variable model: p(z) = N(0, I), p(x|z) = N(mu_nn(z), Sigma_nn(z))."""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from lvmkit.nets import GaussianDecoder, GaussianEncoder


@dataclass
class GaussianLVMConfig:
    image_shape: tuple[int, int, int] = (1, 8, 8)  # (C, H, W) of the data it is built for
    z_dim: int = 8
    hidden: tuple[int, ...] = (256, 256)  # widths of the encoder's and decoder's hidden layers
    # Floor on the decoder's std (data in [0, 1]). Pixels that are constant in the data (a digit's
    # border) would otherwise drive the std to 0 and log p(x|z) to +inf.
    min_scale: float = 0.03


class GaussianLVM(nn.Module):
    """p(z) = N(0, I);  p(x|z) = N(loc(z), diag scale(z)^2);  q(z|x) = N(mu(x), diag sigma(x)^2).

    ``model(x)`` scores a batch (B, C, H, W); ``model(n=16)`` samples the prior predictive.
    """

    def __init__(self, config: GaussianLVMConfig | None = None):
        super().__init__()
        self.config = config = config or GaussianLVMConfig()
        self.image_shape = tuple(config.image_shape)
        self.encoder = GaussianEncoder(self.image_shape, config.hidden, config.z_dim)
        self.decoder = GaussianDecoder(
            config.z_dim, config.hidden, self.image_shape, config.min_scale
        )
        # Buffers, so the prior follows the module's device and dtype.
        self.register_buffer("prior_loc", torch.zeros(config.z_dim))
        self.register_buffer("prior_scale", torch.ones(config.z_dim))

    def _check(self, x: Tensor | None, n: int | None) -> int:
        if x is None:
            if n is None:
                raise ValueError("pass a batch x, or n to sample n datapoints from the prior")
            return n
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"{type(self).__name__} was built for images of shape {self.image_shape} but got "
                f"a batch of shape {tuple(x.shape)}; build it with "
                f"GaussianLVMConfig(image_shape={tuple(x.shape[1:])})"
            )
        return len(x)

    def decode(self, z: Tensor) -> dist.Distribution:
        """p(x|z) for z (B, Z): a distribution with event shape (C, H, W)."""
        loc, scale = self.decoder(z)
        return dist.Normal(loc, scale).to_event(3)

    def model(self, x: Tensor | None = None, n: int | None = None) -> Tensor:
        n = self._check(x, n)
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(self.prior_loc, self.prior_scale).to_event(1))
            return pyro.sample("x", self.decode(z), obs=x)

    def guide(self, x: Tensor | None = None, n: int | None = None) -> Tensor:
        if x is None:
            raise ValueError("the guide q(z|x) needs x; to sample the prior call model(n=...)")
        self._check(x, None)
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", len(x)):
            loc, scale = self.encoder(x)
            return pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def encode(self, x: Tensor) -> dist.Distribution:
        """q(z|x) for a batch (B, C, H, W): a Normal with event shape (Z,)."""
        self._check(x, None)
        loc, scale = self.encoder(x)
        return dist.Normal(loc, scale).to_event(1)

    @torch.no_grad()
    def sample(self, n: int, *, mean: bool = False) -> Tensor:
        """n draws from p(x) (B, C, H, W); ``mean=True`` gives E[x|z] for z ~ p(z) instead."""
        z = dist.Normal(self.prior_loc, self.prior_scale).sample((n,))
        px = self.decode(z)
        return px.mean if mean else px.sample()

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x | z = mean of q(z|x)]: (B, C, H, W)."""
        return self.decode(self.encode(x).mean).mean
