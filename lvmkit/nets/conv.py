"""Convolutional encoder and transpose-convolution decoder for images of any size used here."""

from __future__ import annotations

import math

from torch import Tensor, nn

from lvmkit.nets.mlp import BatchNorm


class ConvEncoder(nn.Module):
    """(B, C, H, W) -> (B, out_features): two stride-2 3x3 convs, then a hidden layer, with
    ``activation`` after each.

    Parameters
    ----------
    image_shape : tuple of (int, int, int)
    out_features : int
    channels : tuple of (int, int)
        The convolutions' channels.
    hidden : int
    activation : type of nn.Module
    """

    def __init__(self, image_shape, out_features: int, channels=(32, 64), hidden: int = 256,
                 activation: type[nn.Module] = nn.ReLU):  # fmt: skip
        super().__init__()
        c, h, w = image_shape
        self.convs = nn.Sequential(
            nn.Conv2d(c, channels[0], 3, stride=2, padding=1),
            activation(),
            nn.Conv2d(channels[0], channels[1], 3, stride=2, padding=1),
            activation(),
        )
        flat = channels[1] * math.ceil(h / 4) * math.ceil(w / 4)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, hidden), activation(), nn.Linear(hidden, out_features)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.convs(x))


class ConvDecoder(nn.Module):
    """(B, Z) -> (B, out_channels, H, W): a linear map onto a (ceil(H/4), ceil(W/4)) grid, two
    stride-2 transpose convs, a 3x3 conv, then a crop to (H, W) (28 -> 7 -> 14 -> 28 exactly;
    8 -> 2 -> 8; 32 -> 8 -> 32; odd sizes are cropped).

    Parameters
    ----------
    in_features : int
        Z.
    out_channels : int
    size : tuple of (int, int)
        (H, W).
    channels : tuple of (int, int)
        The transpose convolutions' channels.
    hidden : int
        The linear map's hidden width.
    batch_norm : bool
        Batch norm before each ReLU (DCGAN's generator).
    """

    def __init__(
        self,
        in_features: int,
        out_channels: int,
        size: tuple[int, int],
        channels=(64, 32),
        hidden: int = 256,
        batch_norm: bool = False,  # before each ReLU (DCGAN's generator)
    ):
        super().__init__()
        self.size = tuple(size)
        self.grid = (channels[0], math.ceil(size[0] / 4), math.ceil(size[1] / 4))

        def norm(kind, width: int) -> list[nn.Module]:  # (the layer before it has no bias)
            return [kind(width)] if batch_norm else []

        flat, bias = math.prod(self.grid), not batch_norm
        self.head = nn.Sequential(
            nn.Linear(in_features, hidden, bias=bias), *norm(BatchNorm, hidden), nn.ReLU(),
            nn.Linear(hidden, flat, bias=bias), *norm(BatchNorm, flat), nn.ReLU(),
        )  # fmt: skip
        self.deconvs = nn.Sequential(
            nn.ConvTranspose2d(channels[0], channels[1], 4, 2, 1, bias=bias),
            *norm(nn.BatchNorm2d, channels[1]),
            nn.ReLU(),
            nn.ConvTranspose2d(channels[1], channels[1], 4, 2, 1, bias=bias),
            *norm(nn.BatchNorm2d, channels[1]),
            nn.ReLU(),
            nn.Conv2d(channels[1], out_channels, 3, padding=1),
        )

    def forward(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]  # (B,) or (K, B) for vectorized particles
        g = self.head(z).reshape(-1, *self.grid)  # (B', C0, H/4, W/4)
        out = self.deconvs(g)[..., : self.size[0], : self.size[1]]  # (B', out_channels, H, W)
        return out.reshape(*lead, *out.shape[1:])
