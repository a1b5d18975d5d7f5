"""The starts of a Gaussian mixture, shared by every way of fitting one (SVI, closed-form and
generic EM, the scikit-learn estimator): scikit-learn's ``init_params`` as responsibilities."""

from __future__ import annotations

import math

import torch
from torch import Tensor

INITS = ("kmeans", "k-means++", "random", "random_from_data")  # scikit-learn's init_params


def kmeans_plusplus(x: Tensor, k: int, g: torch.Generator) -> Tensor:
    """Indices of k seeds by greedy k-means++ (Arthur & Vassilvitskii 2007; 2 + log k trials
    per seed, as scikit-learn), computed where x is."""
    n = len(x)
    first = int(torch.randint(n, (1,), generator=g))
    chosen = [first]
    d2 = ((x - x[first]) ** 2).sum(1)
    trials = 2 + int(math.log(k))
    for _ in range(1, k):
        # every point on a seed already (fewer distinct points than k): any point will do
        weights = d2 if d2.sum() > 0 else torch.ones_like(d2)
        candidates = torch.multinomial(weights.cpu(), trials, replacement=True, generator=g)
        candidates = candidates.to(x.device)
        to_candidates = torch.cdist(x[candidates], x).pow(2)  # (trials, N)
        pots = torch.minimum(d2, to_candidates).sum(1)
        best = int(pots.argmin())
        chosen.append(int(candidates[best]))
        d2 = torch.minimum(d2, to_candidates[best])
    return torch.tensor(chosen, device=x.device)


def kmeans(
    x: Tensor, k: int, g: torch.Generator, *, max_iter: int = 300, tol: float = 1e-4
) -> Tensor:
    """Lloyd's k-means from k-means++ seeds, where x is: each point's cluster (N,). Stops when
    the centres move less than ``tol`` times the data's mean variance, as scikit-learn."""
    centres = x[kmeans_plusplus(x, k, g)]
    threshold = tol * float(x.var(0).mean())
    for _ in range(max_iter):
        labels = torch.cdist(x, centres).argmin(1)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        moved = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
        shift = float(((moved - centres) ** 2).sum())
        centres = moved
        if shift <= threshold:
            break
    return torch.cdist(x, centres).argmin(1)


def initial_responsibilities(x: Tensor, k: int, method: str, seed: int) -> Tensor:
    """scikit-learn's starts as responsibilities (N, K): "kmeans" (k-means labels),
    "k-means++" (its seeds), "random" (uniform, normalised), "random_from_data" (k points)."""
    g = torch.Generator().manual_seed(seed)
    n = len(x)
    if n < k:
        raise ValueError(f"{n} datapoints cannot initialise {k} components; use fewer components")
    resp = torch.zeros(n, k, dtype=x.dtype, device=x.device)
    if method == "kmeans":
        resp[torch.arange(n, device=x.device), kmeans(x, k, g)] = 1
    elif method == "k-means++":
        resp[kmeans_plusplus(x, k, g), torch.arange(k, device=x.device)] = 1
    elif method == "random":
        resp = torch.rand(n, k, generator=g, dtype=x.dtype).to(x.device)
        resp /= resp.sum(1, keepdim=True)
    elif method == "random_from_data":
        resp[torch.randperm(n, generator=g)[:k].to(x.device), torch.arange(k, device=x.device)] = 1
    else:
        raise ValueError(f"unknown init {method!r}; choose one of {list(INITS)}")
    return resp
