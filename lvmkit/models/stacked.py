"""A stack of denoising autoencoders trained greedily, layer by layer (Bengio et al. 2007;
Vincent et al. 2010), and the classifier it can initialise (``lvmkit.diagnostics.
compare_pretraining`` measures what that start is worth)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lvmkit import data as lvdata
from lvmkit.core.checks import check_count, check_number
from lvmkit.models.base import BuiltinModel
from lvmkit.models.common import check_batch

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}


class DenoisingLayer(nn.Module):
    """One layer of the stack: h = sigmoid(W x~ + b) from x with a ``noise`` share of its
    inputs zeroed; x^ = sigmoid(W' h + b'). ``loss``: the cross-entropy of x^ to the clean x
    in [0, 1], per datapoint."""

    def __init__(self, inputs: int, outputs: int, noise: float):
        super().__init__()
        self.encode, self.decode = nn.Linear(inputs, outputs), nn.Linear(outputs, inputs)
        self.noise = noise

    def loss(self, x: Tensor) -> Tensor:
        kept = x * (torch.rand_like(x) >= self.noise) if self.training else x
        logits = self.decode(torch.sigmoid(self.encode(kept)))
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)


@dataclass
class StackedConfig:
    image_shape: tuple[int, ...] = (1, 8, 8)
    widths: tuple[int, ...] = (256, 256)  # the layers, bottom first
    noise: float = 0.25  # share of each layer's inputs zeroed while training


class StackedDenoisingAutoencoder(BuiltinModel):
    """A stack of DenoisingLayers (Vincent et al. 2010), trained greedily: each layer
    reconstructs the codes of the layers below, which it sees as fixed data (detached), so no
    gradient crosses a layer; all layers step together, each on the current codes below (the
    sequential schedule, bottom layer to convergence first, gives the same fixed point). The
    representation is the top layer's code.

    Parameters
    ----------
    config : StackedConfig, optional
        Its settings, the defaults where None (``lvmkit fit sdae --help`` lists them with
        their meaning).
    """

    config_class = StackedConfig
    can_encode = True
    density = None
    data_kind = "continuous"

    def __init__(self, config: StackedConfig | None = None):
        super().__init__()
        self.config = c = config or StackedConfig()
        check_number("noise", c.noise, positive=False)
        if not c.noise < 1:
            raise ValueError(f"noise must be below 1 (the share of inputs zeroed), got {c.noise}")
        sizes = [math.prod(c.image_shape), *(check_count("width", w) for w in c.widths)]
        if len(sizes) < 2:
            raise ValueError("widths must name at least one layer, e.g. widths = [256, 256]")
        self.layers = nn.ModuleList(
            DenoisingLayer(a, b, c.noise) for a, b in zip(sizes, sizes[1:], strict=False)
        )

    def prepare(self, data: lvdata.ImageData) -> lvdata.ImageData:
        """Pixels in [0, 1]."""
        return lvdata.scale(data) if data.levels is not None else data

    def model(self, x: Tensor | None = None) -> None:
        if x is None:
            raise ValueError("a stack of autoencoders has no generative model; pass x")
        check_batch(self, x, self.config.image_shape)
        pyro.module("stack", self)
        codes, total = x.flatten(1), 0
        for layer in self.layers:
            total = total + layer.loss(codes)
            codes = torch.sigmoid(layer.encode(codes)).detach()  # data for the layer above
        with pyro.plate("data", len(x)):
            pyro.factor("reconstructions", -total)

    def guide(self, x: Tensor | None = None) -> None:
        """No latent variable: the loss is the model's factor."""

    def codes(self, x: Tensor) -> list[Tensor]:
        """Every layer's code of x ``(B, *image_shape)``, bottom first."""
        out, h = [], x.flatten(1)
        for layer in self.layers:
            h = torch.sigmoid(layer.encode(h))
            out.append(h)
        return out

    def encode(self, x: Tensor) -> dist.Distribution:
        """The top layer's code (B, widths[-1]) as a point mass."""
        check_batch(self, x, self.config.image_shape)
        return dist.Delta(self.codes(x)[-1]).to_event(1)


class Classifier(nn.Module):
    """x (B, D) -> ``widths`` hidden layers (``activation``) -> class logits, as a Pyro
    program p(y | x) = Categorical(logits) for ``lvmkit.fit`` (maximum likelihood)."""

    def __init__(self, inputs: int, widths: tuple[int, ...], classes: int, activation: str):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; choose one of {list(ACTIVATIONS)}"
            )
        sizes = [inputs, *widths]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:], strict=False))
        self.act = ACTIVATIONS[activation]()
        self.out = nn.Linear(sizes[-1], classes)

    def codes(self, x: Tensor) -> Tensor:
        """The top hidden layer's activations (B, widths[-1])."""
        for layer in self.hidden:
            x = self.act(layer(x))
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.codes(x))

    def model(self, x: Tensor, y: Tensor) -> None:
        pyro.module("classifier", self)
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Categorical(logits=self(x)), obs=y)

    def guide(self, x: Tensor, y: Tensor) -> None:
        """No latent variable."""
