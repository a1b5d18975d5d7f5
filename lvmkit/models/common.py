"""Pieces the image models share: nets by name, observation models from configs, shape checks."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lvmkit.distributions import Observation, make_observation
from lvmkit.nets import MLP, ConvDecoder, ConvEncoder

NETS = ("mlp", "conv")


def make_encoder(net: str, image_shape, hidden: tuple[int, ...], out_features: int, *,
                 activation: type[nn.Module] = nn.ReLU) -> nn.Module:  # fmt: skip
    """(B, C, H, W) -> (B, out_features)."""
    if net == "mlp":
        flat = math.prod(image_shape)
        return nn.Sequential(nn.Flatten(), MLP(flat, hidden, out_features, activation=activation))
    if net == "conv":
        if not hidden:
            raise ValueError("net 'conv' needs a hidden width (hidden = [64]); give one")
        return ConvEncoder(image_shape, out_features, hidden=hidden[-1], activation=activation)
    raise ValueError(f"unknown net {net!r}; choose one of {list(NETS)}")


def make_decoder(net: str, in_features: int, hidden: tuple[int, ...], obs: Observation, *,
                 batch_norm: bool = False):  # fmt: skip
    """(B, in_features) -> (B, obs.num_params): the numbers the observation model needs."""
    if net == "mlp":
        return MLP(in_features, hidden, obs.num_params, batch_norm=batch_norm)
    if net == "conv":
        if len(obs.event_shape) != 3 or obs.num_params % obs.numel:
            raise ValueError("net='conv' needs image data and a per-pixel likelihood (not lowrank)")
        c, h, w = obs.event_shape
        per_pixel = obs.num_params // obs.numel
        return nn.Sequential(
            ConvDecoder(
                in_features, per_pixel * c, (h, w), hidden=hidden[-1], batch_norm=batch_norm
            ),
            nn.Flatten(start_dim=-3),
        )
    raise ValueError(f"unknown net {net!r}; choose one of {list(NETS)}")


def observation_for(config) -> Observation:
    """The observation model a config names: its ``likelihood`` for data of its
    ``image_shape``, with the settings it holds (levels, min_scale, rank, components, ...)."""
    settings = dataclasses.asdict(config)
    return make_observation(settings.pop("likelihood"), settings.pop("image_shape"), **settings)


def gaussian_params(h: Tensor) -> tuple[Tensor, Tensor]:
    """(B, 2Z) -> loc (B, Z), scale (B, Z), the scale kept away from 0 for a stable log q."""
    loc, raw = h.chunk(2, dim=-1)
    return loc, F.softplus(raw) + 1e-4


def check_batch(model: nn.Module, x: Tensor, image_shape) -> None:
    """ValueError unless x is ``(B, *image_shape)``, with the fix in the message."""
    if x.dim() != len(image_shape) + 1 or tuple(x.shape[1:]) != tuple(image_shape):
        raise ValueError(
            f"{type(model).__name__} was built for data of shape {tuple(image_shape)} but got a "
            f"batch of shape {tuple(x.shape)}; build it with image_shape={tuple(x.shape[1:])}"
        )


def fill_unknown(x: Tensor, known: Tensor, fill: Tensor) -> Tensor:
    """x where ``known`` is True, ``fill`` elsewhere."""
    return torch.where(known, x, fill)
