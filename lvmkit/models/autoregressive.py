"""Autoregressive image densities (PixelCNN family), optionally class-conditional."""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lvmkit import data as lvdata
from lvmkit.distributions import AutoregressiveImage, make_observation
from lvmkit.models.common import check_batch
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
    layers: int = 5
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


class AutoregressiveDensity(nn.Module):
    """p(x) = prod_i p(x_i | x_<i) over pixels and channels (or p(x | y) for a class y)."""

    has_latents = False  # log p(x) is exact: no importance sampling needed

    def __init__(self, config: AutoregressiveConfig | None = None):
        super().__init__()
        self.config = c = config or AutoregressiveConfig()
        if c.likelihood not in ("categorical", "logistic"):
            raise ValueError(
                "an autoregressive density needs likelihood 'categorical' or "
                f"'logistic', got {c.likelihood!r}"
            )
        self.head = make_observation(
            c.likelihood, c.image_shape, levels=c.levels, components=c.components
        )
        self.net = make_net(c, self.head.params_per_element, c.num_classes)

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

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None) -> Tensor:
        """n images (n, C, H, W); a class-conditional model cycles the classes unless y is given."""
        if self.config.num_classes and y is None:
            y = torch.arange(n) % self.config.num_classes
        return self.distribution(y, n).sample()

    @torch.no_grad()
    def complete(self, x: Tensor, known: Tensor, y: Tensor | None = None) -> Tensor:
        """Fill the pixels of x (B, C, H, W) where ``known`` is False; known pixels stay."""
        return self.distribution(y, len(x)).complete(x, known)
