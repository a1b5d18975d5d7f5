"""NUTS through Pyro's MCMC: posteriors over latents of a fitted model, or over parameters."""

from __future__ import annotations

import pyro
import torch
from pyro.infer import MCMC, NUTS


def nuts(
    model,
    *args,
    num_samples: int = 500,
    warmup_steps: int = 500,
    num_chains: int = 1,
    seed: int = 0,
    max_plate_nesting: int | None = None,
    progress: bool = False,
) -> MCMC:
    """Run NUTS on ``model(*args)`` and return Pyro's MCMC object (``get_samples()``,
    ``summary()``; ArviZ reads it). Parameters (pyro.param / pyro.module) stay fixed: only
    sample sites are sampled, discrete ones marked for enumeration are summed out.

    For a fitted LVM, ``nuts(lvm.model, x[:3])`` samples p(z | x) for three datapoints; for a
    mixture's parameters, ``nuts(gmm.bayesian_model, x)``.
    """
    pyro.set_rng_seed(seed)
    kernel = NUTS(model, max_plate_nesting=max_plate_nesting, jit_compile=False)
    mcmc = MCMC(
        kernel,
        num_samples=num_samples,
        warmup_steps=warmup_steps,
        num_chains=num_chains,
        disable_progbar=not progress,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        mcmc.run(*args)
    return mcmc
