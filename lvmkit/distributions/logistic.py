"""The discretized logistic mixture over k levels (PixelCNN++, Salimans et al. 2017, eq. 2)."""

from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution, constraints
from torch import Tensor
from torch.nn import functional as F


def _log1mexp(a: Tensor) -> Tensor:
    """log(1 - exp(a)) for a < 0, accurate on both sides of -log 2 (Maechler 2012)."""
    return torch.where(a > -math.log(2), torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


class DiscretizedLogisticMixture(TorchDistribution):
    """P(x) = sum_i pi_i [sigmoid((x + 1/2 - mu_i)/s_i) - sigmoid((x - 1/2 - mu_i)/s_i)] over
    x in {0, ..., levels-1}, the lowest bin open to -inf and the highest to +inf. log_prob is
    exact in log space everywhere: sigma(u) - sigma(l) = sigma(u) sigma(-l) (1 - exp(l - u)).

    Parameters
    ----------
    logits, loc, scale : Tensor of shape (..., M)
        M components; batch shape (...). ``loc`` in level units (bins have width 1).
    levels : int
    validate_args : bool, optional
    """

    arg_constraints = {
        "logits": constraints.real_vector,
        "loc": constraints.real_vector,
        "scale": constraints.independent(constraints.positive, 1),
    }
    has_enumerate_support = False

    def __init__(self, logits: Tensor, loc: Tensor, scale: Tensor, levels: int, validate_args=None):
        if levels < 2:
            raise ValueError(f"levels must be >= 2, got {levels}")
        self.logits, self.loc, self.scale = torch.broadcast_tensors(logits, loc, scale)
        self.levels = levels
        super().__init__(self.logits.shape[:-1], torch.Size(), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        return constraints.integer_interval(0, self.levels - 1)

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape) + self.logits.shape[-1:]
        return type(self)(
            self.logits.expand(shape),
            self.loc.expand(shape),
            self.scale.expand(shape),
            self.levels,
            validate_args=False,
        )

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        x = value.unsqueeze(-1)  # (..., 1) against (..., M)
        inv_s = 1.0 / self.scale
        upper = (x + 0.5 - self.loc) * inv_s  # u
        lower = (x - 0.5 - self.loc) * inv_s  # l
        log_upper = F.logsigmoid(upper)  # log P(X <= x + 1/2): the whole mass of the lowest bin
        log_not_lower = F.logsigmoid(-lower)  # log P(X > x - 1/2): the highest bin
        inner = log_upper + log_not_lower + _log1mexp(-inv_s)  # l - u = -1/s
        lp = torch.where(x <= 0, log_upper, torch.where(x >= self.levels - 1, log_not_lower, inner))
        return torch.logsumexp(F.log_softmax(self.logits, dim=-1) + lp, dim=-1)

    def sample(self, sample_shape=()) -> Tensor:
        sample_shape = torch.Size(sample_shape)
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            comp = torch.distributions.Categorical(logits=self.logits).sample(sample_shape)
            loc = self.loc.expand(shape + self.loc.shape[-1:]).gather(-1, comp.unsqueeze(-1))
            scale = self.scale.expand(shape + self.scale.shape[-1:]).gather(-1, comp.unsqueeze(-1))
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device).clamp(
                1e-6, 1 - 1e-6
            )
            x = loc.squeeze(-1) + scale.squeeze(-1) * (torch.log(u) - torch.log1p(-u))
            return x.round().clamp(0, self.levels - 1)

    @property
    def mean(self) -> Tensor:
        """Exact expectation, summing over the levels."""
        values = torch.arange(self.levels, dtype=self.loc.dtype, device=self.loc.device)
        grid = values.reshape((-1,) + (1,) * len(self.batch_shape))
        probs = self.log_prob(grid.expand((self.levels,) + self.batch_shape)).exp()
        return (probs * grid).sum(0)


def DiscretizedLogistic(loc: Tensor, scale: Tensor, levels: int, validate_args=None):
    """A single discretized logistic: the mixture with one component.

    Parameters
    ----------
    loc, scale : Tensor
        In level units; batch shape theirs.
    levels : int
    validate_args : bool, optional
    """
    loc = loc.unsqueeze(-1)
    return DiscretizedLogisticMixture(
        torch.zeros_like(loc), loc, scale.unsqueeze(-1), levels, validate_args=validate_args
    )
