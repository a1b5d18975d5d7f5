"""EM for Gaussian mixtures: exact E-step, closed-form M-step, data streamed in chunks.

``fit_em(gmm, x)`` fits a :class:`~lvmkit.models.GaussianMixture` in place (the same model object
the SVI path fits), and ``GaussianMixtureEM`` is the scikit-learn-style face. The iteration is
scikit-learn's, step for step: from the same initial parameters both reach the same parameters.
Each iteration makes one pass over the data, accumulating sufficient statistics per chunk, so
memory is bounded by the chunk size whatever N is.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from sklearn.exceptions import ConvergenceWarning
from torch import Tensor

from lvmkit.inference.svi import resolve_device
from lvmkit.models.gmm import GaussianMixture, GaussianMixtureConfig


@dataclass
class EMResult:
    lower_bounds: list[float]  # mean log-likelihood before each iteration's M-step
    converged: bool
    n_iter: int


def _precision_cholesky(cov: Tensor, diag: bool) -> Tensor:
    """Diag: 1 / std (K, D). Full: P (K, D, D) with P P^T = Sigma^-1, as scikit-learn's."""
    if diag:
        return cov.rsqrt()
    tril = torch.linalg.cholesky(cov)
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device).expand_as(cov)
    return torch.linalg.solve_triangular(tril, eye, upper=False).transpose(-1, -2)


def _log_gaussians(x: Tensor, means: Tensor, prec_chol: Tensor, diag: bool) -> Tensor:
    """log N(x_n | mu_k, Sigma_k): (n, K)."""
    d = x.shape[1]
    if diag:
        prec = prec_chol**2  # (K, D)
        maha = (x * x) @ prec.T - 2 * x @ (means * prec).T + (means**2 * prec).sum(-1)
        log_det = prec_chol.log().sum(-1)
    else:
        k = means.shape[0]
        y = (x @ prec_chol.permute(1, 0, 2).reshape(d, k * d)).reshape(len(x), k, d)
        y = y - torch.einsum("kd,kde->ke", means, prec_chol)  # (n, K, D)
        maha = (y * y).sum(-1)
        log_det = prec_chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return -0.5 * (d * math.log(2 * math.pi) + maha) + log_det


def _e_step_stats(x, shift, weights, means, cov, diag, chunk):
    """One pass over x - shift: the mean log-likelihood and the sufficient statistics of the
    responsibilities. Only one chunk of the data is ever copied."""
    prec_chol = _precision_cholesky(cov, diag)
    log_w = weights.log()
    k, d = means.shape
    nk = torch.zeros(k, dtype=x.dtype, device=x.device)
    sx = torch.zeros(k, d, dtype=x.dtype, device=x.device)
    sxx = torch.zeros((k, d) if diag else (k, d, d), dtype=x.dtype, device=x.device)
    total = 0.0
    for start in range(0, len(x), chunk):
        xc = x[start : start + chunk] - shift
        log_joint = _log_gaussians(xc, means, prec_chol, diag) + log_w  # (n, K)
        log_norm = torch.logsumexp(log_joint, dim=1, keepdim=True)
        resp = (log_joint - log_norm).exp()
        total += float(log_norm.sum())
        nk += resp.sum(0)
        sx += resp.T @ xc
        if diag:
            sxx += resp.T @ (xc * xc)
        else:
            sxx += (resp.T @ (xc[:, :, None] * xc[:, None, :]).reshape(len(xc), d * d)).reshape(
                k, d, d
            )
    return total / len(x), nk, sx, sxx


def _m_step(n, nk, sx, sxx, diag, reg_covar):
    nk = nk + 10 * torch.finfo(nk.dtype).eps  # as scikit-learn: no empty component divides by 0
    means = sx / nk[:, None]
    if diag:
        cov = sxx / nk[:, None] - means**2 + reg_covar
    else:
        eye = torch.eye(means.shape[1], dtype=means.dtype, device=means.device)
        cov = sxx / nk[:, None, None] - means[:, :, None] * means[:, None, :] + reg_covar * eye
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
) -> EMResult:
    """Fit ``gmm`` to x (N, D) by EM, in x's dtype and on x's device; the module ends there.

    init: "kmeans++" or "random_from_data" (each of ``n_init`` restarts with its own seed), or
    None to start from the module's current parameters. The restart with the highest final lower
    bound wins. Warns (ConvergenceWarning) if it stops before the change falls below ``tol``.
    """
    gmm._check(x)
    for start in range(0, len(x), chunk_size):
        if not torch.isfinite(x[start : start + chunk_size]).all():
            raise ValueError("x holds NaN/inf values; remove or impute them before fitting")
    if gmm.config.prior:
        raise ValueError("fit_em maximises the likelihood; build the mixture with prior=False")
    diag = gmm.config.covariance == "diag"
    gmm.to(device=x.device, dtype=x.dtype)
    shift = x.mean(0)  # EM is shift-equivariant; centring keeps float32 statistics accurate
    best = None
    for restart in range(n_init if init else 1):
        if init:
            gmm.initialize(x, method=init, seed=seed + restart)
        with torch.no_grad():
            weights, means, cov = gmm.weights, gmm.means - shift, gmm.covariances
            if diag is False:
                cov = cov.clone()
        bounds, converged, lower = [], False, -math.inf
        for _ in range(max_iter):
            previous = lower
            lower, nk, sx, sxx = _e_step_stats(x, shift, weights, means, cov, diag, chunk_size)
            weights, means, cov = _m_step(len(x), nk, sx, sxx, diag, reg_covar)
            bounds.append(lower)
            if abs(lower - previous) < tol:
                converged = True
                break
        if best is None or lower > best[0]:
            best = (lower, weights, means, cov, EMResult(bounds, converged, len(bounds)))
    _, weights, means, cov, result = best
    gmm.set_params(weights, means + shift, cov)
    if not result.converged:
        warnings.warn(
            f"EM did not converge in {max_iter} iterations (last change "
            f"{result.lower_bounds[-1] - result.lower_bounds[-2] if result.n_iter > 1 else 'n/a'}"
            f" >= tol={tol}); raise max_iter, loosen tol, or check for degenerate data",
            ConvergenceWarning,
            stacklevel=2,
        )
    return result


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
        x = self._as_tensor(X)
        gmm = GaussianMixture(
            GaussianMixtureConfig(
                dim=x.shape[1],
                components=self.n_components,
                covariance=self.covariance_type,
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
        self.converged_, self.n_iter_ = result.converged, result.n_iter
        self.lower_bounds_ = result.lower_bounds
        self.lower_bound_ = result.lower_bounds[-1]
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
        return self.model_.responsibilities(self._as_tensor(X))

    def predict(self, X) -> Tensor:
        return self.predict_proba(X).argmax(-1)

    def sample(self, n_samples: int = 1) -> tuple[Tensor, Tensor]:
        return self.model_.sample(n_samples)

    def _n_parameters(self) -> int:
        k, d = self.means_.shape
        cov = k * d if self.covariance_type == "diag" else k * d * (d + 1) // 2
        return cov + k * d + k - 1

    def bic(self, X) -> float:
        x = self._as_tensor(X)
        return -2 * self.score(x) * len(x) + self._n_parameters() * math.log(len(x))

    def aic(self, X) -> float:
        return -2 * self.score(X) * len(self._as_tensor(X)) + 2 * self._n_parameters()
