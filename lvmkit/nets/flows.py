"""Invertible layers for normalizing flows on images (RealNVP, Dinh et al. 2017; Glow, Kingma &
Dhariwal 2018). Each maps x (B, C, H, W) to (y, log|det dy/dx| (B,)) and back by ``inverse``."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class Logit(nn.Module):
    """Pixels p in [0, 1] to logit(alpha + (1 - 2 alpha) p): the unbounded space the coupling
    layers work in (alpha keeps 0 and 1 finite)."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        p = self.alpha + (1 - 2 * self.alpha) * x
        log_det = math.log(1 - 2 * self.alpha) - p.log() - (-p).log1p()  # (B, C, H, W)
        return p.log() - (-p).log1p(), log_det.flatten(1).sum(1)

    def inverse(self, y: Tensor) -> Tensor:
        return (torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha)


class ActNorm(nn.Module):
    """y = (x + shift) exp(log_scale), per channel; ``start_at`` sets both so that a batch
    comes out with mean 0 and variance 1 per channel (Glow's data-dependent start)."""

    def __init__(self, channels: int):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        log_det = self.log_scale.sum() * x.shape[2] * x.shape[3]
        return (x + self.shift) * self.log_scale.exp(), log_det.expand(len(x))

    def inverse(self, y: Tensor) -> Tensor:
        return y * (-self.log_scale).exp() - self.shift

    @torch.no_grad()
    def start_at(self, x: Tensor) -> None:
        self.shift.copy_(-x.mean((0, 2, 3), keepdim=True))
        self.log_scale.copy_(-(x.std((0, 2, 3), keepdim=True) + 1e-6).log())


class InvertibleConv1x1(nn.Module):
    """A learned C x C channel mixing W at every pixel (Glow), starting at a random rotation;
    log|det| = H W log|det W|."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.linalg.qr(torch.randn(channels, channels))[0])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        log_det = torch.linalg.slogdet(self.weight)[1] * x.shape[2] * x.shape[3]
        return F.conv2d(x, self.weight[..., None, None]), log_det.expand(len(x))

    def inverse(self, y: Tensor) -> Tensor:
        return F.conv2d(y, torch.linalg.inv(self.weight)[..., None, None])


class AffineCoupling(nn.Module):
    """One part of x passes unchanged and sets a scale and shift for the rest: y_b = x_b
    exp(s(x_a)) + t(x_a), s = w tanh(.) bounded. ``mask`` "checkerboard0" / "checkerboard1"
    splits the pixels (the two parities), "channel" the channels (first half kept). The conv net's
    last layer starts at zero: every coupling starts as the identity."""

    def __init__(self, channels: int, hidden: int, mask: str):
        super().__init__()
        if mask not in ("checkerboard0", "checkerboard1", "channel"):
            raise ValueError(f"unknown mask {mask!r}")
        self.mask = mask
        kept = channels // 2 if mask == "channel" else channels
        changed = channels - kept if mask == "channel" else channels
        last = nn.Conv2d(hidden, 2 * changed, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(
            nn.Conv2d(kept, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1), nn.ReLU(), last,
        )  # fmt: skip
        self.scale = nn.Parameter(torch.ones(1, changed, 1, 1))

    def _checkerboard(self, x: Tensor) -> Tensor:
        """1 on the kept pixels (1, 1, H, W)."""
        h, w = x.shape[2:]
        i, j = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        parity = int(self.mask[-1])
        return ((i[:, None] + j[None, :]) % 2 == parity).to(x.dtype)[None, None]

    def _scale_shift(self, kept: Tensor) -> tuple[Tensor, Tensor]:
        raw, shift = self.net(kept).chunk(2, 1)
        return self.scale * torch.tanh(raw), shift

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.mask == "channel":
            a, b = x.split([self.net[0].in_channels, x.shape[1] - self.net[0].in_channels], 1)
            s, t = self._scale_shift(a)
            return torch.cat([a, b * s.exp() + t], 1), s.flatten(1).sum(1)
        m = self._checkerboard(x)
        s, t = self._scale_shift(x * m)
        s, t = s * (1 - m), t * (1 - m)  # the kept pixels pass unchanged
        return x * s.exp() + t, s.flatten(1).sum(1)

    def inverse(self, y: Tensor) -> Tensor:
        if self.mask == "channel":
            a, b = y.split([self.net[0].in_channels, y.shape[1] - self.net[0].in_channels], 1)
            s, t = self._scale_shift(a)
            return torch.cat([a, (b - t) * (-s).exp()], 1)
        m = self._checkerboard(y)
        s, t = self._scale_shift(y * m)
        s, t = s * (1 - m), t * (1 - m)
        return (y - t) * (-s).exp()


class Squeeze(nn.Module):
    """(B, C, H, W) -> (B, 4C, H/2, W/2): each 2x2 block of pixels becomes four channels."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        y = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return y.reshape(b, 4 * c, h // 2, w // 2), x.new_zeros(b)

    def inverse(self, y: Tensor) -> Tensor:
        b, c, h, w = y.shape
        x = y.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c // 4, 2 * h, 2 * w)


