"""Contrastive representations (SimCLR, Chen et al. 2020): an encoder trained so that two
augmented views of an image are nearer, after a projection head, than views of the other images
of the batch (the NT-Xent loss). No density: a representation to probe, like the autoencoders'.

As a Pyro program: the loss enters the model as ``pyro.factor`` per image and the guide is
empty, so SVI (the one loop) minimises it; the loss the loop reports is NT-Xent in nats.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor
from torch.nn import functional as F

from lvmkit import data as lvdata
from lvmkit.core.checks import check_count, check_number
from lvmkit.models.base import BuiltinModel
from lvmkit.models.common import check_batch, make_encoder
from lvmkit.nets import MLP


@dataclass
class ContrastiveConfig:
    image_shape: tuple[int, ...] = (1, 8, 8)
    features: int = 64  # the representation: the encoder's output, what encode gives
    projection: int = 32  # the projection head's output, where views are compared
    hidden: tuple[int, ...] = (256,)
    net: str = "mlp"  # "mlp" or "conv" encoder
    temperature: float = 0.5  # tau of NT-Xent: lower weighs the hardest negatives more
    shift: int = 1  # augmentation: each view shifted by up to this many pixels (zeros in)
    noise: float = 0.1  # augmentation: Gaussian noise on the [0, 1] pixels


def nt_xent(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """NT-Xent per image (B,): views a, b (B, D) of the same B images; view i's positive is
    its other view, its negatives the other 2B - 2 views; cosine similarities over
    ``temperature``; each image's loss is the mean of its two views' cross-entropies."""
    z = F.normalize(torch.cat([a, b]), dim=1)  # (2B, D)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), -torch.inf)
    n = len(a)
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    per_view = F.cross_entropy(sim, positive, reduction="none")  # (2B,)
    return (per_view[:n] + per_view[n:]) / 2


def shifted(x: Tensor, dy: Tensor, dx: Tensor, most: int) -> Tensor:
    """Each image of x (B, C, H, W) moved by (dy, dx) (B,) whole pixels, |d| <= most, zeros
    moving in."""
    b, _, h, w = x.shape
    padded = F.pad(x, (most, most, most, most))
    rows = (most - dy)[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = (most - dx)[:, None] + torch.arange(w, device=x.device)  # (B, W)
    picked = padded[torch.arange(b, device=x.device)[:, None, None], :, rows[:, :, None],
                    cols[:, None, :]]  # (B, H, W, C)  # fmt: skip
    return picked.permute(0, 3, 1, 2)


class ContrastiveEncoder(BuiltinModel):
    """x -> encoder -> h (B, features) -> projection head -> z (B, projection), trained by
    NT-Xent between two augmented views of each image (shifts, pixel noise).

    Parameters
    ----------
    config : ContrastiveConfig, optional
        Its settings, the defaults where None (``lvmkit fit contrastive --help`` lists them with
        their meaning).
    """

    config_class = ContrastiveConfig
    can_encode = True
    density = None
    data_kind = "continuous"

    def __init__(self, config: ContrastiveConfig | None = None):
        super().__init__()
        self.config = c = config or ContrastiveConfig()
        for name in ("features", "projection"):
            check_count(name, getattr(c, name))
        check_count("shift", c.shift, minimum=0)
        check_number("temperature", c.temperature)
        check_number("noise", c.noise, positive=False)
        self.encoder = make_encoder(c.net, c.image_shape, c.hidden, c.features)
        self.head = MLP(c.features, (c.features,), c.projection)

    def prepare(self, data: lvdata.ImageData) -> lvdata.ImageData:
        """Pixels in [0, 1]."""
        return lvdata.scale(data) if data.levels is not None else data

    def augment(self, x: Tensor) -> Tensor:
        """One random view of each image of x (B, C, H, W): shifted, then noised."""
        most = self.config.shift
        dy, dx = torch.randint(-most, most + 1, (2, len(x)), device=x.device)
        return shifted(x, dy, dx, most) + self.config.noise * torch.randn_like(x)

    def model(self, x: Tensor | None = None) -> None:
        if x is None:
            raise ValueError("a contrastive encoder has no generative model to sample; pass x")
        check_batch(self, x, self.config.image_shape)
        pyro.module("contrastive", self)
        views = [self.head(self.encoder(self.augment(x))) for _ in range(2)]
        with pyro.plate("data", len(x)):
            pyro.factor("nt_xent", -nt_xent(*views, self.config.temperature))

    def guide(self, x: Tensor | None = None) -> None:
        """No latent variable: the loss is the model's factor."""

    def encode(self, x: Tensor) -> dist.Distribution:
        """The representation h(x) (B, features) as a point mass (before the projection head,
        as SimCLR probes it)."""
        check_batch(self, x, self.config.image_shape)
        return dist.Delta(self.encoder(x)).to_event(1)
