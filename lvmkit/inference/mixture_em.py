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
import time
import warnings

import pyro
import torch
from sklearn.exceptions import ConvergenceWarning
from torch import Tensor

from lvmkit.inference.fit import FitResult
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


def _e_step_stats(chunks, weights, means, cov, diag):
    """One pass over the feature chunks: the mean log-likelihood and the responsibilities'
    sufficient statistics [sum r x*x or r x x^T, sum r x, sum r] per component: (K, F)."""
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
    return total / n, stats


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


def fit_em(
    gmm: GaussianMixture,
    x: Tensor,
    *,
    tol: float = 1e-3,
    max_iter: int = 100,
    reg_covar: float = 1e-6,
    init: str | None = "kmeans++",
    n_init: int = 1,
    seed: int = 0,
    chunk_size: int = 65536,
    cache_bytes: int = 2**28,
) -> FitResult:
    """Fit ``gmm`` to x (N, D) by EM, in x's dtype and on x's device; the module ends there.

    init: "kmeans++" or "random_from_data" (each of ``n_init`` restarts with its own seed), or
    None to start from the module's current parameters. The restart with the highest final lower
    bound wins. Per-point features are kept between iterations when they fit in ``cache_bytes``.
    Warns (ConvergenceWarning) if it stops before the change falls below ``tol``. The result's
    ``losses`` are -log p(x) per datapoint before each iteration's M-step; its params are the
    mixture's, under the names ``fit(gmm.model, gmm.guide, ...)`` gives them.
    """
    t0 = time.perf_counter()
    gmm.check_data(x)
    for start in range(0, len(x), chunk_size):
        if not torch.isfinite(x[start : start + chunk_size]).all():
            raise ValueError("x holds NaN/inf values; remove or impute them before fitting")
    if gmm.config.prior:
        raise ValueError("fit_em maximises the likelihood; build the mixture with prior=False")
    diag = gmm.config.covariance == "diag"
    gmm.to(device=x.device, dtype=x.dtype)
    shift = x.mean(0)  # EM is shift-equivariant; centring keeps float32 statistics accurate
    width = (2 if diag else x.shape[1] + 1) * x.shape[1] + 1
    if len(x) * width * x.element_size() <= cache_bytes:  # build the features once, reuse them
        cached = [
            _features(x[i : i + chunk_size] - shift, diag) for i in range(0, len(x), chunk_size)
        ]

        def chunks():
            return iter(cached)
    else:  # rebuild per chunk: memory stays bounded by the chunk size whatever N is

        def chunks():
            return (
                _features(x[i : i + chunk_size] - shift, diag) for i in range(0, len(x), chunk_size)
            )

    best = None
    for restart in range(n_init if init else 1):
        if init:
            gmm.initialize(x, method=init, seed=seed + restart)
        with torch.no_grad():
            weights, means, cov = gmm.weights, gmm.means - shift, gmm.covariances
        bounds, converged, lower = [], False, -math.inf
        for _ in range(max_iter):
            previous = lower
            lower, stats = _e_step_stats(chunks, weights, means, cov, diag)
            weights, means, cov = _m_step(len(x), stats, x.shape[1], diag, reg_covar)
            bounds.append(lower)
            if abs(lower - previous) < tol:
                converged = True
                break
        if best is None or lower > best[0]:
            best = (lower, weights, means, cov, bounds, converged)
    _, weights, means, cov, bounds, converged = best
    gmm.set_params(weights, means + shift, cov)
    if not converged:
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


