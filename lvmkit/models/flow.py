"""A normalizing-flow density of images: x = f^-1(z), z standard normal, log p(x) exact by the
change of variables. Fitted to dequantized pixels, so its bits/dim bound the discrete
likelihood's, on the data's own level scale (256 for 8-bit images)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

from lvmkit import data as lvdata
from lvmkit.core.checks import check_count, check_number
from lvmkit.models.base import BuiltinModel, prepare_unit_pixels
from lvmkit.models.common import check_batch
from lvmkit.nets.flows import Logit, MultiScaleFlow

START_IMAGES = 512  # how many training images set the ActNorm layers' start


@dataclass
class FlowConfig:
    image_shape: tuple[int, int, int] = (1, 8, 8)
    # each scale but the last squeezes (the sides halve) and sets half its channels aside
    scales: int = 2
    steps: int = 4  # coupling steps per scale and mask kind (checkerboard, channel)
    hidden: int = 64  # feature maps of each coupling's conv net
    alpha: float = 0.05  # pixels p are modelled as logit(alpha + (1 - 2 alpha) p) (RealNVP)


class FlowImage(dist.TorchDistribution):
    """p(x) of a ``NormalizingFlow`` for a batch of n images: event shape (C, H, W)."""

    support = constraints.unit_interval
    arg_constraints: dict = {}

    def __init__(self, flow: NormalizingFlow, n: int, validate_args=None):
        self.flow = flow
        super().__init__(torch.Size([n]), flow.config.image_shape, validate_args=validate_args)

    def log_prob(self, x: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(x)
        return self.flow.log_prob(x)

    def sample(self, sample_shape=()) -> Tensor:
        sample_shape = torch.Size(sample_shape)
        n = math.prod(sample_shape) * self.batch_shape[0]
        return self.flow.sample(n).reshape(*sample_shape, *self.batch_shape, *self.event_shape)


class NormalizingFlow(BuiltinModel):
    """RealNVP/Glow-style multi-scale flow (``nets.flows.MultiScaleFlow`` after a logit):
    p(x) = N(f(x); 0, I) ``|det df/dx|``, no latent variable to infer, so fitting is maximum
    likelihood and the density of dequantized pixels is exact (``evaluate`` averages it over
    dequantizations: a bound on the discrete likelihood).

    Parameters
    ----------
    config : FlowConfig, optional
        Its settings, the defaults where None (``lvmkit fit flow --help`` lists them with
        their meaning).
    """

    config_class = FlowConfig
    can_sample = True
    density = "exact"
    data_kind = "continuous"

    def __init__(self, config: FlowConfig | None = None):
        super().__init__()
        self.config = c = config or FlowConfig()
        check_count("scales", c.scales)
        check_count("steps", c.steps)
        check_count("hidden", c.hidden)
        if not 0 < check_number("alpha", c.alpha) < 0.5:
            raise ValueError(f"alpha must lie in (0, 0.5), got {c.alpha}")
        channels, h, w = c.image_shape
        side = 2 ** (c.scales - 1)
        if h % side or w % side:
            fits = max(k for k in range(1, c.scales) if h % 2 ** (k - 1) == w % 2 ** (k - 1) == 0)
            raise ValueError(
                f"a flow with scales = {c.scales} halves the image sides {c.scales - 1} times, "
                f"so they must be divisible by {side}; ({h}, {w}) is not: set scales = {fits}, "
                "or crop or pad the images"
            )
        self.logit = Logit(c.alpha)
        self.net = MultiScaleFlow(c.image_shape, c.scales, c.steps, c.hidden)
        self.z_shapes = self.net.shapes(c.image_shape)
        self.register_buffer("started", torch.tensor(False))  # saved: a resumed run knows

    def prepare(self, data: lvdata.ImageData) -> lvdata.ImageData:
        """Pixels in [0, 1]: discrete data dequantized (a fresh draw every batch)."""
        return prepare_unit_pixels(data, "a flow")

    def initialize(self, data, *, seed: int = 0) -> NormalizingFlow:
        """The ActNorm layers start standardizing the first ``START_IMAGES`` images of the
        (prepared) training data, at their bins' centres: the same start in every process."""
        x = data.pixels() if hasattr(data, "pixels") else data
        if len(x) == 0 or x.min() < 0 or x.max() > 1:
            raise ValueError(
                "initialize takes the prepared training data, pixels in [0, 1]: "
                "flow.initialize(flow.prepare(train))"
            )
        param = next(self.parameters())
        y, _ = self.logit(x[:START_IMAGES].to(param))
        self.net.start_at(y)
        self.started.fill_(True)
        return self

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log p(x) per image (B,), x (B, C, H, W) in [0, 1]."""
        check_batch(self, x, self.config.image_shape)
        y, log_det = self.logit(x)
        zs, flow_log_det = self.net(y)
        base = sum(dist.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1) for z in zs)
        return base + log_det + flow_log_det

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """n images (n, C, H, W) in [0, 1]."""
        check_count("n", n)
        param = next(self.parameters())
        zs = [torch.randn(n, *shape, dtype=param.dtype, device=param.device)
              for shape in self.z_shapes]  # fmt: skip
        return self.logit.inverse(self.net.inverse(zs)).clamp(0, 1)

    def model(self, x: Tensor | None = None, n: int | None = None):
        if x is None and n is None:
            raise ValueError("pass a batch x, or n to sample n images")
        n = len(x) if x is not None else n
        if self.training and not self.started and torch.is_grad_enabled():
            # it trains from ActNorm's identity start too, but more slowly and less stably
            warnings.warn(
                "the flow's ActNorm layers were never started on training images: call "
                "flow.initialize(flow.prepare(train)) before fitting (lvmkit fit does)",
                stacklevel=2,
            )
        pyro.module("flow", self)
        with pyro.plate("data", n):
            return pyro.sample("x", FlowImage(self, n), obs=x)

    def guide(self, x=None, n=None) -> None:
        """No latent variable: fitting is maximum likelihood."""
