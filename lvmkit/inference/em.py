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

import pyro
import torch
from pyro import poutine
from pyro.infer import config_enumerate
from pyro.poutine.util import prune_subsample_sites
from sklearn.exceptions import ConvergenceWarning
from torch import Tensor

from lvmkit.inference.importance import (
    DATA_PLATE,
    is_latent,
    max_plate_nesting,
    per_datapoint,
)
from lvmkit.inference.svi import resolve_device
from lvmkit.models.gmm import GaussianMixture, GaussianMixtureConfig


@dataclass
class EMResult:
    lower_bounds: list[float]  # mean log-likelihood before each iteration's M-step
    converged: bool
    n_iter: int


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
        tril = torch.linalg.cholesky(cov)
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
        cov = sxx / nk[:, None] - means**2 + reg_covar
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
) -> EMResult:
    """Fit ``gmm`` to x (N, D) by EM, in x's dtype and on x's device; the module ends there.

    init: "kmeans++" or "random_from_data" (each of ``n_init`` restarts with its own seed), or
    None to start from the module's current parameters. The restart with the highest final lower
    bound wins. Per-point features are kept between iterations when they fit in ``cache_bytes``.
    Warns (ConvergenceWarning) if it stops before the change falls below ``tol``.
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
        """Fit to X (N, D); returns self."""
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


# ---- EM for any Pyro model -------------------------------------------------------------------


class _ExpectedLogJoint:
    """Q(theta) = sum_n sum_k w_nk log p_theta(x_n, z_nk) with the E-step's (z, w) held fixed;
    ``differentiable_loss`` returns -Q, so a Trainer's gradient steps are the M-step."""

    def __init__(self, e_step: str, num_samples: int, hard: bool, proposal):
        self.kind, self.num_samples, self.hard = e_step, num_samples, hard
        self.proposal = proposal  # a guide, or None to propose from the model's prior
        self.nesting: int | None = None
        self.values, self.weights = None, None

    def _enumerated_log_joint(self, model, args) -> Tensor:
        """log p(x_n, z = e) for every joint value e of the discrete latents: (E, N)."""
        enum_model = poutine.enum(
            config_enumerate(model, default="parallel"), first_available_dim=-self.nesting - 1
        )
        tr = prune_subsample_sites(poutine.trace(enum_model).get_trace(*args))
        tr.compute_log_prob()
        total, data_dim = 0.0, None
        for name, site in tr.nodes.items():
            if site["type"] == "sample":
                frames = [f.dim for f in site["cond_indep_stack"] if f.name == DATA_PLATE]
                if not frames:
                    raise ValueError(f"site {name!r} is not inside pyro.plate({DATA_PLATE!r}, N)")
                data_dim = frames[0]
                total = total + site["log_prob"]
        n_enum = max(total.dim() - self.nesting, 0)  # enumeration dims sit left of the plates
        total = total.reshape((1,) * (n_enum + self.nesting - total.dim()) + total.shape)
        data_axis = n_enum + self.nesting + data_dim
        other = [a for a in range(n_enum, total.dim()) if a != data_axis]
        if other:
            total = total.sum(other, keepdim=True)
        return total.reshape(-1, total.shape[data_axis])  # (E, N)

    def e_step(self, model, *args) -> float:
        """Fix the posterior weights for this batch; return the mean log p(x) estimate."""
        if self.nesting is None:
            self.nesting = max_plate_nesting(model, self.proposal or (lambda *a: None), *args)
        if self.kind == "enum":
            lj = self._enumerated_log_joint(model, args)  # (E, N)
            self.values = None
            log_px = torch.logsumexp(lj, 0)
        else:
            k = self.num_samples
            with pyro.plate("particles", k, dim=-self.nesting - 1):
                if self.proposal is not None:
                    q_tr = poutine.trace(self.proposal).get_trace(*args)
                    m_tr = poutine.trace(poutine.replay(model, trace=q_tr)).get_trace(*args)
                    log_q = per_datapoint(q_tr, self.nesting)
                else:
                    m_tr = q_tr = poutine.trace(model).get_trace(*args)
                    log_q = per_datapoint(q_tr, self.nesting, latent_only=True)
            lj = (per_datapoint(m_tr, self.nesting) - log_q).expand(k, -1)  # log weights (K, N)
            self.values = {
                name: site["value"] for name, site in q_tr.nodes.items() if is_latent(site)
            }
            log_px = torch.logsumexp(lj, 0) - math.log(k)
        w = (lj - torch.logsumexp(lj, 0)).exp()  # posterior weights, each column sums to 1
        if self.hard:  # hard EM: all weight on the most probable z
            w = torch.nn.functional.one_hot(w.argmax(0), len(w)).T.to(w)
        self.weights = w.detach()
        return float(log_px.mean())

    def differentiable_loss(self, model, guide, *args) -> Tensor:
        if self.kind == "enum":
            lj = self._enumerated_log_joint(model, args)
        else:
            conditioned = poutine.condition(model, data=self.values)
            with pyro.plate("particles", self.num_samples, dim=-self.nesting - 1):
                tr = poutine.trace(conditioned).get_trace(*args)
            lj = per_datapoint(tr, self.nesting)
        return -(self.weights * lj).sum()

    def loss(self, model, guide, *args) -> float:
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args))