class GaussianMixtureEM:
    """scikit-learn's GaussianMixture face over lvmkit's EM: ``fit`` returns self, fitted
    attributes end in ``_``, and ``model_`` is the fitted lvmkit GaussianMixture (for sampling,
    posteriors and diagnostics)."""

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans++",
        weights_init=None,
        means_init=None,
        covariances_init=None,
        random_state: int = 0,
        dtype: torch.dtype = torch.float64,
        device: str = "auto",
        chunk_size: int = 65536,
    ):
        self.n_components, self.covariance_type = n_components, covariance_type
        self.tol, self.reg_covar, self.max_iter, self.n_init = tol, reg_covar, max_iter, n_init
        self.init_params, self.random_state = init_params, random_state
        self.weights_init, self.means_init, self.covariances_init = (
            weights_init,
            means_init,
            covariances_init,
        )
        self.dtype, self.device, self.chunk_size = dtype, device, chunk_size

    def _as_tensor(self, X) -> Tensor:
        x = torch.as_tensor(X, dtype=self.dtype, device=resolve_device(self.device))
        if x.dim() != 2 or len(x) == 0:
            raise ValueError(
                f"X must be a non-empty (n_samples, n_features) array, got {tuple(x.shape)}"
            )
        return x

    def fit(self, X) -> GaussianMixtureEM:
        """Fit to X (N, D); returns self."""
        x = self._as_tensor(X)
        gmm = GaussianMixture(
            GaussianMixtureConfig(
                dim=x.shape[1],
                components=self.n_components,
                covariance=self.covariance_type,
                min_variance=self.reg_covar,  # the floor EM itself keeps
            )
        ).to(device=x.device, dtype=x.dtype)
        given = self.means_init is not None
        if given:
            k = self.n_components
            weights = (
                torch.full((k,), 1.0 / k)
                if self.weights_init is None
                else torch.as_tensor(self.weights_init)
            )
            cov = (
                gmm.covariances.detach()
                if self.covariances_init is None
                else torch.as_tensor(self.covariances_init)
            )
            gmm.set_params(
                *(
                    torch.as_tensor(t, dtype=x.dtype, device=x.device)
                    for t in (weights, self.means_init, cov)
                )
            )
        result = fit_em(
            gmm,
            x,
            tol=self.tol,
            max_iter=self.max_iter,
            reg_covar=self.reg_covar,
            init=None if given else self.init_params,
            n_init=self.n_init,
            seed=self.random_state,
            chunk_size=self.chunk_size,
        )
        self.model_ = gmm
        self.converged_, self.n_iter_ = result.converged, result.epochs
        self.lower_bounds_ = [-loss for loss in result.losses]
        self.lower_bound_ = self.lower_bounds_[-1]
        with torch.no_grad():
            self.weights_ = gmm.weights.clone()
            self.means_ = gmm.means.detach().clone()
            self.covariances_ = gmm.covariances.detach().clone()
        return self

    def score_samples(self, X) -> Tensor:
        """log p(x_n): (N,)."""
        return self.model_.log_prob(self._as_tensor(X))

    def score(self, X) -> float:
        """Mean log-likelihood."""
        return float(self.score_samples(X).mean())

    def predict_proba(self, X) -> Tensor:
        """p(z = k | x_n): (N, K)."""
        return self.model_.responsibilities(self._as_tensor(X))

    def predict(self, X) -> Tensor:
        """The most probable component of each x_n: (N,)."""
        return self.predict_proba(X).argmax(-1)

    def sample(self, n_samples: int = 1) -> tuple[Tensor, Tensor]:
        """n draws: x (n, D) and their components (n,)."""
        return self.model_.sample(n_samples)

    def _n_parameters(self) -> int:
        k, d = self.means_.shape
        cov = k * d if self.covariance_type == "diag" else k * d * (d + 1) // 2
        return cov + k * d + k - 1

    def bic(self, X) -> float:
        """Bayesian information criterion on X (lower is better)."""
        x = self._as_tensor(X)
        return -2 * self.score(x) * len(x) + self._n_parameters() * math.log(len(x))

    def aic(self, X) -> float:
        """Akaike information criterion on X (lower is better)."""
        return -2 * self.score(X) * len(self._as_tensor(X)) + 2 * self._n_parameters()