class MultiScaleFlow(nn.Module):
    """RealNVP's multi-scale architecture with Glow's steps. Each scale: ``steps`` checkerboard
    couplings (alternating parity, each after an ActNorm); then, but at the last scale, a
    squeeze, ``steps`` channel steps (ActNorm, 1x1 convolution, channel coupling), and half the
    channels set aside as a final variable. Every variable is standard normal under the base.

    image_shape (C, H, W): H and W divisible by 2^(scales - 1).
    forward: x (B, C, H, W) -> (the final variables, a list of (B, c_i, h_i, w_i); log|det| (B,))
    inverse: that list -> x.
    """

    def __init__(self, image_shape: tuple[int, int, int], scales: int, steps: int, hidden: int):
        super().__init__()
        c = image_shape[0]
        self.scales = nn.ModuleList()
        for i in range(scales):
            layers: list[nn.Module] = []
            for k in range(steps):
                layers += [ActNorm(c), AffineCoupling(c, hidden, f"checkerboard{k % 2}")]
            if i < scales - 1:
                layers.append(Squeeze())
                c *= 4
                for _ in range(steps):
                    coupling = AffineCoupling(c, hidden, "channel")
                    layers += [ActNorm(c), InvertibleConv1x1(c), coupling]
                c -= c // 2  # the first c // 2 channels are set aside
            self.scales.append(nn.ModuleList(layers))

    def forward(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        zs, log_det = [], x.new_zeros(len(x))
        for i, layers in enumerate(self.scales):
            for layer in layers:
                x, ld = layer(x)
                log_det = log_det + ld
            if i < len(self.scales) - 1:
                out = x.shape[1] // 2
                zs.append(x[:, :out])
                x = x[:, out:]
        return [*zs, x], log_det

    def inverse(self, zs: list[Tensor]) -> Tensor:
        x = zs[-1]
        for i in reversed(range(len(self.scales))):
            if i < len(self.scales) - 1:
                x = torch.cat([zs[i], x], 1)
            for layer in reversed(self.scales[i]):
                x = layer.inverse(x)
        return x

    def shapes(self, image_shape: tuple[int, int, int]) -> list[tuple[int, int, int]]:
        """The shapes (c, h, w) of the final variables for one image of ``image_shape``."""
        with torch.no_grad():
            zs, _ = self(torch.zeros(1, *image_shape))
        return [tuple(z.shape[1:]) for z in zs]

    @torch.no_grad()
    def start_at(self, x: Tensor) -> None:
        """Every ActNorm starts so that the batch x reaching it is standardized."""
        for i, layers in enumerate(self.scales):
            for layer in layers:
                if isinstance(layer, ActNorm):
                    layer.start_at(x)
                x, _ = layer(x)
            if i < len(self.scales) - 1:
                x = x[:, x.shape[1] // 2 :]
