"""``GaussianMixtureEM``: scikit-learn's ``GaussianMixture`` as an estimator whose EM is lvmkit's
(``mixture_em.MixtureEM`` in the loop), on a GPU where one is."""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import Tensor

from lvmkit.core.processes import threads_during
from lvmkit.core.rng import seeded
from lvmkit.inference.loop import run
from lvmkit.inference.mixture_em import MixtureEM
from lvmkit.inference.programs import resolve_device
from lvmkit.models.gmm import GaussianMixture, GaussianMixtureConfig
from lvmkit.models.kmeans import INITS


class GaussianMixtureEM(DensityMixin, BaseEstimator):
    """scikit-learn's ``GaussianMixture``, fitted by lvmkit's EM (on a GPU where one is, with
    ``device``): the same parameters, names and meanings, numpy in and out, ``fit`` returns
    self, fitted attributes end in ``_``; it works in a ``Pipeline`` and ``GridSearchCV``.
    ``model_`` is the fitted lvmkit ``GaussianMixture`` (for sampling, posteriors, diagnostics).

    Parameters
    ----------
    n_components : int
    covariance_type : {"full", "diag"}
    tol, reg_covar, max_iter, n_init, random_state
        scikit-learn's.
    init_params : {"kmeans", "k-means++", "random", "random_from_data"}
        "kmeans": k-means labels, computed where EM runs.
    weights_init, means_init, precisions_init : array-like, optional
        Replace what ``init_params`` gives, each on its own.
    warm_start : bool
        Start a second ``fit`` from the first's parameters.
    dtype : {"auto", "float64", "float32"}
        "auto": data, statistics and parameters in float64 as scikit-learn, the per-point
        arithmetic in float32 wherever its worst-case error is small, else float64.
    device : str
        "auto", "cpu", "cuda" or "cuda:N".
    chunk_size : int
        Rows processed at a time, so memory stays bounded whatever N is.
    threads : int or "auto", optional
        Torch threads while fitting ("auto": the cores not busy now, so a neighbour on the
        machine does not stall EM; None leaves torch's setting).
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
        dtype: str = "auto",
        device: str = "auto",
        chunk_size: int = 16384,
        threads: int | str | None = "auto",
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
        self.threads = threads

    # ---- validation ----------------------------------------------------------------------
    def _torch_dtype(self) -> torch.dtype:
        name = str(self.dtype).removeprefix("torch.")
        if name not in ("auto", "float64", "float32"):
            raise ValueError(f"dtype must be 'auto', 'float64' or 'float32', got {self.dtype!r}")
        return torch.float32 if name == "float32" else torch.float64

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
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
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
        with threads_during(self.threads):
            return self._fit(X)

    def _fit(self, X) -> GaussianMixtureEM:
        x = self._tensor(X, reset=True)
        n, d = x.shape
        if n < self.n_components:
            raise ValueError(f"n_samples={n} should be >= n_components={self.n_components}")
        warm = self.warm_start and hasattr(self, "model_") and self.model_.config.dim == d
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        best = None
        for restart in range(1 if warm else self.n_init):  # the highest final bound wins
            gmm = self._start(x, seed + restart, warm)
            em = MixtureEM(gmm, device=x.device, tol=self.tol, init=None,
                           chunk_size=self.chunk_size, fast=self.dtype != "float64")  # fmt: skip
            with seeded(None, x.device):  # the caller's random streams stay as they were
                result = run(em, x, epochs=self.max_iter, progress=False)
            if best is None or -result.losses[-1] > -best[1].losses[-1]:
                best = (gmm, result)
        gmm, result = best
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

    def _start(self, x: Tensor, seed: int, warm: bool) -> GaussianMixture:
        """A mixture at its starting parameters: the last fit's (warm_start), or init_params's
        drawn with ``seed``, each replaced by weights_init, means_init, precisions_init."""
        d, k = x.shape[1], self.n_components
        config = GaussianMixtureConfig(dim=d, components=k, covariance=self.covariance_type,
                                       min_variance=self.reg_covar)  # fmt: skip
        gmm = GaussianMixture(config).to(device=x.device, dtype=x.dtype)
        if warm:
            gmm.load_state_dict(self.model_.state_dict())
            return gmm
        given = [self.weights_init, self.means_init, self.precisions_init]
        if any(v is None for v in given):  # init_params gives what is not given (k-means: a pass)
            gmm.initialize(x, method=self.init_params, seed=seed)
        if all(v is None for v in given):
            return gmm
        with torch.no_grad():
            weights, means, cov = gmm.weights, gmm.means.clone(), gmm.covariances
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
        return gmm

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
