"""EM for Gaussian mixtures: exact E-step, closed-form M-step, data streamed in chunks.

``fit_em(gmm, x)`` (what ``lvmkit.em(gmm, x)`` runs) fits a :class:`~lvmkit.models.GaussianMixture`
in place (the same model object the SVI path fits), and ``GaussianMixtureEM`` is the
scikit-learn-style face. The iteration is
scikit-learn's, step for step: from the same initial parameters both reach the same parameters.
Each iteration makes one pass over the data, accumulating sufficient statistics per chunk, so
memory is bounded by the chunk size whatever N is.
"""

from __future__ import annotations

import math
import numbers
import time
import warnings

import numpy as np
import pyro
import torch
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import Tensor

from lvmkit.core.processes import all_reduce_sum, group, shard
from lvmkit.core.rng import seeded
from lvmkit.inference.loop import FitResult
from lvmkit.inference.programs import resolve_device
from lvmkit.models.gmm import GaussianMixture, GaussianMixtureConfig


def _features(x: Tensor, diag: bool) -> Tensor:
    """Per-point features whose linear maps give every quantity EM needs: (n, F) =
    [x*x (diag) or vec(x x^T) (full), x, 1]."""
    quad = x * x if diag else (x[:, :, None] * x[:, None, :]).flatten(1)
    return torch.cat([quad, x, torch.ones_like(x[:, :1])], dim=1)


def _coefficients(weights: Tensor, means: Tensor, cov: Tensor, diag: bool) -> Tensor:
    """A (F, K) with features(x) @ A = log w_k + log N(x | mu_k, Sigma_k), expanding
    -(x - mu)^T P (x - mu) / 2 = -x^T P x / 2 + x^T P mu - mu^T P mu / 2."""
    d = means.shape[1]
    if diag:
        prec = 1.0 / cov  # (K, D)
        quad, lin = -0.5 * prec, prec * means
        const = -0.5 * (means * lin).sum(1) - 0.5 * cov.log().sum(1)
    else:
        tril, info = torch.linalg.cholesky_ex(cov)
        if info.any():
            raise ValueError(
                f"EM: the covariance of component {int(info.nonzero()[0])} is not positive "
                f"definite in {cov.dtype}, which cannot resolve a cluster this tight: fit in "
                "float64 (x.double()), or raise reg_covar"
            )
        prec = torch.cholesky_inverse(tril)  # (K, D, D)
        quad, lin = -0.5 * prec.flatten(1), (prec @ means[:, :, None]).squeeze(-1)
        const = -0.5 * (means * lin).sum(1) - tril.diagonal(dim1=-2, dim2=-1).log().sum(1)
    const = const + weights.log() - 0.5 * d * math.log(2 * math.pi)
    return torch.cat([quad, lin, const[:, None]], dim=1).T


def _e_step_stats(chunks, weights, means, cov, diag, g):
    """One pass over the feature chunks: the mean log-likelihood and the responsibilities'
    sufficient statistics [sum r x*x or r x x^T, sum r x, sum r] per component: (K, F). Under
    torchrun each process passes its rows and the sums travel in one all-reduce."""
    coef = _coefficients(weights, means, cov, diag)
    stats, total, n = 0.0, 0.0, 0
    for feats in chunks():
        log_joint = feats @ coef  # (n, K)
        top = log_joint.max(1, keepdim=True).values
        # Terms below eps * e^-5 of the largest change the sum by less than rounding: set them
        # to 0 rather than exp them into denormals, which CPUs handle ~10x slower.
        diff = log_joint - top
        cut = math.log(torch.finfo(diff.dtype).eps) - 5
        negligible = diff < cut
        resp = diff.clamp_min_(cut).exp_().masked_fill_(negligible, 0.0)
        norm = resp.sum(1, keepdim=True)
        resp /= norm
        total += float((top + norm.log()).sum())
        stats = stats + resp.T @ feats
        n += len(feats)
    totals = torch.tensor([total, n], dtype=torch.float64, device=stats.device)
    all_reduce_sum([stats, totals], g)
    return float(totals[0] / totals[1]), stats


def _offsets(chunks):
    """(row offset, chunk) pairs of an iterator of feature chunks."""
    start = 0
    for feats in chunks:
        yield start, feats
        start += len(feats)


