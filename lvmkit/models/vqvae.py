"""VQ-VAE (van den Oord et al. 2017): a grid of discrete codes, each the nearest of K codebook
vectors to the encoder's output there, decoded to p(x | code); a gated PixelCNN over the code
grid is the prior p(code), fitted together with the rest on the codes of the training images.

As a Pyro program: the guide puts a point mass on the nearest codes, code*(x); the model draws
the code grid from the PixelCNN prior and decodes it. The ELBO with a point-mass guide is
log p(x | code*) + log p(code*), a lower bound on log p(x), which is what ``log_prob`` gives;
while training the model adds the codebook and commitment terms and passes the decoder's
gradient to the encoder straight through the quantization.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from lvmkit.core.checks import check_count, check_number
from lvmkit.distributions import AutoregressiveImage, check_support, make_observation
from lvmkit.models.base import BuiltinModel
from lvmkit.models.common import check_batch, observation_for
from lvmkit.nets import GatedPixelCNN

START_IMAGES = 512  # training images the codebook starts from


@dataclass
class VQVAEConfig:
    image_shape: tuple[int, int, int] = (1, 8, 8)
    codes: int = 64  # codebook size K: each grid position takes one of K values
    code_dim: int = 16  # length of each codebook vector
    # stride-2 convolutions: the code grid is (H / 2^downsample, W / 2^downsample)
    downsample: int = 1
    channels: int = 64  # feature maps of the encoder and decoder
    commitment: float = 0.25  # beta: how hard the encoder is pulled to its codes
    prior_features: int = 32  # the PixelCNN prior over codes: feature maps
    prior_layers: int = 4  # and gated layers
    likelihood: str = "categorical"  # p(x | code): categorical | logistic | bernoulli | gaussian
    levels: int | None = None  # pixel levels (from the data when built by name)
    components: int = 1  # logistic mixture components
    min_scale: float = 0.03  # gaussian: the smallest scale


class VQVAE(BuiltinModel):
    """x -> encoder -> nearest codebook vectors (B, code_dim, h, w) -> decoder -> p(x | code),
    with a PixelCNN prior over the code indices (B, 1, h, w).

    Parameters
    ----------
    config : VQVAEConfig, optional
        Its settings, the defaults where None (``lvmkit fit vqvae --help`` lists them with
        their meaning).
    """

    config_class = VQVAEConfig
    can_sample = True
    can_reconstruct = True
    can_encode = True
    density = "bound"
    bound = (
        "log p(x | c) + log p(c) at c the nearest codes: the ELBO of a point-mass guide, "
        "below log p(x) by -log p(c | x)"
    )

    def __init__(self, config: VQVAEConfig | None = None):
        super().__init__()
        self.config = c = config or VQVAEConfig()
        for name in ("codes", "code_dim", "channels", "prior_features", "prior_layers"):
            check_count(name, getattr(c, name))
        if c.codes < 2:
            raise ValueError(f"codes must be at least 2 (a codebook of one holds nothing), got "
                             f"{c.codes}")  # fmt: skip
        check_count("downsample", c.downsample, minimum=0)
        check_number("commitment", c.commitment, positive=False)
        channels, h, w = c.image_shape
        side = 2**c.downsample
        if h % side or w % side:
            raise ValueError(
                f"downsample = {c.downsample} halves the image sides {c.downsample} times, so "
                f"they must be divisible by {side}; ({h}, {w}) is not: lower downsample"
            )
        self.obs = observation_for(c)
        per_pixel = self.obs.num_params // self.obs.numel
        self.grid = (1, h // side, w // side)
        widths = [channels] + [c.channels] * c.downsample
        down = [nn.Sequential(nn.Conv2d(a, b, 4, 2, 1), nn.ReLU())
                for a, b in zip(widths, widths[1:], strict=False)]  # fmt: skip
        self.encoder = nn.Sequential(
            *down,
            nn.Conv2d(widths[-1], c.channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c.channels, c.code_dim, 1),
        )  # (B, C, H, W) -> (B, code_dim, h, w)
        up = [nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(c.channels, c.channels, 4, 2, 1))
              for _ in range(c.downsample)]  # fmt: skip
        self.decoder = nn.Sequential(
            nn.Conv2d(c.code_dim, c.channels, 3, padding=1), *up, nn.ReLU(),
            nn.Conv2d(c.channels, per_pixel * channels, 3, padding=1), nn.Flatten(1),
        )  # (B, code_dim, h, w) -> (B, obs.num_params)
        self.codebook = nn.Embedding(c.codes, c.code_dim)
        nn.init.uniform_(self.codebook.weight, -1 / c.codes, 1 / c.codes)
        self.code_head = make_observation("categorical", self.grid, levels=c.codes)
        self.prior_net = GatedPixelCNN(1, c.codes, features=c.prior_features,
                                       layers=c.prior_layers)  # fmt: skip

    def prior(self, n: int) -> AutoregressiveImage:
        """p(code) for n images: event shape (1, h, w), values 0..codes-1."""
        return AutoregressiveImage(self.prior_net, self.code_head, batch_shape=(n,))

    @torch.no_grad()
    def initialize(self, data, *, seed: int = 0) -> VQVAE:
        """The codebook starts at the encoder's outputs at K random positions of the first
        ``START_IMAGES`` (prepared) training images, so every code is used from the first step
        (from the small uniform start most codes went unused and training swung, on digits)."""
        x = data.batch(torch.arange(min(len(data), START_IMAGES)))[0]
        param = next(self.parameters())
        flat = self.encoder(x.to(param)).permute(0, 2, 3, 1).flatten(0, 2)  # (B h w, D)
        pick = torch.randint(len(flat), (self.config.codes,),
                             generator=torch.Generator().manual_seed(seed))  # fmt: skip
        self.codebook.weight.copy_(flat[pick.to(flat.device)])
        return self

    def nearest(self, z_e: Tensor) -> Tensor:
        """The index of the nearest codebook vector at each position: (B, 1, h, w) float."""
        flat = z_e.permute(0, 2, 3, 1)  # (B, h, w, D)
        e = self.codebook.weight  # (K, D)
        distance = flat.square().sum(-1, keepdim=True) - 2 * flat @ e.T + e.square().sum(-1)
        return distance.argmin(-1)[:, None].to(z_e.dtype)

    def embed(self, code: Tensor) -> Tensor:
        """Code indices (B, 1, h, w) -> their codebook vectors (B, code_dim, h, w)."""
        return self.codebook(code[:, 0].long()).permute(0, 3, 1, 2)

    def model(self, x: Tensor | None = None, n: int | None = None) -> Tensor:
        if x is None and n is None:
            raise ValueError("pass a batch x, or n to sample n images")
        if x is not None:
            check_batch(self, x, self.config.image_shape)
            check_support(self.obs, x)
            n = len(x)
        pyro.module("vqvae", self)
        with pyro.plate("data", n):
            code = pyro.sample("code", self.prior(n))  # (n, 1, h, w)
            z_q = self.embed(code)
            # the codebook and commitment terms shape training's gradient; a validation pass
            # (no gradient) scores the bound alone
            if x is not None and self.training and torch.is_grad_enabled():
                z_e = self.encoder(x)  # the guide's code is nearest(z_e)
                codebook = (z_e.detach() - z_q).square().flatten(1).sum(1)
                commit = (z_e - z_q.detach()).square().flatten(1).sum(1)
                pyro.factor("vq", -(codebook + self.config.commitment * commit))
                z_q = z_e + (z_q - z_e).detach()  # straight through: value z_q, gradient z_e's
            return pyro.sample("x", self.obs(self.decoder(z_q)), obs=x)

    def guide(self, x: Tensor | None = None, n: int | None = None) -> Tensor:
        if x is None:
            raise ValueError("the VQ-VAE's guide needs x")
        pyro.module("vqvae", self)
        with pyro.plate("data", len(x)):
            code = self.nearest(self.encoder(x))
            return pyro.sample("code", dist.Delta(code, event_dim=3))

    def log_prob(self, x: Tensor) -> Tensor:
        """The lower bound log p(x | code*) + log p(code*) <= log p(x) per image (B,)."""
        check_batch(self, x, self.config.image_shape)
        code = self.nearest(self.encoder(x))
        fit = self.obs(self.decoder(self.embed(code))).log_prob(x)
        return self.prior(len(x)).log_prob(code) + fit

    def encode(self, x: Tensor) -> dist.Distribution:
        """The quantized code as a point mass; ``.mean`` is its vectors, flattened (B, D h w)."""
        check_batch(self, x, self.config.image_shape)
        return dist.Delta(self.embed(self.nearest(self.encoder(x))).flatten(1)).to_event(1)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x | code*(x)]: ``(B, *image_shape)``."""
        check_batch(self, x, self.config.image_shape)
        return self.obs.mean(self.decoder(self.embed(self.nearest(self.encoder(x)))))

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """n images (n, C, H, W): code grids from the PixelCNN prior (its cached generation),
        then x ~ p(x | code)."""
        check_count("n", n)
        code = self.prior(n).sample()
        return self.obs(self.decoder(self.embed(code))).sample()