@dataclass
class EMFit:
    """What ``em`` returns."""

    log_likelihoods: list[float]  # mean log p(x) per iteration, from its E-step (an IS estimate
    #                               for the importance E-step, exact for enumeration)
    e_step: str
    params: dict
    param_state: dict

    def scope(self):
        return pyro.get_param_store().scope(self.param_state)


def em(
    model,
    data,
    *,
    guide=None,
    e_step: str = "auto",
    num_samples: int = 64,
    hard: bool = False,
    iterations: int = 20,
    m_steps: int = 10,
    lr: float = 1e-2,
    batch_size: int | None = None,
    device: str = "auto",
    seed: int = 0,
) -> EMFit:
    """EM for any Pyro model: theta = argmax (1/N) sum_n E_{z ~ p(z|x_n)}[log p_theta(x_n, z)].

    e_step: "enum" sums over every value of the (discrete) latents, exactly; "importance" draws
        ``num_samples`` z per datapoint from ``guide`` (or, without one, from the prior) and
        self-normalises the weights p(x, z) / q(z | x); "auto" picks "enum" when every latent
        site has enumerable support. ``hard=True`` keeps only the most probable z (hard EM).
    Each iteration runs one E-step per batch, then ``m_steps`` gradient steps (Adam, ``lr``) on the
    expected complete-data log-likelihood with that posterior held fixed. Every sample site must
    sit in ``pyro.plate("data", N)``.
    """
    from lvmkit.inference.svi import Trainer, as_dataset

    if e_step not in ("auto", "enum", "importance"):
        raise ValueError(f"unknown e_step {e_step!r}; choose 'auto', 'enum' or 'importance'")
    dataset = as_dataset(data, "data")
    pyro.set_rng_seed(seed)
    first = dataset.batch(torch.arange(min(len(dataset), batch_size or len(dataset))))
    if e_step == "auto":
        with torch.no_grad(), poutine.block():
            tr = poutine.trace(model).get_trace(*first)
        latent = [s for s in tr.nodes.values() if is_latent(s)]
        e_step = (
            "enum"
            if latent and all(s["fn"].has_enumerate_support for s in latent)
            else ("importance")
        )
    objective = _ExpectedLogJoint(e_step, num_samples, hard, guide)
    trainer = Trainer(model, guide or (lambda *a: None), elbo=objective, lr=lr, device=device)
    dataset = dataset.to(trainer.device)
    batch_size = batch_size or len(dataset)
    history = []
    with trainer.scope():
        with torch.no_grad():  # parameters must exist before the first E-step
            objective.e_step(model, *trainer._to_device(first))
    for _ in range(iterations):
        total = 0.0
        perm = torch.randperm(len(dataset))
        for start in range(0, len(dataset), batch_size):
            batch = dataset.batch(perm[start : start + batch_size].to(trainer.device))
            with trainer.scope(), torch.no_grad():
                total += objective.e_step(model, *batch) * len(batch[0])
            for _ in range(m_steps):
                trainer.step(*batch)
        history.append(total / len(dataset))
    return EMFit(history, e_step, trainer.params(), trainer.param_state)
