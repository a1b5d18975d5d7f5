"""Importance-sampled log p(x) per datapoint, for any model/guide pair, and ``evaluate`` for a
built-in model (exact where the model can say log p(x) itself).

Every sample site must sit inside ``pyro.plate("data", N)``, so the weights split per datapoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm import tqdm

from lvmkit.data import as_dataset, check_count
from lvmkit.inference.distributed import Group, gather_rows, group, shard
from lvmkit.inference.programs import (
    evaluating,
    fitted_params,
    is_latent,
    nesting_of,
    on_device,
    particle_traces,
    per_datapoint,
    place,
    sum_out_enumerated,
    trace_once,
)
from lvmkit.models.base import check_builtin


def log_weights(model, guide, *args, num_samples: int = 1, plate_nesting: int) -> Tensor:
    """log p(x_n, z_kn) - log q(z_kn | x_n) for K = num_samples draws z_kn ~ q(z|x_n): (K, N).

    ``plate_nesting`` is ``max_plate_nesting(model, guide, *args)``; particles are vectorized in a
    plate to its left, so the model must put its batch dims in plates (standard Pyro style).
    """
    guide_tr, model_tr = particle_traces(
        model, guide, args, num_samples=num_samples, plate_nesting=plate_nesting
    )
    log_p = sum_out_enumerated(per_datapoint(model_tr, plate_nesting))  # enumerated c summed out
    lw = log_p - per_datapoint(guide_tr, plate_nesting)
    return lw.expand(num_samples, -1)


@dataclass
class LogLikelihood:
    """log p(x) per datapoint, in nats."""

    values: Tensor = field(repr=False)  # (N,), float64, on the CPU
    mean: float
    stderr: float  # standard error of the mean over datapoints
    bits_per_dim: float | None  # -mean / (D log 2), for discrete data; None otherwise
    num_samples: int  # importance samples per datapoint (1 when exact)
    exact: bool = False  # computed in closed form, not estimated

    @classmethod
    def of(cls, values: Tensor, dataset, discrete: bool, num_samples: int, exact: bool):
        """Summarise per-datapoint values (N,) of ``dataset`` (bits per dimension count the
        numbers of one datapoint)."""
        dims = dataset.batch(torch.arange(1))[0][0].numel()
        values = values.double().cpu()
        mean = float(values.mean())
        stderr = float(values.std() / math.sqrt(len(values))) if len(values) > 1 else math.nan
        bpd = -mean / (dims * math.log(2)) if discrete else None
        return cls(values, mean, stderr, bpd, num_samples, exact)


def _batches(dataset, batch_size: int, progress: bool, what: str, g: Group):
    """(batch number, batch) for this process's contiguous share of the batches (all of them
    outside torchrun); a progress bar on rank 0."""
    starts = list(range(0, len(dataset), batch_size))
    numbers = range(len(starts))[shard(len(starts), g)]
    show = progress and g.main
    for b in tqdm(numbers, desc=what, unit="batch", disable=not show, dynamic_ncols=True):
        yield b, dataset.batch(torch.arange(starts[b], min(starts[b] + batch_size, len(dataset))))


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
    device: str | torch.device | None = None,
    progress: bool = False,
    params=None,
) -> LogLikelihood:
    """log p(x) ~= log (1/K) sum_k p(x, z_k) / q(z_k | x), z_k ~ q(z | x), per datapoint.

    data: a tensor, a tuple of tensors (passed positionally) or a Dataset. Particles are drawn
    ``particle_chunk`` at a time (default: about 65k particle-datapoints per pass), so memory
    stays bounded for K in the thousands. ``discrete`` (default: ImageData with levels) adds
    bits per dimension. The modules behind model and guide are put in eval mode while
    estimating. device: where to compute (None: where the modules' parameters are).
    params: the fit whose parameters to use (what ``lvmkit.fit`` returned), or a dict of
    ``pyro.param`` names to values (``result.params``, or values of your own); None uses Pyro's
    global parameter store, and warns about ``pyro.param`` sites that had no value there.
    Latents the guide does not sample are summed out where marked for enumeration.
    Each batch draws from its own stream, seeded by ``seed`` and its number, so the values do
    not depend on how the batches are shared: under torchrun each process estimates its share
    and every process gets all the values, in order, equal to one process's.
    """
    check_count("num_samples", num_samples)
    check_count("batch_size", batch_size)
    if particle_chunk is not None:
        check_count("particle_chunk", particle_chunk)
    if discrete is None:
        discrete = getattr(data, "levels", None) is not None
    device = place(model, guide, device=device)
    dataset = as_dataset(data, "data").to(device)
    chunk = particle_chunk or max(1, min(num_samples, 65536 // batch_size))
    values, g = [], group(device)
    devices = [device] if device.type == "cuda" else []
    with (
        evaluating(model, guide),
        torch.random.fork_rng(devices=devices),
        torch.no_grad(),
        fitted_params(params),
    ):
        with on_device(device):
            first = dataset.batch(torch.arange(min(batch_size, len(dataset))))
            torch.manual_seed(seed)
            guide_tr, model_tr = trace_once(model, guide, *first)
            nesting = nesting_of(guide_tr, model_tr)
            # a guide with no latent leaves every latent to exact enumeration
            exact = not any(is_latent(site) for site in guide_tr.nodes.values())
            for b, batch in _batches(dataset, batch_size, progress, "log p(x)", g):
                torch.manual_seed(hash((seed, b)) % 2**63)
                total = None
                for k0 in range(0, num_samples, chunk):
                    k = min(chunk, num_samples - k0)
                    lw = log_weights(model, guide, *batch, num_samples=k, plate_nesting=nesting)
                    lse = torch.logsumexp(lw, dim=0)
                    total = lse if total is None else torch.logaddexp(total, lse)
                values.append(total - math.log(num_samples))
    mine = torch.cat(values) if values else first[0].new_zeros(0)
    return LogLikelihood.of(gather_rows(mine, g), dataset, discrete, num_samples, exact=exact)


def evaluate(
    model,
    data,
    *,
    num_samples: int = 1000,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> LogLikelihood:
    """log p(x) of a built-in model (``lvmkit.models.BuiltinModel``) on ``data`` (ImageData,
    which ``model.prepare`` turns into the model's units): exact where the model declares
    ``density = "exact"`` (mixtures, autoregressive models), importance-sampled with its guide
    otherwise. Returns a LogLikelihood with ``exact`` set accordingly."""
    check_builtin(model, data, "evaluate", "lvmkit.log_likelihood(model, guide, data)")
    if model.density is None:
        raise ValueError(
            f"{type(model).__name__} defines no density p(x) to evaluate (an autoencoder's code "
            "has no prior); fit a latent variable model such as lvm instead"
        )
    prepared = model.prepare(data)
    discrete = model.data_kind != "continuous"
    if model.density == "importance":
        return log_likelihood(
            model.model,
            model.guide,
            prepared,
            num_samples=num_samples,
            batch_size=batch_size,
            discrete=discrete,
            seed=seed,
            device=device,
            progress=progress,
        )
    device = place(model, device=device)
    dataset = as_dataset(prepared, "data").to(device)
    g = group(device)
    with evaluating(model), torch.no_grad(), on_device(device):
        batches = _batches(dataset, batch_size, progress, "log p(x)", g)
        values = [model.log_prob(*b) for _, b in batches]
    mine = torch.cat(values) if values else torch.zeros(0, device=device)
    return LogLikelihood.of(gather_rows(mine, g), dataset, discrete, 1, exact=True)
