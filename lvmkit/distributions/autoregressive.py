"""Autoregressive image likelihoods as Pyro distributions: p(x | h) = prod_i p(x_i | x_<i, h).

Pixels go in raster order and, within a pixel, channel by channel. ``net`` maps an image scaled
to [-1, 1] (and a context h) to every element's parameters in one pass; ``head`` (a categorical
or discretized-logistic observation model) turns parameters into probabilities.
"""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution, constraints
from torch import Tensor

from lvmkit.distributions.observations import CategoricalObs, Observation
from lvmkit.nets.pixelcnn import GatedPixelCNN


class AutoregressiveImage(TorchDistribution):
    """A distribution over images (C, H, W) with values 0..levels-1, usable in any model:
    ``pyro.sample("x", AutoregressiveImage(net, head, context=h), obs=x)``.

    Parameters
    ----------
    net : nn.Module
        (B, C, H, W) in [-1, 1], context (B, D) or None -> parameters (B, P, C, H, W), causal
        in raster-then-channel order (e.g. ``lvmkit.nets.GatedPixelCNN``).
    head : Observation
        The per-element observation model (``make_observation("categorical" | "logistic",
        image_shape, levels=...)``).
    context : Tensor of shape (..., D), optional
        Conditioning vectors (a class one-hot, a latent z); without one, ``batch_shape`` says
        how many images a draw holds.
    batch_shape : tuple of int
        Without a context: the batch of images a draw holds.
    fast : bool
        Sample with the net's own generation cache when it has one (``start_generation``:
        GatedPixelCNN, PixelTransformer, ScanlineRNN): the same draws as one full pass per
        element, at a fraction of the cost.
    known : Tensor of shape (..., C, H, W), optional
        bool: ``log_prob`` then scores the known elements alone, log p(x_known | h), which is
        exact only when they come first in raster-then-channel order (e.g. the top half):
        other masks are refused.
    """

    arg_constraints = {}
    has_rsample = False

    def __init__(
        self,
        net,
        head,
        context: Tensor | None = None,
        batch_shape=(),
        fast: bool = True,
        known: Tensor | None = None,
        validate_args=None,
    ):
        self.net, self.head, self.context, self.fast = net, head, context, fast
        self.known = None if known is None else _check_prefix(known.bool())
        self.levels = head.levels
        batch = context.shape[:-1] if context is not None else torch.Size(batch_shape)
        super().__init__(batch, torch.Size(head.event_shape), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=3)
    def support(self):
        return constraints.independent(constraints.integer_interval(0, self.levels - 1), 3)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        context = None
        if self.context is not None:
            context = self.context.expand(batch_shape + self.context.shape[-1:])
        known = None if self.known is None else self.known.expand(batch_shape + self.event_shape)
        return AutoregressiveImage(
            self.net, self.head, context, batch_shape, self.fast, known, validate_args=False
        )

    def _scaled(self, x: Tensor) -> Tensor:
        return x * (2.0 / (self.levels - 1)) - 1.0

    def params(self, x: Tensor) -> Tensor:
        """Every element's parameters given x (..., C, H, W): (..., P, C, H, W), in one pass."""
        lead = x.shape[:-3]
        context = self.context
        if context is not None:
            lead = torch.broadcast_shapes(lead, context.shape[:-1])
            context = context.expand(lead + context.shape[-1:]).reshape(-1, context.shape[-1])
        x = x.expand(lead + x.shape[-3:]).reshape(-1, *x.shape[-3:])
        out = self.net(self._scaled(x), context)
        return out.reshape(lead + out.shape[1:])

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        p = self.params(value)
        return self.head(p.flatten(-4), self.known).log_prob(value)

    @torch.no_grad()
    def sample(self, sample_shape=()) -> Tensor:
        """Pixel by pixel, channel by channel: with the net's generation cache when ``fast``
        and it has one, else one full pass of the net per element."""
        shape = self._extended_shape(torch.Size(sample_shape))
        x = torch.zeros(shape, device=self._device())
        return self._fill(x, torch.zeros(shape, dtype=torch.bool, device=x.device))

    @torch.no_grad()
    def complete(self, x: Tensor, known: Tensor) -> Tensor:
        """Sample the elements where ``known`` is False given the others; known ones stay."""
        return self._fill(torch.where(known, x, torch.zeros_like(x)), known.bool())

    def _fill(self, x: Tensor, known: Tensor) -> Tensor:
        """The unknown elements of x drawn in raster-then-channel order: with the net's own
        generation cache (``net.start_generation``) when ``fast``, else one full pass of the net
        per element. Both draw the same values (up to float rounding of the parameters)."""
        lead, (c, h, w) = x.shape[:-3], self.event_shape
        x = x.reshape(-1, c, h, w)
        known = known.expand(lead + (c, h, w)).reshape(-1, c, h, w)
        context = self.context
        if context is not None:
            context = context.expand(lead + context.shape[-1:]).reshape(-1, context.shape[-1])
        fast = self.fast and hasattr(self.net, "start_generation")
        generation = self.net.start_generation(self._scaled(x), context) if fast else None
        for t in range(c * h * w):
            i, rest = divmod(t, w * c)
            j, k = divmod(rest, c)
            todo = ~known[:, k, i, j]
            needed = bool(todo.any())
            if fast:
                params = generation.step(t, needed)
            elif needed:
                params = self.net(self._scaled(x), context)[:, :, k, i, j]  # (B, P)
            if needed:
                draw = self.head.element(params).sample().to(x.dtype)
                x[:, k, i, j] = torch.where(todo, draw, x[:, k, i, j])
            if fast:
                generation.write(t, self._scaled(x[:, k, i, j]))
        return x.reshape(lead + (c, h, w))

    def _device(self):
        return next(self.net.parameters()).device


