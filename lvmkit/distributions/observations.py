"""Observation models p(x | h): map a decoder's flat output h (B, num_params) to a distribution
over x with event shape ``event_shape`` ((C, H, W) for images, (D,) for vectors).

Each knows how many numbers it needs from the decoder, checks that data lie in its support (with
a message saying what to do instead), and gives the expected value E[x | h] for pictures.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.infer.util import is_validation_enabled
from torch import Tensor
from torch.distributions.transforms import ReshapeTransform
from torch.nn import functional as F

from lvmkit.distributions.logistic import DiscretizedLogisticMixture


class Observation:
    """Base class. ``params_per_element`` numbers per data element, laid out parameter-major:
    ``h.view(B, params_per_element, *event_shape)``.

    A subclass declares its ``name`` (in ``likelihoods.OBSERVATIONS``), the data it scores
    (``data_kind``: "continuous" reals, "binary" 0/1, or integer "levels"), and whether it scores
    one element at a time from its parameters (``per_element``: an ``element(params)`` method,
    which autoregressive likelihoods need).

    Parameters
    ----------
    event_shape : tuple of int
        One datapoint's shape.
    """

    name = ""
    params_per_element = 1
    data_kind = "continuous"
    per_element = False
    net = None  # a module of its own (an autoregressive net), which the model registers

    def __init__(self, event_shape: tuple[int, ...]):
        self.event_shape = tuple(event_shape)
        self.numel = math.prod(self.event_shape)

    @property
    def num_params(self) -> int:
        return self.params_per_element * self.numel

    @property
    def _param_dim(self) -> int:
        return -len(self.event_shape) - 1

    def _split(self, h: Tensor) -> Tensor:
        """(B, num_params) -> ``(B, params_per_element, *event_shape)``."""
        return h.reshape(h.shape[:-1] + (self.params_per_element,) + self.event_shape)

    def _fold(self, base: dist.Distribution, mask: Tensor | None) -> dist.Distribution:
        if mask is not None:
            base = base.mask(mask)
        return base.to_event(len(self.event_shape))

    def __call__(self, h: Tensor, mask: Tensor | None = None) -> dist.Distribution:
        """p(x|h); ``mask`` ``(B, *event_shape)`` bool scores only the elements where it is True."""
        raise NotImplementedError

    def mean(self, h: Tensor) -> Tensor:
        """E[x | h]: ``(B, *event_shape)``."""
        raise NotImplementedError

    def check(self, x: Tensor) -> None:
        """ValueError if x is outside the support (run only while Pyro validation is on)."""


class GaussianObs(Observation):
    """N(loc(h), diag scale(h)^2), the scale floored at ``min_scale``."""

    name = "gaussian"
    params_per_element = 2

    def __init__(self, event_shape, min_scale: float = 0.03):
        super().__init__(event_shape)
        self.min_scale = min_scale

    def _params(self, h):
        loc, raw_scale = self._split(h).unbind(self._param_dim)
        return loc, F.softplus(raw_scale) + self.min_scale

    def __call__(self, h, mask=None):
        loc, scale = self._params(h)
        return self._fold(dist.Normal(loc, scale), mask)

    def mean(self, h):
        return self._params(h)[0]


class LowRankGaussianObs(Observation):
    """N(loc(h), W(h) W(h)^T + diag d(h)) over the flattened data: a covariance of ``rank``
    directions plus a floored diagonal. For vector data; images are flattened and reshaped."""

    name = "lowrank"

    def __init__(self, event_shape, rank: int = 2, min_scale: float = 0.03):
        super().__init__(event_shape)
        self.rank, self.min_scale = rank, min_scale

    @property
    def num_params(self) -> int:
        return self.numel * (2 + self.rank)

    def _params(self, h):
        d, r = self.numel, self.rank
        loc, factor, raw = h[..., :d], h[..., d : d + d * r], h[..., d + d * r :]
        diag = (F.softplus(raw) + self.min_scale) ** 2
        return loc, factor.reshape(h.shape[:-1] + (d, r)), diag

    def __call__(self, h, mask=None):
        if mask is not None:
            raise ValueError(
                "the lowrank likelihood cannot score a subset of elements; use gaussian"
            )
        loc, factor, diag = self._params(h)
        base = dist.LowRankMultivariateNormal(loc, factor, diag)
        if len(self.event_shape) == 1:
            return base
        return dist.TransformedDistribution(base, ReshapeTransform((self.numel,), self.event_shape))

    def mean(self, h):
        return self._params(h)[0].reshape(h.shape[:-1] + self.event_shape)


class BernoulliObs(Observation):
    """Independent Bernoulli(logits(h)) for binary data."""

    name = "bernoulli"
    data_kind = "binary"

    def __call__(self, h, mask=None):
        return self._fold(dist.Bernoulli(logits=self._split(h).squeeze(self._param_dim)), mask)

    def mean(self, h):
        return torch.sigmoid(self._split(h).squeeze(self._param_dim))

    def check(self, x):
        if not ((x == 0) | (x == 1)).all():
            raise ValueError(
                f"a Bernoulli observation model needs binary data (0/1), but the values lie in "
                f"[{float(x.min())}, {float(x.max())}]: binarize the data "
                "(lvmkit.data.binarize) or use the 'categorical' or 'logistic' likelihood"
            )


class _LevelsObs(Observation):
    data_kind = "levels"
    per_element = True

    def __init__(self, event_shape, levels: int | None = None):
        super().__init__(event_shape)
        if levels is None or levels < 2:
            raise ValueError(f"a '{self.name}' likelihood needs levels >= 2, got {levels!r}")
        self.levels = levels

    def check(self, x):
        if not ((x >= 0) & (x <= self.levels - 1) & (x == x.round())).all():
            raise ValueError(
                f"a {self.levels}-level '{self.name}' observation model needs integer pixels in "
                f"0..{self.levels - 1}, but the values lie in [{float(x.min())}, "
                f"{float(x.max())}]: pass unscaled level data, or build the model for its levels"
            )


class CategoricalObs(_LevelsObs):
    """A k-way softmax per element over the values 0..levels-1 (256-way for 8-bit data)."""

    name = "categorical"

    @property
    def params_per_element(self):
        return self.levels

    def _logits(self, h):
        return self._split(h).movedim(self._param_dim, -1)  # (B, *event, k)

    def __call__(self, h, mask=None):
        return self._fold(dist.Categorical(logits=self._logits(h)), mask)

    def element(self, params: Tensor) -> dist.Distribution:
        """One element's distribution from its parameters (..., levels)."""
        return dist.Categorical(logits=params)

    def mean(self, h):
        values = torch.arange(self.levels, dtype=h.dtype, device=h.device)
        return (self._logits(h).softmax(-1) * values).sum(-1)


