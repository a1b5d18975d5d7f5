"""MLP building blocks. Nets map tensors to distribution parameters and know nothing of Pyro."""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.nn import functional as F


class MLP(nn.Sequential):
    """Linear layers with ReLU between them: in_features -> *hidden -> out_features."""

    def __init__(self, in_features: int, hidden: tuple[int, ...], out_features: int):
        widths = [in_features, *hidden, out_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(nn.ReLU())
        super().__init__(*layers)


class GaussianEncoder(nn.Module):
    """q(z|x) parameters from an image: (B, C, H, W) -> loc (B, Z), scale (B, Z)."""

    def __init__(self, image_shape: tuple[int, int, int], hidden: tuple[int, ...], z_dim: int):
        super().__init__()
        self.net = MLP(math.prod(image_shape), hidden, 2 * z_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        loc, raw = self.net(x.flatten(1)).chunk(2, dim=-1)  # (B, Z) each
        return loc, F.softplus(raw) + 1e-4  # keep the scale away from 0 for stable log q


class GaussianDecoder(nn.Module):
    """p(x|z) = N(loc(z), scale(z)) parameters: (B, Z) -> loc, scale, each (B, C, H, W)."""

    def __init__(
        self,
        z_dim: int,
        hidden: tuple[int, ...],
        image_shape: tuple[int, int, int],
        min_scale: float,
    ):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.min_scale = min_scale
        self.net = MLP(z_dim, hidden, 2 * math.prod(image_shape))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        loc, raw = self.net(z).chunk(2, dim=-1)
        shape = (*z.shape[:-1], *self.image_shape)
        return loc.reshape(shape), (F.softplus(raw) + self.min_scale).reshape(shape)
