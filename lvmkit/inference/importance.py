"""Importance weights per datapoint, and the importance-weighted bound (IWAE) built on them.

Pyro's ``RenyiELBO(alpha=0)`` takes the log-mean-exp over particles of the weight of a whole batch,
which for N independent datapoints is a far looser bound than Burda et al.'s per-datapoint IWAE.
Here every sample site must sit inside ``pyro.plate("data", N)``, so the weights split per
datapoint and the log-mean-exp is taken for each datapoint separately.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor

DATA_PLATE = "data"


def is_plate_site(site) -> bool:
    """A plate's own bookkeeping site (its subsample indices) in a trace or message."""
    return type(site["fn"]).__name__ == "_Subsample"


def is_latent(site) -> bool:
    """An unobserved sample site that is a random variable (not a plate's bookkeeping)."""
    return site["type"] == "sample" and not site["is_observed"] and not is_plate_site(site)


def _cell_value(cell):
    try:
        return cell.cell_contents
    except ValueError:  # a closure variable not assigned yet
        return None


def modules_behind(*fns) -> list[torch.nn.Module]:
    """The distinct nn.Modules behind model/guide callables: a module itself, the owner of a
    bound method (``lvm.model``), and the modules a plain function holds in its closure or
    names as globals (a user's ``def model(x): pyro.module("dec", dec)``)."""
    found = {}
    for fn in fns:
        candidates = [fn, getattr(fn, "__self__", None)]
        code = getattr(fn, "__code__", None)
        if code is not None:
            candidates += [_cell_value(c) for c in fn.__closure__ or ()]
            candidates += [fn.__globals__.get(name) for name in code.co_names]
        for obj in candidates:
            if isinstance(obj, torch.nn.Module):
                found[id(obj)] = obj
    return list(found.values())


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


def per_datapoint(trace, plate_nesting: int, *, latent_only: bool = False) -> Tensor:
    """Sum of a trace's scaled log-probs per (particle, datapoint): (K or 1, N or 1).

    Sites' batch shapes are right-aligned against (K, ..., N, ...), with the particle dim at
    -plate_nesting-1; every dim but those two is summed. ``latent_only`` skips observed sites.
    """
    trace = prune_subsample_sites(trace)  # drop the plates' own bookkeeping sites
    trace.compute_log_prob()
    total = torch.zeros(1, 1)
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or (latent_only and site["is_observed"]):
            continue
        frames = [f for f in site["cond_indep_stack"] if f.name == DATA_PLATE]
        if not frames:
            raise ValueError(
                f"site {name!r} is not inside pyro.plate({DATA_PLATE!r}, N): importance "
                "weights per datapoint need every sample site in the data plate"
            )
        lp = site["log_prob"]
        lp = lp.reshape((1,) * (plate_nesting + 1 - lp.dim()) + lp.shape)
        keep = {0, plate_nesting + 1 + frames[0].dim}  # particle axis, data axis
        other = [d for d in range(lp.dim()) if d not in keep]
        total = total.to(lp) + (lp.sum(other) if other else lp)
    return total


def log_weights(model, guide, *args, num_particles: int = 1, plate_nesting: int) -> Tensor:
    """log p(x_n, z_kn) - log q(z_kn | x_n) for K = num_particles draws z_kn ~ q(z|x_n): (K, N).

    ``plate_nesting`` is ``max_plate_nesting(model, guide, *args)``; particles are vectorized in a
    plate to its left, so the model must put its batch dims in plates (standard Pyro style).
    """
    with pyro.plate("particles", num_particles, dim=-plate_nesting - 1):
        guide_tr = poutine.trace(guide).get_trace(*args)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args)
    lw = per_datapoint(model_tr, plate_nesting) - per_datapoint(guide_tr, plate_nesting)
    return lw.expand(num_particles, -1)


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


@dataclass
class LogLikelihood:
    """Importance-sampled log p(x) per datapoint, in nats."""

    values: Tensor  # (N,)
    mean: float
    stderr: float  # standard error of the mean over datapoints
    bits_per_dim: float | None  # -mean / (D log 2), for discrete data; None otherwise
    num_samples: int


def log_likelihood(
    model,
    guide,
    data,
    *,
    num_samples: int = 1000,
    batch_size: int = 128,
    particle_chunk: int | None = None,
    discrete: bool | None = None,
    seed: int = 0,
) -> LogLikelihood:
    """log p(x) ~= log (1/K) sum_k p(x, z_k) / q(z_k | x), z_k ~ q(z | x), per datapoint.

    data: a tensor, a tuple of tensors (passed positionally) or ImageData. Particles are drawn
    ``particle_chunk`` at a time (default: about 65k particle-datapoints per pass), so memory
    stays bounded for K in the thousands. ``discrete`` (default: ImageData with levels) adds
    bits per dimension. Built-in models are put in eval mode while estimating.
    """
    from lvmkit.inference.svi import as_dataset  # svi imports this module

    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if discrete is None:
        discrete = getattr(data, "levels", None) is not None
    dataset = as_dataset(data, "data")
    chunk = particle_chunk or max(1, min(num_samples, 65536 // batch_size))
    modes = [(m, m.training) for m in modules_behind(model, guide)]
    values, nesting = [], None
    try:
        for module, _ in modes:
            module.eval()
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(seed)
            for start in range(0, len(dataset), batch_size):
                batch = dataset.batch(torch.arange(start, min(start + batch_size, len(dataset))))
                if nesting is None:
                    nesting = max_plate_nesting(model, guide, *batch)
                total = None
                for k0 in range(0, num_samples, chunk):
                    k = min(chunk, num_samples - k0)
                    lse = torch.logsumexp(
                        log_weights(model, guide, *batch, num_particles=k, plate_nesting=nesting),
                        dim=0,
                    )
                    total = lse if total is None else torch.logaddexp(total, lse)
                values.append(total - math.log(num_samples))
    finally:
        for module, was_training in modes:
            module.train(was_training)
    values = torch.cat(values).double().cpu()
    mean = float(values.mean())
    stderr = float(values.std() / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    dims = dataset.batch(torch.arange(1))[0][0].numel()
    bpd = -mean / (dims * math.log(2)) if discrete else None
    return LogLikelihood(values, mean, stderr, bpd, num_samples)