class LogisticObs(_LevelsObs):
    """A mixture of ``components`` discretized logistics per element over 0..levels-1."""

    name = "logistic"

    def __init__(self, event_shape, levels: int | None = None, components: int = 1):
        super().__init__(event_shape, levels)
        self.components = components

    @property
    def params_per_element(self):
        return 3 * self.components

    def _params(self, h):
        return self._mixture(self._split(h).movedim(self._param_dim, -1))  # (B, *event, 3M)

    def _mixture(self, p: Tensor):
        logits, raw_loc, raw_scale = p.chunk(3, dim=-1)
        half = (self.levels - 1) / 2
        # Decoder outputs of order 1 then cover the whole level range.
        return logits, half * (1 + raw_loc), half * F.softplus(raw_scale) + 0.05

    def __call__(self, h, mask=None):
        return self._fold(DiscretizedLogisticMixture(*self._params(h), self.levels), mask)

    def element(self, params: Tensor) -> DiscretizedLogisticMixture:
        """One element's distribution from its parameters (..., 3 * components)."""
        return DiscretizedLogisticMixture(*self._mixture(params), self.levels)

    def mean(self, h):
        return DiscretizedLogisticMixture(*self._params(h), self.levels).mean


def check_support(obs: Observation, x: Tensor) -> None:
    """Support check of the data, when Pyro's validation is on (fit turns it off on most steps).

    Parameters
    ----------
    obs : Observation
    x : Tensor
    """
    if is_validation_enabled():
        obs.check(x)
