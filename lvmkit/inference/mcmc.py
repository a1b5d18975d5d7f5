"""NUTS through Pyro's MCMC: posteriors over latents of a fitted model, or over parameters."""

from __future__ import annotations

import warnings

import pyro
from pyro import poutine
from pyro.infer import MCMC, NUTS

from lvmkit.core.rng import seeded
from lvmkit.inference.programs import fitted_params


def nuts(
    model,
    *args,
    num_samples: int = 500,
    warmup_steps: int = 500,
    num_chains: int = 4,
    seed: int = 0,
    max_plate_nesting: int | None = None,
    params=None,
    progress: bool = False,
) -> MCMC:
    """Run NUTS on ``model(*args)`` and return Pyro's MCMC object (``get_samples()``,
    ``summary()``; ``lvmkit.diagnostics.mcmc_inference_data`` makes it ArviZ's). Parameters
    (pyro.param / pyro.module) stay fixed: only sample sites are sampled, discrete ones marked
    for enumeration are summed out.

    For a fitted LVM, ``nuts(lvm.model, x[:3])`` samples p(z | x) for three datapoints; for a
    mixture's parameters, ``nuts(gmm.bayesian_model, x)``.

    Parameters
    ----------
    model : callable
        A Pyro program; ``model(*args)`` is what is sampled.
    *args
        Its arguments (the data).
    num_samples : int
        Draws per chain after warm-up.
    warmup_steps : int
        Adaptation steps per chain.
    num_chains : int
        4 by default, so that R-hat (which compares chains) is defined; Pyro runs them in
        parallel processes where there are spare CPU cores, one after another otherwise.
    seed : int
    max_plate_nesting : int, optional
        Pyro's, for enumerated discrete sites (found from a trace when None).
    params : FitResult or dict, optional
        The fit whose parameters to hold (what ``lvmkit.fit`` returned), or a dict of
        ``pyro.param`` names to values; None uses Pyro's global store, with a warning for
        ``pyro.param`` sites that had no value there.
    progress : bool
        Pyro's progress bars and its notes (e.g. that chains run one after another).

    Returns
    -------
    pyro.infer.MCMC
        ``get_samples()``, ``summary()``; ``lvmkit.diagnostics.mcmc_inference_data`` makes it
        ArviZ's.
    """
    pyro.set_rng_seed(seed)
    kernel = NUTS(model, max_plate_nesting=max_plate_nesting, jit_compile=False)
    with warnings.catch_warnings():
        if not progress:  # "num_chains=4 is more than available_cpu=1 ..." and the like
            warnings.filterwarnings("ignore", message="num_chains=", category=UserWarning)
        mcmc = MCMC(
            kernel,
            num_samples=num_samples,
            warmup_steps=warmup_steps,
            num_chains=num_chains,
            disable_progbar=not progress,
        )
    with seeded(seed), fitted_params(params):
        mcmc.run(*args)
        mcmc.lvmkit_dims = _dims(model, args, set(mcmc.get_samples()))
    return mcmc


def _dims(model, args: tuple, names: set[str]) -> dict[str, list[str]]:
    """ArviZ dim names of each latent site, as ``lvmkit.posterior`` names them: its axis in
    ``pyro.plate("data")`` is "datapoint", the others "<site>_dim_0", "<site>_dim_1", ..."""
    trace = poutine.trace(model).get_trace(*args)
    dims = {}
    for name, site in trace.nodes.items():
        if name not in names:  # observed, enumerated (summed out) or a plate
            continue
        rank = site["value"].dim()
        batch_rank = rank - len(site["fn"].event_shape)
        data = [batch_rank + f.dim for f in site["cond_indep_stack"] if f.name == "data"]
        others = iter(range(rank))
        dims[name] = [
            "datapoint" if axis in data else f"{name}_dim_{next(others)}" for axis in range(rank)
        ]
    return dims
