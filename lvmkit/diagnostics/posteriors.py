"""Looking at p(z | x): ArviZ InferenceData (of a guide's draws or of NUTS), PSIS k-hat.

All take any model/guide pair whose sample sites sit in ``pyro.plate("data", N)``, except where
a function says it needs a built-in model's Gaussian ``encode``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor

from lvmkit.core.checks import check_count
from lvmkit.core.processes import gather_objects, group, shard
from lvmkit.core.rng import seeded
from lvmkit.data.dataset import TensorData
from lvmkit.inference.programs import (
    fitted_params,
    is_latent,
    max_plate_nesting,
    on_device,
    particle_traces,
    per_datapoint,
    place,
    sum_out_enumerated,
)

MIN_PSIS_DRAWS = 10  # PSIS fits a Pareto to the largest ~3 sqrt(K) weights: fewer say nothing


def _arviz():
    with warnings.catch_warnings():  # ArviZ 0.x announces its 1.x refactor on import
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def _on(device: torch.device, args: tuple) -> tuple:
    return tuple(a.to(device) if isinstance(a, Tensor) else a for a in args)


@torch.no_grad()
def posterior(
    model,
    guide,
    *args,
    num_samples: int = 100,
    resample: bool = False,
    seed: int = 0,
    device=None,
    params=None,
):
    """Draws of the latents for every datapoint, as ``arviz.InferenceData``. Under torchrun
    each process draws for its share of the datapoints and every process gets them all, in
    order.

    By default the draws are q(z | x)'s, the guide's: weighting them by
    exp(log_importance_weight) turns them into draws from p(z | x). ``resample=True`` does that
    here: each datapoint's draws are resampled in proportion to their weights (with
    replacement), so they are (approximately) p(z | x)'s. ``idata.posterior.attrs["draws"]``
    says which. Latents the guide leaves to enumeration (``infer={"enumerate": "parallel"}``)
    are drawn from their exact conditional p(c | z, x), as Pyro's ``infer_discrete`` does.

    Groups: ``posterior`` (each latent site, dims chain, draw, datapoint, <site>_dim),
    ``sample_stats`` (``log_importance_weight``: log p(x, z) - log q(z | x) of the K proposals,
    enumerated latents summed out), ``log_likelihood`` and ``posterior_predictive`` (each
    observed site: log p(x | z), and x replicated from p(x | z)), ``observed_data``. Every
    sample site must sit in ``pyro.plate("data", N)``.

    Parameters
    ----------
    model, guide : callable
        Pyro programs over a batch.
    *args
        Their arguments: the data, N datapoints.
    num_samples : int
        Draws per datapoint.
    resample : bool
        Resample the draws by their importance weights (draws of p(z | x)).
    seed : int
    device : str or torch.device, optional
        Where to compute (None: where the modules behind model and guide are).
    params : FitResult or dict, optional
        The fit whose parameters to use (what ``lvmkit.fit`` returned), or a dict of
        ``pyro.param`` names to values; None uses Pyro's global store and warns about
        ``pyro.param`` sites that had no value there.

    Returns
    -------
    arviz.InferenceData
        One chain of ``num_samples`` draws per datapoint.
    """
    check_count("num_samples", num_samples)
    TensorData(tuple(a for a in args if isinstance(a, Tensor)), "data")  # rows, values: checked
    az = _arviz()
    device = place(model, guide, device=device)
    g = group(device)  # under torchrun each process draws for its share of the datapoints
    rows = shard(len(args[0]), g) if g.active else slice(None)
    args = _on(device, tuple(a[rows] if isinstance(a, Tensor) else a for a in args))
    with seeded(seed + g.rank, device), on_device(device), fitted_params(params):
        t = _posterior_traces(model, guide, args, num_samples, resample)
    groups, dims = _groups(t, num_samples, g)
    which = (
        "p(z|x): the guide's draws resampled in proportion to exp(log_importance_weight), the "
        "weights of the proposals they were drawn from"
        if resample
        else "q(z|x): the guide's draws; weight each by exp(log_importance_weight) for p(z|x)"
    )
    if not any(is_latent(s) for s in t.guide_tr.nodes.values()):
        which = "p(c|x): every latent is enumerated and drawn from its exact conditional"
    log_w = _all_rows(t.log_w.detach().cpu().numpy()[None], 2, g)
    idata = az.from_dict(**groups, sample_stats={"log_importance_weight": log_w},
                         dims={**dims, "log_importance_weight": ["datapoint"]})  # fmt: skip
    idata.posterior.attrs["draws"] = which
    return idata


@dataclass
class _Traces:
    """What ``posterior`` draws: the guide's and model's traces of K particles, the log
    weights (K, N), the enumerated sites' draws, the model given them, its replicates, and
    (resampling) which proposal each draw is."""

    guide_tr: object
    log_w: Tensor
    discrete: dict
    given_tr: object
    rep_tr: object
    nesting: int
    pick: Tensor | None


def _posterior_traces(model, guide, args, num_samples: int, resample: bool) -> _Traces:
    nesting = max_plate_nesting(model, guide, *args)
    guide_tr, model_tr = particle_traces(
        model, guide, args, num_samples=num_samples, plate_nesting=nesting
    )
    log_joint = per_datapoint(model_tr, nesting)  # (E..., K, N)
    log_w = sum_out_enumerated(log_joint) - per_datapoint(guide_tr, nesting)
    log_w = log_w.expand(num_samples, -1)
    discrete = _draw_enumerated(model_tr, log_joint, nesting)  # name -> (K, N, ...)
    with pyro.plate("particles", num_samples, dim=-nesting - 1):
        replayed = poutine.replay(model, trace=guide_tr)
        given_tr = model_tr  # log p(x | z); with enumerated c, at the c drawn above
        if discrete:
            conditioned = poutine.condition(replayed, data=discrete)
            given_tr = poutine.trace(conditioned).get_trace(*args)
        unconditioned = poutine.condition(poutine.uncondition(replayed), data=discrete)
        rep_tr = poutine.trace(unconditioned).get_trace(*args)
    pick = None
    if resample:  # (K, N): which proposal each resampled draw is
        pick = dist.Categorical(logits=log_w.T).sample((num_samples,))
    return _Traces(guide_tr, log_w, discrete, given_tr, rep_tr, nesting, pick)


def _groups(t: _Traces, num_samples: int, g) -> tuple[dict, dict]:
    """The InferenceData groups (posterior, log_likelihood, posterior_predictive,
    observed_data) as ``arviz.from_dict`` takes them, and their dims."""

    def draws(value: Tensor) -> np.ndarray:  # (K, N, ...) -> (chain 1, draw K, N, ...)
        if t.pick is not None:
            index = t.pick.reshape(t.pick.shape + (1,) * (value.dim() - 2)).expand(value.shape)
            value = value.gather(0, index)
        return _all_rows(value.detach().cpu().numpy()[None], 2, g)

    def dims_of(name: str, value: Tensor, lead: int) -> list[str]:
        return ["datapoint"] + [f"{name}_dim_{i}" for i in range(value.dim() - lead)]

    post, dims = {}, {}
    latents = {n: s["value"] for n, s in t.guide_tr.nodes.items() if is_latent(s)} | t.discrete
    for name, value in latents.items():
        value = value.expand(num_samples, *value.shape[1:])
        post[name], dims[name] = draws(value), dims_of(name, value, 2)
    observed, log_lik, predictive = {}, {}, {}
    for name, site in t.given_tr.nodes.items():
        if site["type"] != "sample" or not site["is_observed"] or name not in t.rep_tr.nodes:
            continue
        if name in t.discrete:
            continue
        lp = site["fn"].log_prob(site["value"])
        lp = lp.reshape((1,) * (t.nesting + 1 - lp.dim()) + lp.shape)
        lp = lp.reshape(lp.shape[0], lp.shape[-1]).expand(num_samples, -1)  # (K, N)
        log_lik[name] = draws(lp)
        observed[name] = _all_rows(site["value"].detach().cpu().numpy(), 0, g)
        dims[name] = dims_of(name, site["value"], 1)
        replicate = t.rep_tr.nodes[name]["value"].expand(num_samples, *site["value"].shape)
        predictive[name] = draws(replicate)
    groups = dict(posterior=post, posterior_predictive=predictive, log_likelihood=log_lik,
                  observed_data=observed)  # fmt: skip
    return groups, dims


def _all_rows(array: np.ndarray, axis: int, g) -> np.ndarray:
    """Every process's datapoints along ``axis``, in rank order (the array itself alone)."""
    if not g.active:
        return array
    return np.concatenate(gather_objects(array, g), axis=axis)


