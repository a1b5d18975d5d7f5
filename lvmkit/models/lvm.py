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
from lvmkit.models.latents import (
    GUIDES,
    PRIORS,
    InverseAutoregressiveFlow,
    MixturePrior,
    VampPrior,
)
from lvmkit.nets import MLP


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
    # p(z): "normal" is N(0, I); "mog" a mixture of prior_components Gaussians, all learned;
    # "vamp" the VampPrior (Tomczak & Welling 2018): the mean of q(z|u_k) over
    # prior_components learned pseudo-inputs u_k, started at training images. With top_dim,
    # the prior of the top layer z2.
    prior: str = "normal"
    prior_components: int = 50  # pseudo-inputs (vamp) or Gaussians (mog)
    # q(z|x): "gaussian" (diagonal) or "iaf": that Gaussian followed by flow_steps inverse
    # autoregressive flow steps conditioned on the encoder (Kingma et al. 2016)
    guide: str = "gaussian"
    flow_steps: int = 2  # IAF steps of guide = "iaf"
    # dims of a second latent layer z2 above z: p(z2) p(z|z2) p(x|z), inferred bottom-up as
    # q(z|x) q(z2|z) (Burda et al. 2016's two-layer model); 0 is one layer
    top_dim: int = 0
    top_hidden: tuple[int, ...] = (100, 100)  # hidden widths of the nets of q(z2|z), p(z|z2)


