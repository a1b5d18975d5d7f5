"""A generative adversarial network with the LVM's decoders as its generator, trained by the
``Adversarial`` algorithm of the one loop; scored on the LVM's scale by AIS from the prior
under a Gaussian observation noise (Wu et al. 2017)."""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from lvmkit import data as lvdata
from lvmkit.core.checks import check_count, check_number
from lvmkit.distributions import make_observation
from lvmkit.models.base import BuiltinModel, prepare_unit_pixels
from lvmkit.models.common import check_batch, make_decoder, make_encoder

NO_GUIDE = (
    "a GAN has no encoder q(z|x), so neither SVI nor importance sampling applies: train it "
    "with lvmkit.inference.fit_adversarial(gan, gan.prepare(data)) (lvmkit fit gan), and "
    "estimate its log p(x) by AIS from the prior, lvmkit.ais(gan.model, data) (Wu et al. "
    "2017), which scores x under the Gaussian observation noise noise_scale; "
    "lvmkit.evaluate(gan, data) does this"
)


@dataclass
class GANConfig:
    image_shape: tuple[int, ...] = (1, 8, 8)
    z_dim: int = 16
    hidden: tuple[int, ...] = (256, 256)  # generator (the LVM's decoder) and discriminator
    net: str = "mlp"  # "mlp", or "conv": transpose-conv generator, conv discriminator
    # the Gaussian observation noise under which log p(x) is scored by AIS (Wu et al. 2017);
    # training ignores it
    noise_scale: float = 0.1


class Generator(nn.Module):
    """z (..., Z) -> pixel means ``(..., *image_shape)`` in (0, 1): the LVM's decoder with batch
    norm before each ReLU (DCGAN's generator; in eval mode, the running statistics)."""

    def __init__(self, config: GANConfig):
        super().__init__()
        self.shape = tuple(config.image_shape)
        shape_of_pixels = make_observation("bernoulli", self.shape)  # one number per pixel
        self.net = make_decoder(
            config.net, config.z_dim, config.hidden, shape_of_pixels, batch_norm=True
        )

    def forward(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.net(z)).reshape(*z.shape[:-1], *self.shape)


def LeakyReLU() -> nn.Module:  # noqa: N802 (a layer's constructor)
    return nn.LeakyReLU(0.2)


class GAN(BuiltinModel):
    """G: z ~ N(0, I) -> x = G(z), against a discriminator D: x -> logit. As a Pyro program
    (for AIS), p(x | z) = N(G(z), noise_scale^2 I) on dequantized pixels.

    Parameters
    ----------
    config : GANConfig, optional
        Its settings, the defaults where None (``lvmkit fit gan --help`` lists them with
        their meaning).
    """

    config_class = GANConfig
    can_sample = True
    density = "ais"
    data_kind = "continuous"
    default_inference = "adversarial"
    default_lr = 2e-4

    def __init__(self, config: GANConfig | None = None):
        super().__init__()
        self.config = c = config or GANConfig()
        check_count("z_dim", c.z_dim)
        check_number("noise_scale", c.noise_scale)
        self.z_dim = c.z_dim
        self.generator = Generator(c)
        # LeakyReLU as in DCGAN: on 28x28 digits a ReLU discriminator won within 10 epochs and
        # the generator collapsed onto one picture (as did a generator without batch norm)
        self.discriminator = make_encoder(c.net, c.image_shape, c.hidden, 1, activation=LeakyReLU)
        self.register_buffer("zero", torch.zeros(()))  # follows the module's device

    def prepare(self, data: lvdata.ImageData) -> lvdata.ImageData:
        """Pixels in [0, 1]: discrete data dequantized (a fresh draw every batch)."""
        return prepare_unit_pixels(data, "a GAN")

    def model(self, x: Tensor | None = None, n: int | None = None) -> Tensor:
        if x is None and n is None:
            raise ValueError("pass a batch x, or n to sample n images")
        if x is not None:
            check_batch(self, x, self.config.image_shape)
            n = len(x)
        pyro.module("generator", self.generator)
        prior = dist.Normal(self.zero, 1.0).expand([self.z_dim]).to_event(1)
        with pyro.plate("data", n):
            z = pyro.sample("z", prior)
            noise = dist.Normal(self.generate(z), self.config.noise_scale)
            return pyro.sample("x", noise.to_event(len(self.config.image_shape)), obs=x)

    def guide(self, x=None, n=None):
        raise ValueError(NO_GUIDE)

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """n generated images G(z) ``(n, *image_shape)``, z ~ N(0, I)."""
        check_count("n", n)
        return self.generate(torch.randn(n, self.z_dim, device=self.zero.device))

    def generate(self, z: Tensor) -> Tensor:
        """G(z) ``(..., *image_shape)`` with batch norm's running statistics, in either mode: the
        trained generator's pictures, each independent of the others drawn with it."""
        training = self.generator.training
        self.generator.eval()
        try:
            return self.generator(z)
        finally:
            self.generator.train(training)
