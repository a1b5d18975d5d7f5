"""What every estimator of log p(x) shares: the ``LogLikelihood`` it returns, and the batching,
seeding, sharding and summary of estimates per datapoint (``estimate_per_batch``).

Every sample site must sit inside ``pyro.plate("data", N)``, so the estimates split per datapoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm import tqdm

from lvmkit.core.checks import check_count
from lvmkit.core.processes import gather_rows, group, shard
from lvmkit.core.rng import seeded
from lvmkit.data import as_dataset
from lvmkit.inference.programs import (
    evaluating,
    fitted_params,
    nesting_of,
    on_device,
    place,
    trace_once,
)


def log_mean_weight(lw: Tensor) -> tuple[Tensor, Tensor]:
    """From log weights (K, N): log (1/K) sum_k w_k (N,), and its Monte Carlo variance by the
    delta method (``weight_summary``)."""
    return weight_summary(torch.logsumexp(lw, 0), torch.logsumexp(2 * lw, 0), len(lw))


def weight_summary(lse: Tensor, lse2: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """From log sum_k w_k and log sum_k w_k^2 over K weights (N,): log (1/K) sum_k w_k (N,),
    and its Monte Carlo variance by the delta method, sum_k w~_k^2 - 1/K with w~ the normalised
    weights (N,); NaN for K = 1, where one draw says nothing of its spread."""
    if k == 1:
        return lse, torch.full_like(lse, math.nan)
    var = (lse2 - 2 * lse).exp() - 1 / k
    return lse - math.log(k), var.clamp(min=0)


@dataclass
class LogLikelihood:
    """log p(x) per datapoint, in nats, with its two standard errors.

    ``stderr`` is the spread of log p(x) over the datapoints divided by sqrt(N): how far the mean
    would move on other data from the same source. ``mc_stderr`` is the estimator's own Monte
    Carlo error of the mean: how far it would move with other random draws on the same data
    (from each datapoint's weights by the delta method, ``mc_errors``; it says nothing of the
    bias of a loose proposal, which PSIS k-hat and AIS address, and where k-hat > 0.7 the
    weights' variance is itself estimated from draws that miss the tail: reruns with other
    seeds then spread several times wider than it says). ``bits_per_dim`` counts the
    dimensions the model predicts (``dims`` per datapoint): the hidden pixels of a completion,
    every pixel otherwise; for a continuous density of dequantized pixels the values already
    include the bins' width, so they bound the discrete log-likelihood.

    Parameters
    ----------
    values : Tensor of shape (N,)
        float64, on the CPU.
    mean, stderr, mc_stderr : float
    bits_per_dim : float, optional
        None for continuous data.
    num_samples : int
        Draws, AIS chains or dequantizations per datapoint; 1 when exact.
    method : {"exact", "bound", "dequantized", "importance", "ais"}
    steps : int, optional
        AIS temperatures.
    dims : float
        Dimensions predicted per datapoint (mean).
    mc_errors : Tensor of shape (N,), optional
    seconds : float
        How long the estimate took.
    """

    values: Tensor = field(repr=False)  # (N,), float64, on the CPU
    mean: float
    stderr: float  # over datapoints: values.std() / sqrt(N)
    mc_stderr: float  # Monte Carlo error of the mean: sqrt(sum mc_errors^2) / N; 0 when exact
    bits_per_dim: float | None  # -mean / (dims log 2) for discrete data; None otherwise
    num_samples: int  # importance samples (or AIS chains) per datapoint; 1 when exact
    # "exact", "bound" (a lower bound in one pass), "dequantized" (an exact density of
    # dequantized pixels, averaged over num_samples draws), "importance", "ais"
    method: str = "importance"
    steps: int | None = None  # AIS temperatures
    dims: float = math.nan  # dimensions predicted per datapoint (mean)
    mc_errors: Tensor | None = field(default=None, repr=False)  # (N,) per datapoint
    seconds: float = math.nan  # how long the estimate took

    @property
    def exact(self) -> bool:
        """Computed in closed form, not estimated."""
        return self.method == "exact"

    def row(self) -> dict:
        """The summary as plain numbers, e.g. for JSON: method, samples, steps, mean, both
        standard errors (None where undefined), bits/dim (where defined) and seconds."""
        keys = ("method", "num_samples", "steps", "mean", "stderr", "mc_stderr", "bits_per_dim")
        row = {k: getattr(self, k) for k in (*keys, "seconds") if getattr(self, k) is not None}
        # NaN (a standard error from one draw) is not JSON: None says "undefined" there
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}

    @classmethod
    def of(
        cls,
        values: Tensor,
        *,
        dims: Tensor,
        discrete: bool,
        num_samples: int,
        method: str,
        mc_var: Tensor | None = None,
        steps: int | None = None,
        seconds: float = math.nan,
    ) -> LogLikelihood:
        """Summarise per-datapoint values (N,), the dimensions each predicts (N,) and the
        Monte Carlo variance of each (N,; None when exact)."""
        values = values.double().cpu()
        n = len(values)
        mean = float(values.mean())
        stderr = float(values.std() / math.sqrt(n)) if n > 1 else math.nan
        if mc_var is None:
            errors = torch.zeros_like(values)
        else:
            errors = mc_var.double().cpu().sqrt()
        mc_stderr = float(errors.square().sum().sqrt() / n)
        dims = dims.double().cpu()
        bpd = -float(values.sum() / (dims.sum() * math.log(2))) if discrete else None
        return cls(
            values,
            mean,
            stderr,
            mc_stderr,
            bpd,
            num_samples,
            method=method,
            steps=steps,
            dims=float(dims.mean()),
            mc_errors=errors,
            seconds=seconds,
        )

    def __str__(self) -> str:
        return describe(self.row())


def describe(row: dict) -> str:
    """A ``LogLikelihood.row()`` as one line: how, the value, its errors and bits/dim."""
    k = row["num_samples"]
    how = {"exact": "exact", "bound": "a lower bound", "importance": f"IS K={k}",
           "dequantized": f"exact density of {k} dequantizations, a lower bound"}.get(
        row["method"], f"AIS {k} chains x {row.get('steps')} steps"
    )
    errors = ", ".join(f"{name} {row[key]:.4f}" for key, name in
                       (("stderr", "stderr over data"), ("mc_stderr", "Monte Carlo stderr"))
                       if row.get(key) is not None)  # fmt: skip
    unit = f", {row['bits_per_dim']:.4f} bits/dim" if row.get("bits_per_dim") is not None else ""
    return f"log p(x) = {row['mean']:.4f} nats{unit} ({how}; {errors})"


def predicted_dims(dataset, batch: tuple[Tensor, ...]) -> Tensor:
    """How many numbers the model predicts for each datapoint of ``batch`` (N,): what the
    dataset says (``dataset.predicted_dims(batch)``, e.g. a completion's hidden pixels), else
    every element of the batch's first tensor."""
    if hasattr(dataset, "predicted_dims"):
        return dataset.predicted_dims(batch).double()
    x = batch[0]
    return torch.full((len(x),), float(x[0].numel()), dtype=torch.float64, device=x.device)


def dequantization_offset(levels: int | None, dims: Tensor) -> Tensor | float:
    """What turns a density of pixels dequantized from ``levels`` levels, in [0, 1), into a
    bound on the discrete log-likelihood: -dims * log(levels) per datapoint (each bin has
    width 1/levels); 0 when ``levels`` is None (nothing dequantized)."""
    return 0.0 if levels is None else -dims * math.log(levels)


def dequantized_levels(dataset) -> int | None:
    """The levels of a dataset's dequantized pixels (ImageData.dequantized), else None."""
    return dataset.levels if getattr(dataset, "dequantized", False) else None


@dataclass
class Estimates:
    """What ``estimate_per_batch`` gathered over all the data: per-datapoint (N,) tensors,
    and the first batch's guide and model traces."""

    values: Tensor
    mc_var: Tensor
    dims: Tensor
    discrete: bool
    guide_trace: object
    model_trace: object
    seconds: float

    def summary(self, num_samples: int, method: str, steps: int | None = None) -> LogLikelihood:
        exact = method in ("exact", "bound")  # no Monte Carlo error
        return LogLikelihood.of(
            self.values,
            dims=self.dims,
            discrete=self.discrete,
            num_samples=num_samples,
            method=method,
            mc_var=None if exact else self.mc_var,
            steps=steps,
            seconds=self.seconds,
        )


def estimate_per_batch(
    model,
    guide,
    data,
    estimate: Callable,
    *,
    what: str,
    batch_size: int,
    seed: int,
    device,
    progress: bool,
    params,
    discrete: bool | None,
    ticks_per_batch: int = 1,
    check_guide: bool = True,
    trace: bool = True,
    dequantized: int | None = None,
) -> Estimates:
    """Run ``estimate(batch, plate_nesting, tick)`` -> (values (N,), mc_var (N,)) over the
    batches of ``data``, as every estimator of log p(x) does: model and guide in eval mode,
    without gradients, against ``params``, on ``device``; each batch drawn from its own stream,
    seeded by ``seed`` and its number, so that the values do not depend on how the batches are
    shared: under torchrun each process estimates its share and every process gets all the
    values, in order, equal to one process's. ``tick(n)`` advances the progress bar.
    ``trace=False`` skips tracing model and guide (``plate_nesting`` is then None).
    ``dequantized``: the levels of the data's dequantized pixels, when the dataset cannot say
    (``dequantized_levels``).

    The values of dequantized data are turned into bounds on the discrete log-likelihood.
    """
    check_count("batch_size", batch_size)
    start = time.perf_counter()
    if discrete is None:
        discrete = getattr(data, "levels", None) is not None
    device = place(model, guide, device=device)
    dataset = as_dataset(data, "data").to(device)
    dequantized = dequantized or dequantized_levels(dataset)
    g = group(device)
    starts = list(range(0, len(dataset), batch_size))
    mine = range(len(starts))[shard(len(starts), g)]
    bar = tqdm(
        total=len(mine) * ticks_per_batch,
        desc=what,
        disable=not (progress and g.main),
        dynamic_ncols=True,
    )
    values, variances, dims = [], [], []
    with (
        evaluating(model, guide),
        seeded(seed, device),
        torch.no_grad(),
        fitted_params(params),
        on_device(device),
        bar,
    ):
        first = dataset.batch(torch.arange(min(batch_size, len(dataset))))
        guide_tr = model_tr = nesting = None
        if trace:  # the plate nesting, and the checks of sites and plates it makes
            guide_tr, model_tr = trace_once(model, guide or no_guide, *first)
            nesting = nesting_of(guide_tr, model_tr, check_guide=check_guide)
        for b in mine:
            torch.manual_seed(hash((seed, b)) % 2**63)
            index = torch.arange(starts[b], min(starts[b] + batch_size, len(dataset)))
            batch = dataset.batch(index)
            v, var = estimate(batch, nesting, bar.update)
            d = predicted_dims(dataset, batch)
            values.append(v.double() + dequantization_offset(dequantized, d))
            variances.append(var.double())
            dims.append(d)
    empty = torch.zeros(0, dtype=torch.float64, device=device)
    values, variances, dims = (
        gather_rows(torch.cat(parts) if parts else empty, g) for parts in (values, variances, dims)
    )
    seconds = time.perf_counter() - start
    return Estimates(values, variances, dims, discrete, guide_tr, model_tr, seconds)


def loss_bits_per_dim(nats: float, dataset) -> float:
    """A loss of discrete ``dataset`` (a Dataset, or tensors) in nats per datapoint (-log p(x),
    or a negative ELBO, as a fit reports it) in bits per dimension predicted; a density of
    dequantized pixels gains the bins' width, D log(levels): a bound on the discrete loss."""
    dataset = as_dataset(dataset)
    with seeded(0):  # a completion's masks are drawn: keep the caller's stream
        batch = dataset.batch(torch.arange(len(dataset)))
    dims = predicted_dims(dataset, batch)
    offset = torch.as_tensor(dequantization_offset(dequantized_levels(dataset), dims))
    offset = offset.double().mean()
    return (nats - float(offset)) / (float(dims.mean()) * math.log(2))


def no_guide(*args, **kwargs):
    """The guide of a model whose every latent is summed out (or drawn from its prior)."""