def _m_step(n: int, stats: Tensor, d: int, diag: bool, reg_covar: float):
    q = d if diag else d * d
    sxx, sx, nk = stats[:, :q], stats[:, q : q + d], stats[:, -1]
    nk = nk + 10 * torch.finfo(nk.dtype).eps  # as scikit-learn: no empty component divides by 0
    means = sx / nk[:, None]
    if diag:
        # E[x^2] - mean^2 cancels: in float32 it can fall below 0 for a tight cluster
        cov = (sxx / nk[:, None] - means**2).clamp_min(0) + reg_covar
    else:
        eye = torch.eye(d, dtype=means.dtype, device=means.device)
        cov = sxx.reshape(-1, d, d) / nk[:, None, None] - means[:, :, None] * means[:, None, :]
        cov = 0.5 * (cov + cov.transpose(-1, -2)) + reg_covar * eye
    return nk / n, means, cov


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
        candidates = torch.multinomial((d2 / d2.sum()).cpu(), trials, replacement=True, generator=g)
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


def fit_em(
    gmm: GaussianMixture,
    x: Tensor,
    *,
    tol: float = 1e-3,
    max_iter: int = 100,
    reg_covar: float = 1e-6,
    init: str | None = "kmeans",
    n_init: int = 1,
    seed: int = 0,
    chunk_size: int = 65536,
    cache_bytes: int = 2**28,
) -> FitResult:
    """Fit ``gmm`` to x (N, D) by EM, in x's dtype and on x's device; the module ends there.

    init: scikit-learn's starts, "kmeans" (its default), "k-means++", "random" or
    "random_from_data": responsibilities from which a first M-step makes the parameters (each of
    ``n_init`` restarts with its own seed); or None to start from the module's current
    parameters. The restart with the highest final lower bound wins. Per-point features are kept
    between iterations when they fit in ``cache_bytes``. Warns (ConvergenceWarning) if it stops
    before the change falls below ``tol``. The result's ``losses`` are -log p(x) per datapoint
    before each iteration's M-step; its params are the mixture's, under the names
    ``fit(gmm.model, gmm.guide, ...)`` gives them.
    """
    t0 = time.perf_counter()
    gmm.check_data(x)
    g = group(x.device)
    rows = shard(len(x), g)  # under torchrun each process sums the statistics of its rows
    for start in range(0, len(x), chunk_size):
        if not torch.isfinite(x[start : start + chunk_size]).all():
            raise ValueError("x holds NaN/inf values; remove or impute them before fitting")
    if gmm.config.prior:
        raise ValueError("fit_em maximises the likelihood; build the mixture with prior=False")
    diag = gmm.config.covariance == "diag"
    gmm.to(device=x.device, dtype=x.dtype)
    shift = x.mean(0)  # EM is shift-equivariant; centring keeps float32 statistics accurate
    width = (2 if diag else x.shape[1] + 1) * x.shape[1] + 1
    mine = x[rows]
    if len(mine) * width * x.element_size() <= cache_bytes:  # build the features once, reuse
        cached = [
            _features(mine[i : i + chunk_size] - shift, diag)
            for i in range(0, len(mine), chunk_size)
        ]

        def chunks():
            return iter(cached)
    else:  # rebuild per chunk: memory stays bounded by the chunk size whatever N is

        def chunks():
            return (
                _features(mine[i : i + chunk_size] - shift, diag)
                for i in range(0, len(mine), chunk_size)
            )

    if init is not None and init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {list(INITS)}, or None")
    best = None
    for restart in range(n_init if init else 1):
        if init:
            resp = initial_responsibilities(x, gmm.config.components, init, seed + restart)
            resp = resp[rows]  # every process computes the same start from all the data
            stats = sum(resp[i : i + len(f)].T @ f for i, f in _offsets(chunks()))
            all_reduce_sum([stats], g)
            weights, means, cov = _m_step(len(x), stats, x.shape[1], diag, reg_covar)
        else:
            with torch.no_grad():
                weights, means, cov = gmm.weights, gmm.means - shift, gmm.covariances
        bounds, converged, lower = [], False, -math.inf
        for _ in range(max_iter):
            previous = lower
            lower, stats = _e_step_stats(chunks, weights, means, cov, diag, g)
            weights, means, cov = _m_step(len(x), stats, x.shape[1], diag, reg_covar)
            bounds.append(lower)
            if abs(lower - previous) < tol:
                converged = True
                break
        if best is None or lower > best[0]:
            best = (lower, weights, means, cov, bounds, converged)
    _, weights, means, cov, bounds, converged = best
    gmm.set_params(weights, means + shift, cov)
    if not converged and max_iter > 0:  # max_iter=0 only initialises
        warnings.warn(
            f"EM did not converge in {max_iter} iterations (last change "
            f"{bounds[-1] - bounds[-2] if len(bounds) > 1 else 'n/a'}"
            f" >= tol={tol}); raise max_iter, loosen tol, or check for degenerate data",
            ConvergenceWarning,
            stacklevel=2,
        )
    state = {"params": {}, "constraints": {}}  # the store fit(gmm.model, ...) would leave
    with pyro.get_param_store().scope(state):
        pyro.module("gmm", gmm)
        params = {n: p.detach().clone() for n, p in pyro.get_param_store().named_parameters()}
    return FitResult(
        losses=[-b for b in bounds],
        val_losses=[],
        best_epoch=None,
        params_epoch=len(bounds),
        elapsed=time.perf_counter() - t0,
        device=str(x.device),
        params=params,
        param_state=state,
        method="em",
        e_step="closed-form",
        converged=converged,
    )


