"""``evaluate``: log p(x) of a built-in model, exact where the model can say it itself,
otherwise estimated with its guide by importance sampling or AIS."""

from __future__ import annotations

import dataclasses
import math

import torch

from lvmkit.inference.annealing import ais
from lvmkit.inference.importance import log_likelihood
from lvmkit.inference.likelihood import LogLikelihood, dequantized_levels, estimate_per_batch
from lvmkit.models.base import check_builtin

# draws per datapoint (of z, or of a dequantization), or AIS chains
DEFAULT_SAMPLES = {"importance": 1000, "ais": 16, "dequantized": 8}


def scores_discrete(model, prepared) -> bool:
    """Whether a built-in model's density of its ``prepared`` data is a likelihood of discrete
    values, or a bound on one (dequantized pixels): where bits per dimension are defined."""
    return model.data_kind != "continuous" or dequantized_levels(prepared) is not None


def evaluate(
    model,
    data,
    *,
    method: str | None = None,
    num_samples: int | None = None,
    steps: int = 100,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> LogLikelihood:
    """log p(x) of a built-in model on ``data``, in the way its family allows, saying which.

    Exact where the model declares ``density = "exact"`` (mixtures, autoregressive models; a
    flow's exact density of dequantized pixels is averaged over ``num_samples``
    dequantizations, default 8, with its Monte Carlo error: ``method="dequantized"``); a lower
    bound in one pass where it declares ``density = "bound"`` (the VQ-VAE); estimated with its
    guide by importance sampling or AIS where it declares ``density = "importance"`` (the
    LVMs); by AIS from the prior where it declares ``density = "ais"`` (a GAN under its
    observation noise). Discrete data are scored on their levels; a continuous likelihood of
    discrete data is scored on dequantized pixels, so that its bits/dim bound the discrete
    likelihood's.

    Parameters
    ----------
    model : BuiltinModel
        A fitted built-in model (``lvmkit.load_run(path).model``).
    data : ImageData
        The images, which ``model.prepare`` turns into the model's units.
    method : {"importance", "ais"}, optional
        For a model with a guide: importance sampling (the default) or AIS from the guide; a
        GAN: AIS only. Refused for a model that computes its log p(x) itself.
    num_samples : int, optional
        Draws of z per image (importance, default 1000), AIS chains (default 16), or a flow's
        dequantizations (default 8).
    steps : int
        AIS temperatures.
    batch_size, seed, device, progress
        As for ``log_likelihood``.

    Returns
    -------
    LogLikelihood
        ``method`` says how the numbers were had: "exact", "dequantized", "bound",
        "importance" or "ais".

    Examples
    --------
    >>> import lvmkit
    >>> from lvmkit.models import build_model
    >>> digits = lvmkit.data.load("digits")
    >>> pixelcnn = build_model("pixelcnn", digits.image_shape, digits.levels,
    ...                        {"features": 8, "layers": 2})
    >>> ll = lvmkit.evaluate(pixelcnn, digits[:10])  # untrained: about log2(17) bits/dim
    >>> ll.method, 3.5 < ll.bits_per_dim < 5
    ('exact', True)
    """
    check_builtin(model, data, "evaluate", "lvmkit.log_likelihood(model, guide, data)")
    if method not in (None, "importance", "ais"):
        raise ValueError(f"unknown method {method!r}; choose 'importance' or 'ais'")
    if model.density in ("exact", "bound") and method is not None:
        raise ValueError(
            f"{type(model).__name__} computes its log p(x) itself ({model.density}): there is "
            f"no method {method!r} to choose; leave method out"
        )
    if model.density == "ais" and method == "importance":
        raise ValueError(
            f"{type(model).__name__} has no guide to importance-sample with: its log p(x) is "
            "estimated by AIS from the prior (method='ais')"
        )
    method = method or ("ais" if model.density == "ais" else "importance")
    if model.density is None:
        raise ValueError(
            f"{type(model).__name__} defines no density p(x) to evaluate (an autoencoder's code "
            "has no prior); fit a latent variable model such as lvm instead"
        )
    if num_samples is None:  # draws of z, AIS chains, or dequantizations of a flow's pixels
        exact = model.density in ("exact", "bound")
        num_samples = DEFAULT_SAMPLES["dequantized" if exact else method]
    prepared = model.prepare(data)
    common = dict(batch_size=batch_size, seed=seed, device=device, progress=progress)
    if model.density == "ais":  # annealed from the prior: the model has no guide
        return ais(model.model, prepared, num_samples=num_samples, steps=steps,
                   discrete=scores_discrete(model, prepared), **common)  # fmt: skip
    if model.density == "importance":
        discrete = scores_discrete(model, prepared)
        if method == "ais":
            return ais(model.model, prepared, guide=model.guide, num_samples=num_samples,
                       steps=steps, discrete=discrete, **common)  # fmt: skip
        return log_likelihood(model.model, model.guide, prepared, num_samples=num_samples,
                              discrete=discrete, **common)  # fmt: skip

    # a continuous density of discrete images is fitted to dequantized pixels (prepare)
    dequantized = data.levels if model.data_kind == "continuous" else None
    discrete = dequantized is not None or model.data_kind != "continuous"
    if dequantized_levels(prepared) is not None:
        return _dequantized(model, prepared, num_samples, common)

    def exact(batch, nesting, tick):
        tick(1)
        values = model.log_prob(*batch)
        return values, torch.zeros_like(values)

    est = estimate_per_batch(model.model, None, prepared, exact, what="log p(x)", params=None,
                             discrete=discrete, trace=False, dequantized=dequantized,
                             **common)  # fmt: skip
    return est.summary(1, model.density)


def _dequantized(model, prepared, num_samples: int, common: dict) -> LogLikelihood:
    """An exact density of dequantized pixels (a flow's): the mean of log p((x + u) / levels)
    over ``num_samples`` draws of u ~ U[0, 1) per image, and its Monte Carlo error. Each draw
    bounds the discrete log-likelihood from below, and so does their mean, in expectation."""
    levels = prepared.levels
    pixels = dataclasses.replace(prepared, dequantized=False)  # the integer levels themselves

    def draws(batch, nesting, tick):
        x, *rest = batch
        values = torch.stack([model.log_prob((x + torch.rand_like(x)) / levels, *rest)
                              for _ in range(num_samples)])  # fmt: skip
        tick(1)
        spread = values.var(0) if num_samples > 1 else torch.full_like(values[0], math.nan)
        return values.mean(0), spread / num_samples

    est = estimate_per_batch(model.model, None, pixels, draws, what="log p(x)", params=None,
                             discrete=True, trace=False, dequantized=levels,
                             **common)  # fmt: skip
    return est.summary(num_samples, "dequantized")
