"""Draws seeded by position: every latent value a training step draws comes from uniforms hashed
from (seed, epoch, the datapoint's index in the dataset, the site, the element), not from the
process's random stream. So a datapoint gets the same draws whichever process holds it and
whatever else shares its batch: a fit over N processes equals the 1-process fit with the same
global batch, and a resume on another world size continues exactly.

The uniforms are ``core.rng``'s (the keys are an input of a jit trace). Sites are drawn by
inverse CDF from them: Normal (also wrapped by ``to_event``, ``expand`` or ``mask``),
MultivariateNormal, Uniform, Bernoulli and Categorical, and any of them pushed through
transforms (a flow); reparameterized where the distribution is. Any other site is drawn from
the process's stream, as before (``unseeded`` names them).
"""

from __future__ import annotations

import zlib

import torch
import torch.distributions as tdist
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.poutine.messenger import Messenger
from torch import Tensor

from lvmkit.core.rng import MASK, uniforms
from lvmkit.inference.programs import DATA_PLATE

WRAPPERS = (tdist.Independent, ExpandedDistribution, MaskedDistribution)


class PositionDraws(Messenger):
    """Inside: latent sites take their values from ``keys`` (``draw_keys``); observed, replayed,
    conditioned and enumerated sites are left alone."""

    def __init__(self, keys: Tensor):
        super().__init__()
        self.keys = keys
        self.calls: dict[str, int] = {}  # a site drawn again in one step gets fresh uniforms
        self.unseeded: set[str] = set()

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or msg["value"] is not None or msg["infer"].get("enumerate"):
            return
        fn, name = msg["fn"], msg["name"]
        if not isinstance(fn, tdist.Distribution):  # a plate's subsample, not a latent
            return
        if msg["kwargs"].get("sample_shape"):
            self.unseeded.add(name)
            return
        count = self.calls[name] = self.calls.get(name, 0) + 1
        site = (zlib.crc32(name.encode()) + 7919 * count) & MASK
        shape = fn.batch_shape + fn.event_shape
        dtype = torch.float64 if _dtype(fn) == torch.float64 else torch.float32
        u = uniforms(self.keys, shape, _data_dim(msg, fn), site, dtype)
        value = inverse_cdf(fn, u)
        if value is None:
            self.unseeded.add(name)
        else:
            msg["value"] = value


def _dtype(fn) -> torch.dtype:
    """The floating dtype of a distribution's parameters (float32 when it has none)."""
    while isinstance(fn, WRAPPERS):
        fn = fn.base_dist
    for name in ("loc", "probs", "low"):
        value = getattr(fn, name, None)
        if isinstance(value, Tensor) and value.is_floating_point():
            return value.dtype
    return torch.float32


def _data_dim(msg, fn) -> int | None:
    """The position of the data plate's dim in the site's value shape, or None."""
    for frame in msg["cond_indep_stack"]:
        if frame.name == DATA_PLATE and frame.vectorized:
            return len(fn.batch_shape) + frame.dim
    return None


def inverse_cdf(fn, u: Tensor) -> Tensor | None:
    """A draw of ``fn`` from uniforms ``u`` (its batch + event shape), or None for a
    distribution this module does not know."""
    while isinstance(fn, WRAPPERS):
        fn = fn.base_dist
    if isinstance(fn, tdist.TransformedDistribution):  # a flow: its base's draw, transformed
        value = inverse_cdf(fn.base_dist, u)
        if value is not None:
            for t in fn.transforms:  # t(value), not t._call: log_prob reads the cached pair
                value = t(value)
        return value
    if isinstance(fn, tdist.Normal):
        return fn.loc + fn.scale * torch.special.ndtri(u).to(fn.loc.dtype)
    if isinstance(fn, tdist.MultivariateNormal):
        eps = torch.special.ndtri(u).to(fn.loc.dtype)
        return fn.loc + (fn.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
    if isinstance(fn, tdist.Uniform):
        return fn.low + (fn.high - fn.low) * u.to(fn.low.dtype)
    if isinstance(fn, tdist.Bernoulli):
        return (u.to(fn.probs.dtype) < fn.probs).to(fn.probs.dtype).detach()
    if isinstance(fn, tdist.Categorical):
        cdf = fn.probs.cumsum(-1)
        below = (cdf < u.to(cdf.dtype).unsqueeze(-1)).sum(-1)
        return below.clamp_max(cdf.shape[-1] - 1).detach()
    return None