class GaussianMixtureEM(DensityMixin, BaseEstimator):
    """scikit-learn's ``GaussianMixture``, fitted by lvmkit's EM (on a GPU where one is, with
    ``device``): the same parameters, names and meanings, numpy in and out, ``fit`` returns
    self, fitted attributes end in ``_``; it works in a ``Pipeline`` and ``GridSearchCV``.
    ``model_`` is the fitted lvmkit ``GaussianMixture`` (for sampling, posteriors, diagnostics).

    covariance_type: "full" or "diag". init_params: "kmeans" (k-means labels, computed where EM
    runs), "k-means++", "random" or "random_from_data". ``weights_init``, ``means_init``,
    ``precisions_init`` replace what init_params gives, each on its own. ``warm_start`` starts a
    second ``fit`` from the first's parameters. ``dtype`` is where EM computes ("float64", as
    scikit-learn, or "float32" for speed on large data); ``chunk_size`` rows are processed at a
    time, so memory stays bounded whatever N is.
    """

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        random_state=None,
        warm_start: bool = False,
        dtype: str = "float64",
        device: str = "auto",
        chunk_size: int = 65536,
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.dtype = dtype
        self.device = device
        self.chunk_size = chunk_size

    # ---- validation ----------------------------------------------------------------------
    def _torch_dtype(self) -> torch.dtype:
        name = str(self.dtype).removeprefix("torch.")
        if name not in ("float64", "float32"):
            raise ValueError(f"dtype must be 'float64' or 'float32', got {self.dtype!r}")
        return getattr(torch, name)

    def _check_params(self) -> None:
        if not isinstance(self.n_components, numbers.Integral) or self.n_components < 1:
            raise ValueError(f"n_components must be a positive int, got {self.n_components!r}")
        if self.covariance_type not in ("full", "diag"):
            raise ValueError(
                f"covariance_type must be 'full' or 'diag', got {self.covariance_type!r} "
                "('tied' and 'spherical' are not implemented)"
            )
        if self.init_params not in INITS:
            raise ValueError(f"init_params must be one of {list(INITS)}, got {self.init_params!r}")
        for name in ("tol", "reg_covar"):
            if not isinstance(getattr(self, name), numbers.Real) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a number >= 0, got {getattr(self, name)!r}")
        for name in ("max_iter", "n_init", "chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")

    def _tensor(self, X, *, reset: bool) -> Tensor:
        """X validated as scikit-learn does, as a tensor where EM runs."""
        X = validate_data(
            self,
            X,
            reset=reset,
            dtype=[np.float64, np.float32],
            ensure_min_samples=2 if reset else 1,
        )
        return torch.tensor(
            np.asarray(X), dtype=self._torch_dtype(), device=resolve_device(self.device)
        )

    def _init_tensor(self, value, shape: tuple[int, ...], name: str, x: Tensor) -> Tensor:
        t = torch.as_tensor(np.asarray(value, dtype=np.float64)).to(x)
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
        return t

    # ---- fitting -------------------------------------------------------------------------
    def fit(self, X, y=None) -> GaussianMixtureEM:
        """Fit to X (n_samples, n_features); returns self. ``y`` is ignored."""
        self._check_params()
        x = self._tensor(X, reset=True)
        n, d = x.shape
        k = self.n_components
        if n < k:
            raise ValueError(f"n_samples={n} should be >= n_components={k}")
        warm = self.warm_start and hasattr(self, "model_") and self.model_.config.dim == d
        gmm = GaussianMixture(
            GaussianMixtureConfig(
                dim=d,
                components=k,
                covariance=self.covariance_type,
                min_variance=self.reg_covar,  # the floor EM itself keeps
            )
        ).to(device=x.device, dtype=x.dtype)
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        init = self.init_params
        given = [self.weights_init, self.means_init, self.precisions_init]
        if warm:
            gmm.load_state_dict(self.model_.state_dict())
            init = None
        elif any(v is not None for v in given):
            # scikit-learn: each given start replaces what init_params would give
            start = GaussianMixture(gmm.config).to(device=x.device, dtype=x.dtype)
            fit_em(start, x, max_iter=0, reg_covar=self.reg_covar, init=init, seed=seed,
                   chunk_size=self.chunk_size)  # fmt: skip
            weights, means, cov = start.weights, start.means.detach(), start.covariances.detach()
            if self.weights_init is not None:
                weights = self._init_tensor(self.weights_init, (k,), "weights_init", x)
                if (weights < 0).any() or (weights > 1).any():
                    raise ValueError(f"weights_init must lie in [0, 1], got {weights.tolist()}")
                if abs(float(weights.sum()) - 1) > 1e-6:
                    raise ValueError(
                        f"weights_init must sum to 1, got {float(weights.sum()):.6f}; normalise"
                    )
            if self.means_init is not None:
                means = self._init_tensor(self.means_init, (k, d), "means_init", x)
            if self.precisions_init is not None:
                shape = (k, d) if self.covariance_type == "diag" else (k, d, d)
                prec = self._init_tensor(self.precisions_init, shape, "precisions_init", x)
                cov = _covariances_from(prec, self.covariance_type)
            gmm.set_params(weights, means, cov)
            init = None
        result = fit_em(
            gmm,
            x,
            tol=self.tol,
            max_iter=self.max_iter,
            reg_covar=self.reg_covar,
            init=init,
            n_init=self.n_init if init else 1,
            seed=seed,
            chunk_size=self.chunk_size,
        )
        self.model_ = gmm
        self.converged_, self.n_iter_ = result.converged, result.epochs
        self.lower_bounds_ = [-loss for loss in result.losses]
        self.lower_bound_ = self.lower_bounds_[-1]
        with torch.no_grad():
            self.weights_ = gmm.weights.cpu().double().numpy()
            self.means_ = gmm.means.cpu().double().numpy()
            self.covariances_ = gmm.covariances.cpu().double().numpy()
        if self.covariance_type == "diag":
            self.precisions_ = 1 / self.covariances_
            self.precisions_cholesky_ = np.sqrt(self.precisions_)
        else:
            self.precisions_ = np.linalg.inv(self.covariances_)
            # scikit-learn's convention: the upper factor U of P = U U^T
            chol = np.linalg.cholesky(self.covariances_)
            self.precisions_cholesky_ = np.linalg.inv(chol).transpose(0, 2, 1)
        return self

    def fit_predict(self, X, y=None) -> np.ndarray:
        """Fit, then the most probable component of each row: (n_samples,)."""
        return self.fit(X).predict(X)

    # ---- using the fit -------------------------------------------------------------------
    def score_samples(self, X) -> np.ndarray:
        """log p(x_n): (n_samples,)."""
        check_is_fitted(self)
        return self.model_.log_prob(self._tensor(X, reset=False)).double().cpu().numpy()

    def score(self, X, y=None) -> float:
        """Mean log-likelihood per row."""
        return float(self.score_samples(X).mean())

    def predict_proba(self, X) -> np.ndarray:
        """p(z = k | x_n): (n_samples, n_components)."""
        check_is_fitted(self)
        x = self._tensor(X, reset=False)
        return self.model_.responsibilities(x).detach().double().cpu().numpy()

    def predict(self, X) -> np.ndarray:
        """The most probable component of each row: (n_samples,)."""
        return self.predict_proba(X).argmax(-1)

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """n draws: X (n_samples, n_features) and their components (n_samples,)."""
        check_is_fitted(self)
        if not isinstance(n_samples, numbers.Integral) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        with seeded(seed):
            x, z = self.model_.sample(n_samples)
        return x.detach().double().cpu().numpy(), z.cpu().numpy()

    def _n_parameters(self) -> int:
        k, d = self.means_.shape
        cov = k * d if self.covariance_type == "diag" else k * d * (d + 1) // 2
        return cov + k * d + k - 1

    def bic(self, X) -> float:
        """Bayesian information criterion on X (lower is better)."""
        n = _num_rows(X)
        return -2 * self.score(X) * n + self._n_parameters() * math.log(n)

    def aic(self, X) -> float:
        """Akaike information criterion on X (lower is better)."""
        return -2 * self.score(X) * _num_rows(X) + 2 * self._n_parameters()


def _covariances_from(prec: Tensor, covariance_type: str) -> Tensor:
    """Covariances from the precisions_init of scikit-learn's meaning, checked as it does."""
    if covariance_type == "diag":
        if not (prec > 0).all():
            raise ValueError("precisions_init must be positive (diag precisions), got values <= 0")
        return 1 / prec
    symmetric = torch.allclose(prec, prec.transpose(-1, -2))
    bad = torch.linalg.cholesky_ex(prec).info
    if not symmetric or bad.any():
        which = int(bad.nonzero()[0]) if bad.any() else "some"
        raise ValueError(
            f"precisions_init must be symmetric positive definite; component {which} is not"
        )
    return torch.cholesky_inverse(torch.linalg.cholesky(prec))


def _num_rows(X) -> int:
    return len(X) if hasattr(X, "__len__") else np.asarray(X).shape[0]
