"""Importance weights per datapoint, and the importance-weighted bound (IWAE) built on them.

Pyro's ``RenyiELBO(alpha=0)`` takes the log-mean-exp over particles of the weight of a whole batch,
which for N independent datapoints is a far looser bound than Burda et al.'s per-datapoint IWAE.
Here every sample site must sit inside ``pyro.plate("data", N)``, so the weights split per
datapoint and the log-mean-exp is taken for each datapoint separately.
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor

DATA_PLATE = "data"


def max_plate_nesting(model, guide, *args) -> int:
    """How many plate dims model and guide use (they are run once, blocked, without gradients)."""
    with torch.no_grad(), poutine.block():
        guide_tr = poutine.trace(guide).get_trace(*args)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args)
    dims = [
        -frame.dim
        for tr in (guide_tr, model_tr)
        for site in tr.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized
    ]
    return max(dims, default=0)


def log_weights(model, guide, *args, num_particles: int = 1, plate_nesting: int) -> Tensor:
    """log p(x_n, z_kn) - log q(z_kn | x_n) for K = num_particles draws z_kn ~ q(z|x_n): (K, N).

    ``plate_nesting`` is ``max_plate_nesting(model, guide, *args)``; particles are vectorized in a
    plate to its left, so the model must put its batch dims in plates (standard Pyro style).
    """
    particle_dim = -plate_nesting - 1
    with pyro.plate("particles", num_particles, dim=particle_dim):
        guide_tr = poutine.trace(guide).get_trace(*args)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args)
    total = 0.0
    for tr, sign in ((model_tr, 1.0), (guide_tr, -1.0)):
        tr = prune_subsample_sites(tr)  # drop the plates' own bookkeeping sites
        tr.compute_log_prob()
        for name, site in tr.nodes.items():
            if site["type"] != "sample":
                continue
            frames = [f for f in site["cond_indep_stack"] if f.name == DATA_PLATE]
            if not frames:
                raise ValueError(
                    f"site {name!r} is not inside pyro.plate({DATA_PLATE!r}, N): importance "
                    "weights per datapoint need every sample site in the data plate"
                )
            lp = site["log_prob"]  # batch shape, right-aligned against (K, ..., N, ...)
            lp = lp.reshape((1,) * (plate_nesting + 1 - lp.dim()) + lp.shape)
            keep = {0, plate_nesting + 1 + frames[0].dim}  # particle axis, data axis
            other = [d for d in range(lp.dim()) if d not in keep]
            if other:
                lp = lp.sum(other)
            total = total + sign * lp
    return total.expand(num_particles, -1)


class IWAELoss:
    """The importance-weighted bound with K particles, as a loss: -sum_n log mean_k w_kn.

    K = 1 gives the standard ELBO estimate. Same ``differentiable_loss`` door as Pyro's ELBOs.
    """

    def __init__(self, num_particles: int):
        self.num_particles = num_particles
        self._plate_nesting: int | None = None  # found on the first call

    def differentiable_loss(self, model, guide, *args) -> Tensor:
        if self._plate_nesting is None:
            self._plate_nesting = max_plate_nesting(model, guide, *args)
        lw = log_weights(
            model,
            guide,
            *args,
            num_particles=self.num_particles,
            plate_nesting=self._plate_nesting,
        )  # (K, N)
        bound = torch.logsumexp(lw, dim=0) - math.log(self.num_particles)  # (N,)
        return -bound.sum()

    def loss(self, model, guide, *args) -> float:
        """The same bound as a float, without gradients."""
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args))