class GaussianLVM(BuiltinModel):
    """p(z) = N(0, I);  p(x|z) = obs(decoder(z));  q(z|x) = N(mu(x), diag sigma(x)^2).

    ``model(x)`` scores a batch ``(B, *image_shape)``; ``model(n=16)`` samples the prior predictive.
    ``beta`` and ``free_bits`` change the objective in training mode only: ``lvm.eval()`` makes
    the model the exact p(x, z), e.g. for likelihood estimates. ``prior``, ``guide`` and
    ``top_dim`` swap in a learned prior, a flow posterior and a second latent layer z2 (site
    "z2", above site "z").

    Parameters
    ----------
    config : GaussianLVMConfig, optional
        Its settings, the defaults where None (``lvmkit fit lvm --help`` lists them with
        their meaning).
    """

    config_class = GaussianLVMConfig
    can_sample = True
    can_complete = True
    can_reconstruct = True
    can_encode = True
    posterior_guide = True
    gaussian_code = True  # per instance: False with a learned prior, a flow or two layers

    def __init__(self, config: GaussianLVMConfig | None = None):
        super().__init__()
        self.config = config = config or GaussianLVMConfig()
        _check_latents(config)
        plain = config.prior == "normal" and config.guide == "gaussian" and not config.top_dim
        self.gaussian_code = plain
        self.obs = observation_for(config)
        self.ar_net = self.obs.net  # a PixelCNN decoder's own net, or None
        z, top = config.z_dim, config.top_dim
        flow = config.guide == "iaf"
        q_out = 2 * z + (2 * z if flow else 0)  # loc, scale (and a flow's context) of q(z|..)
        self.encoder = make_encoder(config.net, config.image_shape, config.hidden, q_out)
        self.up = None  # q(z2|z) of a second layer
        if top:
            self.up = MLP(z, config.top_hidden, 2 * top)
            self.top_decoder = MLP(top, config.top_hidden, 2 * z)  # p(z|z2)
        self.flow = InverseAutoregressiveFlow(z, 2 * z, config.flow_steps, 4 * z) if flow else None
        prior_dim = top or z
        self.prior_net = None  # a learned prior's parameters
        if config.prior == "mog":
            self.prior_net = MixturePrior(prior_dim, config.prior_components)
        elif config.prior == "vamp":
            self.prior_net = VampPrior(config.image_shape, config.prior_components)
        self.decoder = make_decoder(config.net, config.z_dim, config.hidden, self.obs)
        # Buffers, so the prior follows the module's device and dtype.
        self.register_buffer("prior_loc", torch.zeros(prior_dim))
        self.register_buffer("prior_scale", torch.ones(prior_dim))
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))  # for warm-up

    def initialize(self, data, *, seed: int = 0) -> GaussianLVM:
        """A VampPrior's pseudo-inputs start at training images (prepared ImageData)."""
        if self.config.prior == "vamp":
            x = data.pixels() if hasattr(data, "pixels") else data
            self.prior_net.start_at(x, torch.Generator().manual_seed(seed))
        return self

    def _n(self, x: Tensor | None, n: int | None) -> int:
        if x is None:
            if n is None:
                raise ValueError("pass a batch x, or n to sample n datapoints from the prior")
            return n
        check_batch(self, x, self.config.image_shape)
        check_support(self.obs, x)
        return len(x)

    def _top_q(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """loc, scale (B, Z) of the encoder's Gaussian over z (before any flow steps); with
        two layers, of q(z2 | z) at z = that Gaussian's mean: (B, top_dim). What the
        VampPrior puts at each pseudo-input."""
        loc, scale = gaussian_params(self.encoder(x)[..., : 2 * self.config.z_dim])
        return gaussian_params(self.up(loc)) if self.config.top_dim else (loc, scale)

    def prior(self) -> dist.Distribution:
        """p(z), or p(z2) with a second layer: event shape (Z,) (or (top_dim,))."""
        if self.config.prior == "vamp":
            return self.prior_net(self._top_q)
        if self.config.prior == "mog":
            return self.prior_net()
        return dist.Normal(self.prior_loc, self.prior_scale).to_event(1)

    def _q(self, h: Tensor) -> dist.Distribution:
        """q(z|...) from the encoder output h (B, 2Z (+ 2Z context for a flow))."""
        z = self.config.z_dim
        loc, scale = gaussian_params(h[..., : 2 * z])
        if self.flow is None:
            return dist.Normal(loc, scale).to_event(1)
        return self.flow(loc, scale, h[..., 2 * z :])

    def _z_given_top(self, z2: Tensor) -> dist.Distribution:
        """p(z | z2)."""
        return dist.Normal(*gaussian_params(self.top_decoder(z2))).to_event(1)

    def decode(self, z: Tensor) -> dist.Distribution:
        """p(x|z) for z (B, Z): a distribution with event shape ``image_shape``."""
        return self.obs(self.decoder(z))

    @torch.no_grad()
    def decode_mean(self, z: Tensor) -> Tensor:
        """E[x|z] for z (B, Z): ``(B, *image_shape)`` (a draw for a PixelCNN decoder)."""
        return self.obs.mean(self.decoder(z))

    def encode(self, x: Tensor) -> dist.Distribution:
        """q(z|x) for a batch, event shape (Z,): a diagonal Normal, or a ``FlowPosterior``
        (with two layers too: z is the layer next to x)."""
        check_batch(self, x, self.config.image_shape)
        return self._q(self.encoder(x))

    def _kl_weight(self) -> float | Tensor:
        """beta; during the KL warm-up a tensor rising linearly from ~0, computed from the step
        counter as a tensor so that a traced step (``fit(jit=True)``) follows it."""
        if self.training and self.config.kl_warmup_steps:
            warm = (self.train_steps / self.config.kl_warmup_steps).clamp(max=1.0)
            return (self.config.beta * warm).clamp(min=1e-6)  # Pyro's scale must be positive
        return self.config.beta

    def _z_site(self):
        """How the z sites count in the objective: as they are in eval mode; while training,
        scaled by the KL weight, or left out under free bits (their penalty stands in)."""
        if self.training and self.config.free_bits > 0:
            return poutine.mask(mask=False)
        beta = self._kl_weight()
        if self.training and (isinstance(beta, Tensor) or beta != 1):
            return poutine.scale(scale=beta)
        return nullcontext()

    def _register(self, *names: str) -> None:
        for name in names:
            module = getattr(self, name)
            if module is not None:
                pyro.module(name, module)

    def model(self, x: Tensor | None = None, n: int | None = None) -> Tensor:
        n = self._n(x, n)
        self._register("decoder", "ar_net", "prior_net")
        if self.config.top_dim:
            self._register("top_decoder")
        if self.config.prior == "vamp":
            self._register("encoder", "up")  # the prior is q at the pseudo-inputs
        if self.training and x is not None and torch.is_grad_enabled():
            self.train_steps += 1  # counts gradient steps (evaluation runs without gradients)
        with pyro.plate("data", n):
            with self._z_site():
                if self.config.top_dim:
                    z2 = pyro.sample("z2", self.prior())
                    z = pyro.sample("z", self._z_given_top(z2))
                else:
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
        self._register("encoder", "flow", "up")
        with pyro.plate("data", len(x)), self._z_site():
            z = pyro.sample("z", self._q(self.encoder(x)))
            if self.config.top_dim:
                pyro.sample("z2", dist.Normal(*gaussian_params(self.up(z))).to_event(1))
            return z

    @torch.no_grad()
    def sample_z(self, n: int) -> Tensor:
        """n draws of z (n, Z) from p(z) (through p(z2) with two layers)."""
        z = self.prior().sample((check_count("n", n),))
        return self._z_given_top(z).sample() if self.config.top_dim else z

    @torch.no_grad()
    def sample(self, n: int, *, mean: bool = False) -> Tensor:
        """n draws from p(x); ``mean=True`` gives E[x|z] for z ~ p(z) instead."""
        z = self.sample_z(n)
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
        """x ``(B, *image_shape)`` with the elements where ``known`` is False filled in; known ones
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
        if method == "importance" and self.config.top_dim:
            raise ValueError(
                "method='importance' weighs z by p(z), which a two-layer model (top_dim) has "
                "in no closed form; method='gibbs' completes with it"
            )
        start = self.prior().mean if self.config.prior != "normal" else self.prior_loc
        if self.config.top_dim:
            start = self._z_given_top(start).mean
        fill = fill_unknown(x, known, self.decode_mean(start.expand(len(x), -1)))
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
        """log p(x_known | z) for x, known ``(B, *image_shape)`` and z (..., B, Z): (..., B)."""
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


def _check_latents(config: GaussianLVMConfig) -> None:
    """ValueError for latent settings that cannot work, saying what to set."""
    for name in ("prior_components", "flow_steps", "top_dim"):  # ints; their ranges below
        check_count(name, getattr(config, name), minimum=-(2**31))
    if config.prior not in PRIORS:
        raise ValueError(f"unknown prior {config.prior!r}; choose one of {list(PRIORS)}")
    if config.guide not in GUIDES:
        raise ValueError(f"unknown guide {config.guide!r}; choose one of {list(GUIDES)}")
    if config.prior != "normal" and config.prior_components < 1:
        what = "pseudo-inputs" if config.prior == "vamp" else "components"
        raise ValueError(
            f"prior={config.prior!r} with prior_components={config.prior_components} has no "
            f"{what}: set prior_components >= 1 (500 in Tomczak & Welling 2018)"
        )
    if config.guide == "iaf" and config.flow_steps < 1:
        raise ValueError(
            f"guide='iaf' with flow_steps={config.flow_steps} is a flow with no steps: set "
            "flow_steps >= 1, or guide='gaussian'"
        )
    if config.top_dim < 0:
        raise ValueError(f"top_dim={config.top_dim}: give 0 (one layer) or the dims of z2")
    plain = config.prior == "normal" and config.guide == "gaussian" and not config.top_dim
    if config.free_bits > 0 and not plain:
        raise ValueError(
            "free_bits counts each dim's closed-form KL(q(z_j|x) || N(0, 1)), which a learned "
            "prior, a flow posterior or a second layer does not have: set free_bits = 0 (use "
            "kl_warmup_steps to anneal the KL instead)"
        )