def _draw_enumerated(model_tr, log_joint: Tensor, nesting: int) -> dict[str, Tensor]:
    """Draws (K, N, ...) of the enumerated sites of ``model_tr`` from their exact joint
    conditional given each particle and datapoint, from the per-datapoint joint (E..., K, N)."""
    names = [
        n
        for n, s in model_tr.nodes.items()
        if s["type"] == "sample" and s["infer"].get("_enumerate_dim") is not None
    ]
    if not names:
        return {}
    lead = log_joint.shape[:-2]  # one dim per enumerated site
    flat = log_joint.reshape(-1, *log_joint.shape[-2:]).movedim(0, -1)  # (K, N, E)
    index = dist.Categorical(logits=flat).sample()  # (K, N) into the flattened E dims
    out = {}
    for name in names:
        site = model_tr.nodes[name]
        axis = len(lead) + site["infer"]["_enumerate_dim"] + nesting + 1  # its dim in lead
        coord = (index // math.prod(lead[axis + 1 :])) % lead[axis]
        support = site["fn"].enumerate_support(expand=False)
        support = support.reshape(support.shape[0], *site["fn"].event_shape)
        out[name] = support[coord]
    return out


def psis_khat(log_weights) -> Tensor:
    """Pareto k-hat per datapoint (Yao et al. 2018): < 0.5 good, 0.5-0.7 usable, > 0.7 the
    proposal misses part of the posterior.

    Weights equal to rounding (an exact proposal) get -inf: a Pareto fit to them would only
    describe the rounding noise.

    Parameters
    ----------
    log_weights : Tensor of shape (K, N), or InferenceData
        Log importance weights of K draws per datapoint (from ``posterior``).

    Returns
    -------
    Tensor of shape (N,)
    """
    az = _arviz()
    if hasattr(log_weights, "sample_stats"):
        lw = log_weights.sample_stats["log_importance_weight"].values[0].T  # (N, K)
    else:
        lw = torch.as_tensor(log_weights).double().T.cpu().numpy()
    if lw.shape[-1] < MIN_PSIS_DRAWS:
        raise ValueError(
            f"k-hat needs at least {MIN_PSIS_DRAWS} draws per datapoint, got {lw.shape[-1]}: "
            "a Pareto fit to the tail of fewer weights says nothing; draw more"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ warns on high k-hat: we report it instead
        _, khat = az.psislw(lw)
    khat = torch.as_tensor(np.asarray(khat), dtype=torch.float64)
    spread = lw.max(1) - lw.min(1)
    exact = torch.as_tensor(spread <= 1e-9 * np.maximum(1.0, np.abs(lw).max(1)))
    return khat.masked_fill(exact, float("-inf"))


def khat_bands(khat: Tensor) -> dict[str, float]:
    """Share of datapoints with k-hat < 0.5 (good), 0.5-0.7 (usable), > 0.7 (unreliable).

    Parameters
    ----------
    khat : Tensor of shape (N,)

    Returns
    -------
    dict of str to float
    """
    return {
        "good (<0.5)": float((khat < 0.5).double().mean()),
        "usable (0.5-0.7)": float(((khat >= 0.5) & (khat <= 0.7)).double().mean()),
        "unreliable (>0.7)": float((khat > 0.7).double().mean()),
    }


def mcmc_inference_data(mcmc):
    """A NUTS run (``lvmkit.nuts``) as ``arviz.InferenceData``, through ArviZ's own Pyro
    converter: ``arviz.summary`` then gives R-hat and effective sample sizes. A latent's axis in
    ``pyro.plate("data")`` is named "datapoint", as in ``posterior``'s InferenceData.

    Parameters
    ----------
    mcmc : pyro.infer.MCMC
        What ``lvmkit.nuts`` returned.

    Returns
    -------
    arviz.InferenceData
    """
    return _arviz().from_pyro(mcmc, dims=getattr(mcmc, "lvmkit_dims", None))
