"""Adversarial training (Goodfellow et al. 2014) as an algorithm of the one loop: checkpoints,
exact resume, torchrun sharding, signals and progress come from ``loop.run``."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lvmkit.core.checks import check_number
from lvmkit.core.files import CheckpointError
from lvmkit.core.processes import all_reduce_sum, broadcast, group
from lvmkit.core.rng import drawn_by, uniform
from lvmkit.inference.loop import Algorithm, FitResult, run
from lvmkit.inference.programs import resolve_device
from lvmkit.inference.tracking import Logger
from lvmkit.inference.trainer import NonFiniteLossError

BETAS = (0.5, 0.999)  # DCGAN's Adam (Radford et al. 2016): a short memory of the moving target


def standard_normal(n: int, dim: int, purpose: str, device) -> Tensor:
    """(n, dim) standard normals: by the datapoints' positions inside ``drawn_by`` (the same on
    any number of processes), from torch's stream elsewhere."""
    u = uniform((n, dim), device=device, purpose=purpose).double()
    return (math.sqrt(2) * torch.erfinv(2 * u - 1)).float()


class Adversarial(Algorithm):
    """A generator z -> x against a discriminator x -> logit, one update of each per step: the
    discriminator on the batch and as many generated images, -log D(x) - log(1 - D(G(z)));
    then the generator by the non-saturating loss -log D(G(z')) (fresh z'). Adam with DCGAN's
    betas for both.

    ``gan`` is an ``nn.Module`` with ``generator`` (z (B, z_dim) -> x (B, ...)),
    ``discriminator`` (x -> (B, 1) logits) and ``z_dim``. The loss the loop records is the
    discriminator's, per datapoint in nats (2 log 2 = 1.386 when it cannot tell); ``info()``
    gives the generator's last epoch's. Batch norm layers (the built-in generator's) see this
    process's share of each batch under torchrun, as in DDP without SyncBatchNorm.

    Parameters
    ----------
    gan : nn.Module
        With ``generator``, ``discriminator`` and ``z_dim``.
    lr : float
        Adam's learning rate for both nets.
    device : str or torch.device
        "auto", "cpu", "cuda" or "cuda:N".
    """

    name = "adversarial"
    honours = frozenset({"batch_size"})

    def __init__(self, gan: nn.Module, *, lr: float = 2e-4, device="auto"):
        self.gan, self.lr = gan, check_number("lr", lr)
        self.device = resolve_device(device)
        self.group = group(self.device)
        gan.to(self.device)
        self.opt_g = torch.optim.Adam(gan.generator.parameters(), lr=lr, betas=BETAS)
        self.opt_d = torch.optim.Adam(gan.discriminator.parameters(), lr=lr, betas=BETAS)
        self.sums = [0.0, 0.0, 0]  # this epoch's discriminator and generator loss, count
        self.generator_loss = math.nan
        self.param_state = {"params": {}, "constraints": {}}

    def settings(self) -> dict:
        return {"lr": self.lr, "optimizer": "adam", "betas": list(BETAS)}

    def setup(self, data, batch_size: int) -> None:
        self.data = data
        self.gan.train()  # batch norm from each batch's statistics, dropout on
        broadcast(list(self.gan.parameters()), self.group)  # every process starts from rank 0's

    def _update(self, loss: Tensor, net: nn.Module, optimizer, n: int, what: str) -> None:
        """Step ``net`` down the gradient of ``loss`` (a sum over this process's datapoints),
        averaged over the ``n`` datapoints of the global batch."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in net.parameters()]
        all_reduce_sum(grads, self.group)
        for p, g in zip(net.parameters(), grads, strict=True):
            p.grad = g / n
        if not all(torch.isfinite(g).all() for g in grads):
            optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(f"the {what}'s gradient is not finite")
        optimizer.step()

    def step(self, index: Tensor, *, keys: Tensor, first: bool, stop: bool) -> float:
        g, d = self.gan.generator, self.gan.discriminator
        with drawn_by(keys):
            (x,) = self.data.batch(index)
            z = standard_normal(len(x), self.gan.z_dim, "gan-discriminator", self.device)
            z_next = standard_normal(len(x), self.gan.z_dim, "gan-generator", self.device)
        counts = torch.tensor([float(len(x)), float(stop)], device=self.device)
        all_reduce_sum([counts], self.group)
        n = int(counts[0])
        self.stop_requested = bool(counts[1] > 0)
        fake = g(z).detach()
        loss_d = F.softplus(-d(x)).sum() + F.softplus(d(fake)).sum()  # -log D(x) - log(1-D(G(z)))
        self._update(loss_d, d, self.opt_d, n, "discriminator")
        loss_g = F.softplus(-d(g(z_next))).sum()  # -log D(G(z')): strong gradients early on
        self._update(loss_g, g, self.opt_g, n, "generator")
        losses = torch.stack([loss_d.detach(), loss_g.detach()])
        all_reduce_sum([losses], self.group)
        self.sums = [self.sums[0] + float(losses[0]), self.sums[1] + float(losses[1]),
                     self.sums[2] + n]  # fmt: skip
        return float(losses[0]) / n

    def end_epoch(self, losses: list[float]) -> tuple[float, bool]:
        loss, self.generator_loss = self.sums[0] / self.sums[2], self.sums[1] / self.sums[2]
        self.sums = [0.0, 0.0, 0]
        return loss, False

    def state_dict(self) -> dict:
        return {"gan": self.gan.state_dict(), "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict(), "sums": list(self.sums),
                "generator_loss": self.generator_loss}  # fmt: skip

    def load_state_dict(self, state: dict, *, source: str) -> None:
        try:
            self.gan.load_state_dict(state["gan"])
            self.opt_g.load_state_dict(state["opt_g"])
            self.opt_d.load_state_dict(state["opt_d"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(
                f"{source} does not hold this GAN's training state: {err}"
            ) from None
        self.sums, self.generator_loss = list(state["sums"]), state["generator_loss"]

    def params(self) -> dict[str, Tensor]:
        return {n: p.detach().clone() for n, p in self.gan.named_parameters()}

    def info(self) -> dict:
        return {"generator_loss": self.generator_loss}


def fit_adversarial(
    gan: nn.Module,
    data,
    *,
    epochs: int = 50,
    batch_size: int = 64,
    lr: float = 2e-4,
    device: str = "auto",
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: list[Callable[[dict], None]] = (),
    loggers: list[Logger] = (),
) -> FitResult:
    """Train ``gan`` on ``data`` by ``Adversarial`` steps in the one loop (checkpoints, exact
    resume, torchrun), and leave it in eval mode, ready to sample (batch norm from its running
    statistics).

    Parameters
    ----------
    gan : nn.Module
        With ``generator`` (z (B, z_dim) -> x (B, ...)), ``discriminator`` (x -> (B, 1)
        logits) and ``z_dim``; e.g. ``lvmkit.models.GAN``.
    data : Tensor of shape (N, ...), or Dataset
        The real images, in the generator's units (``gan.prepare(images)``).
    epochs, batch_size, device, seed, checkpoint_dir, resume, overwrite, progress, callbacks,
    loggers
        As for ``fit``.
    lr : float
        Adam's learning rate for both nets (betas (0.5, 0.999), DCGAN's).

    Returns
    -------
    FitResult
        ``losses``: the discriminator's per epoch, in nats per datapoint (2 log 2 = 1.386 when
        it cannot tell); ``info["generator_loss"]``: the generator's last epoch's.

    Examples
    --------
    >>> import torch
    >>> from lvmkit.inference import fit_adversarial
    >>> from lvmkit.models import GAN, GANConfig
    >>> gan = GAN(GANConfig(image_shape=(1, 4, 4), z_dim=2, hidden=(8,)))
    >>> result = fit_adversarial(gan, torch.rand(32, 1, 4, 4), epochs=2, progress=False)
    >>> gan.sample(3).shape
    torch.Size([3, 1, 4, 4])
    """
    algorithm = Adversarial(gan, lr=lr, device=device)
    result = run(algorithm, data, epochs=epochs, batch_size=batch_size, seed=seed,
                 checkpoint_dir=checkpoint_dir, resume=resume, overwrite=overwrite,
                 progress=progress, callbacks=callbacks, loggers=loggers)  # fmt: skip
    gan.eval()
    return result