def _check_prefix(known: Tensor) -> Tensor:
    """``known`` if, in every image, the known elements precede the unknown ones in raster-then-
    channel order; a ValueError otherwise (their marginal would not be a product of the net's
    conditionals)."""
    order = known.movedim(-3, -1).flatten(-3)  # (..., H*W*C) in generation order
    if (order[..., 1:] & ~order[..., :-1]).any():
        raise ValueError(
            "an autoregressive likelihood gives p(known pixels | h) exactly only when the known "
            "pixels come first in raster order (e.g. the top half of the image); this mask has "
            "known pixels after unknown ones"
        )
    return known


class AutoregressiveObs(Observation):
    """The observation model p(x | h) = AutoregressiveImage(net, head, context=h): a gated
    PixelCNN over the levels, conditioned on an LVM decoder's output h (a PixelCNN decoder).
    It owns its net (``.net``), which the model registers with ``pyro.module``.

    Parameters
    ----------
    event_shape : tuple of (int, int, int)
    levels : int, optional
    ar_features, ar_layers : int
        The PixelCNN's feature maps and gated layers.
    ar_context : int
        Size of h.
    """

    name = "pixelcnn"
    data_kind = "levels"

    def __init__(
        self,
        event_shape,
        levels: int | None = None,
        ar_features: int = 32,
        ar_layers: int = 3,
        ar_context: int = 32,
    ):
        super().__init__(event_shape)
        self.head = CategoricalObs(event_shape, levels)
        self.levels, self.context = self.head.levels, ar_context
        c = event_shape[0]
        self.net = GatedPixelCNN(
            c,
            self.head.params_per_element,
            layers=ar_layers,
            features=-(-ar_features // c) * c,  # one group of feature maps per channel
            context=ar_context,
        )

    @property
    def num_params(self) -> int:
        """The decoder's output h, of this size, conditions the net."""
        return self.context

    def __call__(self, h: Tensor, mask: Tensor | None = None) -> AutoregressiveImage:
        """p(x|h); with ``mask``, log_prob is log p(x where mask | h), for masks whose True
        elements come first in raster order."""
        return AutoregressiveImage(self.net, self.head, context=h, known=mask)

    def mean(self, h: Tensor) -> Tensor:
        """A draw stands in for E[x|h] (which would sum over every image): for pictures."""
        return self(h).sample()

    def check(self, x: Tensor) -> None:
        self.head.check(x)
