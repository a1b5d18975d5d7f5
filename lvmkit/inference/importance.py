"""Importance-sampled log p(x) per datapoint, for any model/guide pair.

Every sample site must sit inside ``pyro.plate("data", N)``, so the weights split per datapoint.
"""

from __future__ import annotations

import contextlib

import pyro
import torch
from torch import Tensor

from lvmkit.core.checks import check_count
from lvmkit.inference.likelihood import (
    LogLikelihood,
    estimate_per_batch,
    no_guide,
    weight_summary,
)
from lvmkit.inference.programs import (
    batch_rows,
    is_latent,
    particle_traces,
    per_datapoint,
    sum_out_enumerated,
)

# Particle-datapoints per vectorized pass by default. On a CPU, few enough that each pass's
# tensors stay below the size the allocator hands back to the system when freed: fresh ones are
# page-faulted in again on every pass (a 784-400-400 VAE: 1.4x slower at 65536; at 2048 the
# passes are many enough for their Python to cost 1.1x at K = 5000); on a GPU, enough to fill it.
PASS_SIZE = {"cpu": 4096}
GPU_PASS_SIZE = 65536


def default_particle_chunk(num_samples: int, args: tuple) -> int:
    """Particles per pass over the batch ``args`` when the caller gives no ``particle_chunk``."""
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
    per_pass = PASS_SIZE.get(device.type, GPU_PASS_SIZE)
    return max(1, min(num_samples, per_pass // batch_rows(args)))


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

    Latents the guide does not sample are summed out where marked for enumeration; when the
    guide samples nothing (or is None), log p(x) is exact (``method="exact"``). The modules
    behind model and guide are put in eval mode while estimating. Each batch draws from its
    own stream, seeded by ``seed`` and its number, so the values do not depend on how the
    batches are shared: under torchrun each process estimates its share and every process gets
    all the values, in order, equal to one process's.

    Where the encoder is a poor proposal (PSIS k-hat > 0.7, ``lvmkit.diagnostics``), this is a
    loose lower bound: ``lvmkit.ais`` is then the tighter estimate.

    Parameters
    ----------
    model, guide : callable
        Pyro programs over a batch, every sample site in ``pyro.plate("data", N)``; the guide
        may be None (nothing to sample).
    data : Tensor of shape (N, ...), tuple of such tensors, or Dataset
        The model's arguments (a tuple's passed positionally).
    num_samples : int
        K, the draws of z per datapoint.
    batch_size : int
        Datapoints per pass.
    particle_chunk : int, optional
        Draws per pass (default: about 4096 particle-datapoints per pass on a CPU, 65536 on a
        GPU), so that memory stays bounded for K in the thousands.
    discrete : bool, optional
        Whether to add bits per dimension (default: ImageData with levels).
    seed : int
        Seeds every batch's draws.
    device : str or torch.device, optional
        Where to compute (None: where the modules' parameters are).
    progress : bool
        A progress bar.
    params : FitResult or dict, optional
        The fit whose parameters to use (what ``lvmkit.fit`` returned), or a dict of
        ``pyro.param`` names to values; None uses Pyro's global parameter store, and warns
        about ``pyro.param`` sites that had no value there.

    Returns
    -------
    LogLikelihood
        ``values`` (N,) in nats, ``mean``, ``stderr`` over datapoints, ``mc_stderr``,
        ``bits_per_dim`` where defined, ``method="importance"`` (or "exact").
    """
    check_count("num_samples", num_samples)
    check_count("batch_size", batch_size)
    guide = guide or no_guide
    if particle_chunk is not None:
        check_count("particle_chunk", particle_chunk)

    def estimate(batch, nesting, tick):
        chunk = particle_chunk or default_particle_chunk(num_samples, batch)
        lse = lse2 = None
        for k0 in range(0, num_samples, chunk):
            k = min(chunk, num_samples - k0)
            # The first pass checks the batch's values and parameters against their supports;
            # the rest, the same data with other draws, skip the checks (~10% of the time).
            with contextlib.nullcontext() if k0 == 0 else pyro.validation_enabled(False):
                lw = log_weights(model, guide, *batch, num_samples=k, plate_nesting=nesting)
            parts = torch.logsumexp(lw, 0), torch.logsumexp(2 * lw, 0)
            lse = parts[0] if lse is None else torch.logaddexp(lse, parts[0])
            lse2 = parts[1] if lse2 is None else torch.logaddexp(lse2, parts[1])
        tick(1)
        return weight_summary(lse, lse2, num_samples)

    est = estimate_per_batch(
        model,
        guide,
        data,
        estimate,
        what="log p(x)",
        batch_size=batch_size,
        seed=seed,
        device=device,
        progress=progress,
        params=params,
        discrete=discrete,
    )
    # a guide with no latent leaves every latent to exact enumeration
    exact = not any(is_latent(site) for site in est.guide_trace.nodes.values())
    return est.summary(1 if exact else num_samples, "exact" if exact else "importance")
