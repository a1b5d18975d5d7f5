"""Autoregressive image densities (PixelCNN family), optionally class-conditional."""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lvmkit import data as lvdata
from lvmkit.core.checks import check_count
from lvmkit.distributions import (
    OBSERVATIONS,
    AutoregressiveImage,
    observation_class,
)
from lvmkit.models.base import BuiltinModel
from lvmkit.models.common import check_batch, observation_for
from lvmkit.nets import GatedPixelCNN, PixelTransformer, ScanlineRNN

ARCHITECTURES = ("gated", "transformer", "rnn")


@dataclass
class AutoregressiveConfig:
    image_shape: tuple[int, int, int] = (1, 8, 8)
    levels: int | None = None  # pixel levels (from the data when built by name)
    likelihood: str = "categorical"  # "categorical" (k-way softmax) or "logistic" (mixture)
    components: int = 3  # logistic mixture components
    net: str = "gated"  # gated (PixelCNN), transformer (local attention) or rnn (scanline GRU)
    features: int = 60  # feature maps (gated: a multiple of the channels) or token width
    layers: int = 5  # gated layers, transformer blocks or GRU layers
    kernel: int = 3  # gated: convolution size
    window: int = 32  # transformer: how many preceding elements each one attends to
    num_classes: int = 0  # > 0: class-conditional, the batch is (x, y)


def make_net(c: AutoregressiveConfig, params: int, context: int) -> nn.Module:
    """The net of config ``c``: (B, C, H, W), context (B, D) -> (B, params, C, H, W)."""
    if c.net == "gated":
        return GatedPixelCNN(
            c.image_shape[0],
            params,
            features=c.features,
            layers=c.layers,
            kernel=c.kernel,
            context=context,
        )
    if c.net == "transformer":
        return PixelTransformer(
            c.image_shape,
            params,
            width=c.features,
            layers=c.layers,
            window=c.window,
            context=context,
        )
    if c.net == "rnn":
        return ScanlineRNN(
            c.image_shape, params, width=c.features, layers=c.layers, context=context
        )
    raise ValueError(f"unknown net {c.net!r}; choose one of {list(ARCHITECTURES)}")


class AutoregressiveDensity(BuiltinModel):
    """p(x) = prod_i p(x_i | x_<i) over pixels and channels (or p(x | y) for a class y).

    Parameters
    ----------
    config : AutoregressiveConfig, optional
        Its settings, the defaults where None (``lvmkit fit pixelcnn --help`` lists them with
        their meaning).
    """

    config_class = AutoregressiveConfig
    can_sample = True
    can_complete = True
    density = "exact"  # no latent variable: log p(x) in one pass

    @classmethod
    def config_for_data(cls, image_shape, levels, settings):
        config = super().config_for_data(image_shape, levels, settings)
        if config.net == "gated":  # feature maps must split into one group per channel
            c = config.image_shape[0]
            config.features = -(-config.features // c) * c
        return config

    def __init__(self, config: AutoregressiveConfig | None = None):
        super().__init__()
        self.config = c = config or AutoregressiveConfig()
        head = observation_class(c.likelihood)
        if not head.per_element:
            per_element = [name for name, cls in OBSERVATIONS.items() if cls.per_element]
            raise ValueError(
                f"an autoregressive density needs a per-element likelihood, one of {per_element}; "
                f"got {c.likelihood!r}"
            )
        self.head = observation_for(c)
        self.net = make_net(c, self.head.params_per_element, c.num_classes)

    @property
    def data_kind(self) -> str:
        return self.head.data_kind

    def prepare(self, data: lvdata.ImageData):
        """Level data (x,), or (x, y) for a class-conditional model."""
        if data.levels is None:
            raise ValueError(f"{data.name} is continuous; quantize it (lvmkit.data.quantize)")
        if data.levels != self.config.levels:
            data = lvdata.quantize(lvdata.scale(data), self.config.levels)
        if self.config.num_classes:
            if data.y is None:
                raise ValueError("a class-conditional model needs labels; this data has none")
            return data.x, data.y
        return data.x

    def inputs(self, data: lvdata.ImageData) -> tuple[Tensor, ...]:
        """(x,), or (x, y) for a class-conditional model."""
        prepared = self.prepare(data)
        return prepared if self.config.num_classes else (prepared,)

    def _context(self, y: Tensor | None, n: int) -> Tensor | None:
        if not self.config.num_classes:
            return None
        if y is None:
            raise ValueError("a class-conditional model needs the class y of each image")
        return F.one_hot(y.long(), self.config.num_classes).float()

    def distribution(self, y: Tensor | None = None, n: int = 1) -> AutoregressiveImage:
        """p(x | y) for n images, as an AutoregressiveImage with batch shape (n,)."""
        return AutoregressiveImage(self.net, self.head, self._context(y, n), batch_shape=(n,))

    def model(self, x: Tensor | None = None, y: Tensor | None = None, n: int | None = None):
        if x is not None:
            check_batch(self, x, self.config.image_shape)
            n = len(x)
        elif n is None:
            n = len(y) if y is not None else None
            if n is None:
                raise ValueError("pass a batch x, or n (or classes y) to sample")
        pyro.module("autoregressive", self.net)
        with pyro.plate("data", n):
            return pyro.sample("x", self.distribution(y, n), obs=x)

    def guide(self, x=None, y=None, n=None) -> None:
        """No latent variable: fitting is maximum likelihood."""

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Exact log p(x) (or log p(x | y)) per image: (B,)."""
        check_batch(self, x, self.config.image_shape)
        return self.distribution(y, len(x)).log_prob(x)

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None) -> Tensor:
        """n images (n, C, H, W); a class-conditional model cycles the classes unless y is given."""
        check_count("n", n)
        if self.config.num_classes and y is None:
            y = torch.arange(n) % self.config.num_classes
        return self.distribution(y, n).sample()

    @torch.no_grad()
    def complete(self, x: Tensor, known: Tensor, y: Tensor | None = None) -> Tensor:
        """Fill the pixels of x (B, C, H, W) where ``known`` is False; known pixels stay."""
        return self.distribution(y, len(x)).complete(x, known)
