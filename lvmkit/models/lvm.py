"""The Gaussian-decoder latent variable model: p(z) = N(0, I), p(x|z) = obs(decoder(z))."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor

from lvmkit.core.checks import check_count
from lvmkit.distributions import check_support
from lvmkit.models.base import BuiltinModel
from lvmkit.models.common import (
    check_batch,
    fill_unknown,
    gaussian_params,
    make_decoder,
    make_encoder,
    observation_for,
)


@dataclass
class GaussianLVMConfig:
    image_shape: tuple[int, ...] = (1, 8, 8)  # (C, H, W) of the data, or (D,) for vectors
    z_dim: int = 8  # latent dimensions
    hidden: tuple[int, ...] = (256, 256)  # hidden widths (conv nets use the last one)
    net: str = "mlp"  # "mlp" or "conv" (transpose-conv decoder), for encoder and decoder
    # gaussian | lowrank | bernoulli | categorical | logistic, or pixelcnn: a gated PixelCNN
    # over the levels, conditioned on the decoder's output (the PixelCNN-decoder LVM)
    likelihood: str = "gaussian"
    levels: int | None = None  # pixel levels, for categorical and logistic
    components: int = 1  # logistic mixture components
    rank: int = 2  # covariance directions of the lowrank likelihood
    # Floor on a Gaussian decoder's std (data in [0, 1]): pixels that are constant in the data
    # (a digit's border) would otherwise drive it to 0 and log p(x|z) to +inf.
    min_scale: float = 0.03
    beta: float = 1.0  # weight of the KL term while training (beta-VAE); 1 is the ELBO
    # Free bits (Kingma et al. 2016): while training, each latent dim's KL (batch mean) counts
    # as at least this many nats, so the encoder is not pushed to collapse it. 0 is off.
    free_bits: float = 0.0
    # KL warm-up (annealing): the KL weight rises linearly from 0 to beta over this many
    # gradient steps. 0 is off.
    kl_warmup_steps: int = 0
    ar_features: int = 32  # pixelcnn likelihood: the PixelCNN's feature maps per layer
    ar_layers: int = 3  # and its gated layers
    ar_context: int = 32  # and the size of the decoder output it is conditioned on


class GaussianLVM(BuiltinModel):
    """p(z) = N(0, I);  p(x|z) = obs(decoder(z));  q(z|x) = N(mu(x), diag sigma(x)^2).

    ``model(x)`` scores a batch (B, *image_shape); ``model(n=16)`` samples the prior predictive.
    ``beta`` and ``free_bits`` change the objective in training mode only: ``lvm.eval()`` makes
    the model the exact p(x, z), e.g. for likelihood estimates.
    """

    config_class = GaussianLVMConfig
    can_sample = True
    can_complete = True
    can_reconstruct = True
    can_encode = True
    gaussian_code = True

    def __init__(self, config: GaussianLVMConfig | None = None):
        super().__init__()
        self.config = config = config or GaussianLVMConfig()
        self.obs = observation_for(config)
        self.ar_net = self.obs.net  # a PixelCNN decoder's own net, or None
        self.encoder = make_encoder(config.net, config.image_shape, config.hidden, 2 * config.z_dim)
        self.decoder = make_decoder(config.net, config.z_dim, config.hidden, self.obs)
        # Buffers, so the prior follows the module's device and dtype.
        self.register_buffer("prior_loc", torch.zeros(config.z_dim))
        self.register_buffer("prior_scale", torch.ones(config.z_dim))
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))  # for warm-up

    def _n(self, x: Tensor | None, n: int | None) -> int:
        if x is None:
            if n is None:
                raise ValueError("pass a batch x, or n to sample n datapoints from the prior")
            return n
        check_batch(self, x, self.config.image_shape)
        check_support(self.obs, x)
        return len(x)

    def prior(self) -> dist.Distribution:
        """p(z) = N(0, I): event shape (Z,)."""
        return dist.Normal(self.prior_loc, self.prior_scale).to_event(1)

    def decode(self, z: Tensor) -> dist.Distribution:
        """p(x|z) for z (B, Z): a distribution with event shape ``image_shape``."""
        return self.obs(self.decoder(z))

    @torch.no_grad()
    def decode_mean(self, z: Tensor) -> Tensor:
        """E[x|z] for z (B, Z): (B, *image_shape) (a draw for a PixelCNN decoder)."""
        return self.obs.mean(self.decoder(z))

    def encode(self, x: Tensor) -> dist.Distribution:
        """q(z|x) for a batch: a Normal with event shape (Z,)."""
        check_batch(self, x, self.config.image_shape)
        return dist.Normal(*gaussian_params(self.encoder(x))).to_event(1)

    def _kl_weight(self) -> float | Tensor:
        """beta; during the KL warm-up a tensor rising linearly from ~0, computed from the step
        counter as a tensor so that a traced step (``fit(jit=True)``) follows it."""
        if self.training and self.config.kl_warmup_steps:
            warm = (self.train_steps / self.config.kl_warmup_steps).clamp(max=1.0)
            return (self.config.beta * warm).clamp(min=1e-6)  # Pyro's scale must be positive
        return self.config.beta

    def _z_site(self):
        """How the z site counts in the objective: as is in eval mode; while training, scaled
        by the KL weight, or left out under free bits (their penalty stands in for the KL)."""
        if self.training and self.config.free_bits > 0:
            return poutine.mask(mask=False)
        beta = self._kl_weight()
        if self.training and (isinstance(beta, Tensor) or beta != 1):
            return poutine.scale(scale=beta)
        return nullcontext()

    def model(self, x: Tensor | None = None, n: int | None = None) -> Tensor:
        n = self._n(x, n)
        pyro.module("decoder", self.decoder)
        if self.ar_net is not None:
            pyro.module("ar_net", self.ar_net)
        if self.training and x is not None and torch.is_grad_enabled():
            self.train_steps += 1  # counts gradient steps (evaluation runs without gradients)
        with pyro.plate("data", n):
            with self._z_site():
                z = pyro.sample("z", self.prior())
            x_out = pyro.sample("x", self.decode(z), obs=x)
        if self.training and self.config.free_bits > 0 and x is not None:
            # -beta * sum_j max(lambda, KL_j): KL_j is dim j's analytic KL(q(z_j|x) || p(z_j))
            # averaged over the batch, times the batch size to match the summed likelihood.
            q = dist.Normal(*gaussian_params(self.encoder(x)))
            kl = torch.distributions.kl_divergence(q, dist.Normal(self.prior_loc, self.prior_scale))
            penalty = kl.mean(0).clamp(min=self.config.free_bits).sum() * n
            pyro.factor("free_bits_kl", -self._kl_weight() * penalty)
        return x_out

    def guide(self, x: Tensor | None = None, n: int | None = None) -> Tensor:
        if x is None:
            raise ValueError("the guide q(z|x) needs x; to sample the prior call model(n=...)")
        check_batch(self, x, self.config.image_shape)
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", len(x)):
            loc, scale = gaussian_params(self.encoder(x))
            with self._z_site():
                return pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    @torch.no_grad()
    def sample(self, n: int, *, mean: bool = False) -> Tensor:
        """n draws from p(x); ``mean=True`` gives E[x|z] for z ~ p(z) instead."""
        z = self.prior().sample((check_count("n", n),))
        return self.decode_mean(z) if mean else self.decode(z).sample()

    def sample_images(self, n: int) -> Tensor:
        """E[x|z] for n draws z ~ p(z), as pictures: clearer than draws of pixel noise."""
        return self.to_images(self.sample(n, mean=True))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x | z = mean of q(z|x)]."""
        return self.decode_mean(self.encode(x).mean)

    @torch.no_grad()
    def complete(
        self,
        x: Tensor,
        known: Tensor,
        steps: int = 20,
        *,
        method: str = "gibbs",
        num_samples: int = 64,
    ) -> Tensor:
        """x (B, *image_shape) with the elements where ``known`` is False filled in; known ones
        stay. Two ways to choose the z the unknown pixels are drawn with (``completion_z``):

        - "gibbs" (the default): pseudo-Gibbs sampling (Rezende et al. 2014): ``steps`` rounds
          of encoding the current fill, drawing z ~ q(z|fill), decoding, and replacing the
          unknown pixels. A Markov chain through the encoder: its completions look right, but
          no likelihood of the unknown pixels can be read from it (its stationary law is not
          p(x_unknown | x_known) unless q is exact).
        - "importance": ``num_samples`` draws z_k ~ q(z | fill) for the image with its unknown
          pixels filled from the decoder at the prior mean, weighted by p(x_known | z_k) p(z_k)
          / q(z_k | fill), and one z drawn by weight: a draw from p(z | x_known) as K grows.
          The unknown pixels then come from p(x_unknown | x_known, z): a PixelCNN decoder
          completes the image given its known pixels (which must come first in raster order,
          e.g. the top half), a factorised decoder draws them independently.
        """
        known = known.bool()
        z = self.completion_z(x, known, steps=steps, method=method, num_samples=num_samples)
        decoded = self.decode(z)
        if method == "importance" and self.ar_net is not None:
            return decoded.complete(x, known)
        return fill_unknown(x, known, decoded.sample())

    @torch.no_grad()
    def completion_z(
        self,
        x: Tensor,
        known: Tensor,
        *,
        steps: int = 20,
        method: str = "gibbs",
        num_samples: int = 64,
    ) -> Tensor:
        """The z (B, Z) that ``complete`` draws the unknown pixels with (see there)."""
        known = known.bool()
        fill = fill_unknown(x, known, self.decode_mean(self.prior_loc.expand(len(x), -1)))
        if method == "gibbs":
            for step in range(check_count("steps", steps)):
                z = self.encode(fill).sample()
                if step < steps - 1:  # complete() decodes the last z itself
                    fill = fill_unknown(x, known, self.decode(z).sample())
            return z
        if method != "importance":
            raise ValueError(
                f"unknown completion method {method!r}; choose 'gibbs' or 'importance'"
            )
        k = check_count("num_samples", num_samples)
        q = self.encode(fill)
        z = q.sample((k,))  # (K, B, Z)
        try:
            log_known = self.known_log_prob(x, known, z)
        except ValueError as err:  # an autoregressive decoder and a mask it cannot score
            raise ValueError(f"{err}; method='gibbs' completes any mask") from None
        log_w = log_known + self.prior().log_prob(z) - q.log_prob(z)
        pick = dist.Categorical(logits=log_w.T).sample()  # (B,): one z per image, by weight
        return z[pick, torch.arange(len(x), device=z.device)]

    @torch.no_grad()
    def known_log_prob(self, x: Tensor, known: Tensor, z: Tensor) -> Tensor:
        """log p(x_known | z) for x, known (B, *image_shape) and z (..., B, Z): (..., B)."""
        lead, event = z.shape[:-1], x.shape[1:]
        zs = z.reshape(-1, z.shape[-1])
        xs, mask = (t.expand(lead + event).reshape(-1, *event) for t in (x, known.bool()))
        chunk = 256  # images per decoder pass: an autoregressive decoder's output is large
        parts = [
            self.obs(self.decoder(zs[i : i + chunk]), mask[i : i + chunk]).log_prob(
                xs[i : i + chunk]
            )
            for i in range(0, len(zs), chunk)
        ]
        return torch.cat(parts).reshape(lead)
