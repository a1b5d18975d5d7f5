"""Bidirectional Monte Carlo (Grosse et al. 2015): forward AIS from the proposal and reverse AIS
from the exact posterior draws that simulated data carry sandwich log p(x) between a stochastic
lower and upper bound; their gap says how many temperatures the model needs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pyro import poutine
from torch import Tensor

from lvmkit.core.processes import gather_rows, group
from lvmkit.core.rng import seeded
from lvmkit.data import as_dataset
from lvmkit.inference.annealing import (
    AnnealingPath,
    _check_settings,
    anneal,
    tuned_step_sizes,
)
from lvmkit.inference.likelihood import LogLikelihood, estimate_per_batch, log_mean_weight
from lvmkit.inference.programs import is_latent


@dataclass
class Sandwich:
    """Bidirectional Monte Carlo bounds on log p(x) of data simulated from the model.

    Parameters
    ----------
    lower : LogLikelihood
        Forward AIS: a stochastic lower bound.
    upper : LogLikelihood
        Reverse AIS started from the latents that generated each datapoint: a stochastic upper
        bound.
    data : tuple of Tensor
        The simulated model arguments, shaped like ``data_like``'s.
    """

    lower: LogLikelihood
    upper: LogLikelihood
    data: tuple[Tensor, ...]

    @property
    def gap(self) -> float:
        """Mean upper minus mean lower bound, in nats per datapoint: how far forward AIS with
        these settings can be from log p(x) on such data."""
        return self.upper.mean - self.lower.mean

    @property
    def gap_mc_stderr(self) -> float:
        """The Monte Carlo standard error of ``gap``: a gap within about two of these of zero
        (even a slightly negative one) says the bounds have met at this precision."""
        return math.hypot(self.lower.mc_stderr, self.upper.mc_stderr)

    def __str__(self) -> str:
        return (
            f"{self.lower.mean:.4f} <= log p(x) <= {self.upper.mean:.4f} nats "
            f"(gap {self.gap:.4f} ± {self.gap_mc_stderr:.4f}; AIS {self.lower.num_samples} chains "
            f"x {self.lower.steps} steps)"
        )


def simulate(model, args: tuple) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
    """Draw every observed site of ``model(*args)`` from the model: (the model arguments with
    the simulated values in place of the observed ones, every latent's value by name).

    Each observed site's ``obs`` must be one of the arguments (possibly reshaped), so that the
    simulated data can be passed back to the model and its guide."""
    trace = poutine.trace(poutine.uncondition(model)).get_trace(*args)
    new_args = list(args)
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or not site["infer"].get("was_observed"):
            continue
        if type(site["fn"]).__name__ == "Unit":  # pyro.factor: nothing to simulate
            continue
        obs, value = site["infer"]["obs"], site["value"]
        i = _argument_of(obs, args)
        if i is None:
            raise ValueError(
                f"observed site {name!r}: its obs is not one of the model's arguments, so "
                "simulated data cannot be passed back to the model; observe the argument "
                "itself (obs=x, reshaped if need be) for BDMC"
            )
        new_args[i] = value.detach().reshape(args[i].shape).to(args[i].dtype)
    latents = {n: s["value"].detach() for n, s in trace.nodes.items() if is_latent(s)}
    return tuple(new_args), latents


def _argument_of(obs: Tensor, args: tuple) -> int | None:
    """The position of the argument that ``obs`` is (or holds reshaped), else None."""
    for i, arg in enumerate(args):
        if arg is obs:
            return i
    for i, arg in enumerate(args):
        if isinstance(arg, Tensor) and arg.numel() == obs.numel():
            if torch.equal(arg.reshape(-1).to(obs.dtype), obs.reshape(-1)):
                return i
    return None


def bdmc(
    model,
    data_like,
    *,
    guide=None,
    num_samples: int = 16,
    steps: int = 100,
    leapfrog_steps: int = 5,
    step_size: float = 0.05,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    params=None,
) -> Sandwich:
    """Sandwich log p(x) between forward and reverse AIS on data simulated from the model.

    For each datapoint of ``data_like`` (a tensor, tuple or Dataset giving the model's
    arguments: only their shapes and any unobserved inputs matter) it draws the latents and
    every observed site from the model, runs forward AIS from q(z|x) (``guide``, or the prior)
    and reverse AIS from the latents that generated the data, with the settings of
    ``lvmkit.ais``. Cost: twice that of ``ais`` on the same data. The gap shrinks as ``steps``
    grows: choose the steps of ``ais`` where it is small enough for the question at hand.

    Parameters
    ----------
    model : callable
        A Pyro program whose every observed site's ``obs`` is one of its arguments.
    data_like : Tensor of shape (N, ...), tuple of such tensors, or Dataset
        Arguments shaped like the data to simulate, N datapoints.
    guide, num_samples, steps, leapfrog_steps, step_size, batch_size, seed, device, progress,
    params
        As for ``lvmkit.ais``.

    Returns
    -------
    Sandwich
        ``lower`` and ``upper`` (LogLikelihood, values (N,) in nats), ``gap`` and
        ``gap_mc_stderr`` (nats per datapoint), ``data`` (the simulated arguments, shaped like
        ``data_like``'s).
    """
    betas = _check_settings(num_samples, steps, leapfrog_steps, step_size)
    dataset = as_dataset(data_like, "data_like")
    with seeded(seed):
        tensors = dataset.batch(torch.arange(len(dataset)))
    upper, upper_var, simulated = [], [], []

    def estimate(batch, nesting, tick):
        args, latents = simulate(model, batch)
        tuning = dict(plate_nesting=nesting, leapfrog_steps=leapfrog_steps, step_size=step_size)
        schedule = tuned_step_sizes(model, guide, args, betas, **tuning)
        path = AnnealingPath(model, guide, args, num_chains=num_samples, plate_nesting=nesting)
        lower, _ = anneal(path, path.start, betas, leapfrog_steps=leapfrog_steps,
                          step_sizes=schedule, tick=tick)  # fmt: skip
        exact = {
            n: path.latents[n].transform.inv(latents[n]).expand_as(path.start[n]).clone()
            for n in path.latents
        }
        # the reverse chain makes the same transitions in the opposite order
        reverse, _ = anneal(path, exact, betas.flip(0), leapfrog_steps=leapfrog_steps,
                            step_sizes=schedule.flip(0), tick=tick)  # fmt: skip
        value, var = log_mean_weight(reverse)
        upper.append(-value.double())
        upper_var.append(var.double())
        simulated.append(args)
        return log_mean_weight(lower)

    common = dict(seed=seed, device=device, progress=progress, params=params)
    est = estimate_per_batch(
        model,
        guide,
        tensors,
        estimate,
        what="BDMC",
        batch_size=batch_size,
        discrete=False,
        ticks_per_batch=2 * steps,
        check_guide=guide is not None,
        **common,
    )
    g = group(est.values.device)
    upper = gather_rows(torch.cat(upper) if upper else est.values[:0], g)
    upper_var = gather_rows(torch.cat(upper_var) if upper_var else est.values[:0], g)
    data = tuple(
        gather_rows(torch.cat([args[i] for args in simulated]), g) for i in range(len(tensors))
    )
    summary = dict(dims=est.dims, discrete=False, num_samples=num_samples, method="ais")
    return Sandwich(
        lower=est.summary(num_samples, "ais", steps=steps),
        upper=LogLikelihood.of(upper, mc_var=upper_var, steps=steps, **summary),
        data=data,
    )
