"""EM for Gaussian mixtures: exact E-step, closed-form M-step, data streamed in chunks.

``MixtureEM`` (what ``lvmkit.em(gmm, x)`` runs in the loop) fits a
:class:`~lvmkit.models.GaussianMixture` in place (the same model object the SVI path fits);
``estimator.GaussianMixtureEM`` is the scikit-learn face. The iteration is scikit-learn's, step
for step: from the same initial parameters both reach the same parameters. Each iteration makes
one pass over the data, accumulating sufficient statistics per chunk, so memory is bounded by
the chunk size whatever N is.
"""

from __future__ import annotations

import math

import pyro
import torch
from torch import Tensor

from lvmkit.core.checks import all_finite, check_count, check_number
from lvmkit.core.files import CheckpointError
from lvmkit.core.processes import all_reduce_sum, group, shard, vote
from lvmkit.inference.loop import Algorithm
from lvmkit.models.gmm import GaussianMixture
from lvmkit.models.kmeans import INITS


def _pairs(d: int, device) -> tuple[Tensor, Tensor]:
    """Row and column of each entry on or above the diagonal of a (d, d) matrix."""
    return tuple(torch.triu_indices(d, d, device=device))


def _features(x: Tensor, diag: bool, dtype: torch.dtype) -> Tensor:
    """Per-point features whose linear maps give every quantity EM needs, one column per point,
    computed in x's dtype and stored in ``dtype``: (F, n) = [x*x (diag) or x_i x_j for i <= j
    (full, row by row), x, 1]. Points along columns: the E-step's per-point work then runs
    over contiguous rows of length n."""
    n, d = x.shape
    xt = x.T.contiguous()
    quad = d if diag else d * (d + 1) // 2
    out = torch.empty(quad + d + 1, n, dtype=dtype, device=x.device)
    if diag:
        torch.mul(xt, xt, out=out[:d])
    else:
        row = 0
        for i in range(d):  # x_i x_j for j >= i, in the order of _pairs
            torch.mul(xt[i : i + 1], xt[i:], out=out[row : row + d - i])
            row += d - i
    out[quad : quad + d] = xt
    out[-1] = 1
    return out


def _coefficients(weights: Tensor, means: Tensor, cov: Tensor, diag: bool) -> Tensor:
    """A (K, F) with A @ features(x) = log w_k + log N(x | mu_k, Sigma_k), expanding
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
        i, j = _pairs(d, means.device)
        quad = torch.where(i == j, -0.5, -1.0) * prec[:, i, j]  # x^T P x counts i != j twice
        lin = (prec @ means[:, :, None]).squeeze(-1)
        const = -0.5 * (means * lin).sum(1) - tril.diagonal(dim1=-2, dim2=-1).log().sum(1)
    const = const + weights.log() - 0.5 * d * math.log(2 * math.pi)
    return torch.cat([quad, lin, const[:, None]], dim=1)


def _weighted_sums(resp: Tensor, feats: Tensor, block: int = 2048) -> Tensor:
    """resp @ feats.T: (K, F) from (K, n) and (F, n). A long reduction split into a batch of
    shorter ones runs ~1.5x faster on two cores (measured with MKL for n >= 8192)."""
    n = resp.shape[1]
    if n < 4 * block or n % block:
        return resp @ feats.T
    r = resp.view(len(resp), n // block, block).transpose(0, 1)  # (n / block, K, block)
    f = feats.view(len(feats), n // block, block).permute(1, 2, 0)  # (n / block, block, F)
    return (r @ f).sum(0)


def _e_step_stats(chunks, coef: Tensor, g) -> tuple[float, Tensor]:
    """One pass over the feature chunks (F, n): the mean log-likelihood and the
    responsibilities' sufficient statistics [sum r x*x or r x_i x_j, sum r x, sum r] per
    component, (K, F), summed over chunks in float64 whatever the chunks' dtype. Under torchrun
    each process passes its rows and the sums travel in one all-reduce."""
    stats, total, n = 0.0, 0.0, 0
    cut = math.log(torch.finfo(coef.dtype).eps) - 5
    floor = 1.5 * math.exp(cut)  # between exp(cut) and the next value exp can give
    for feats in chunks():
        log_joint = coef @ feats  # (K, n)
        top = log_joint.amax(0)
        # Terms below eps * e^-5 of the largest change the sum by less than rounding: they are
        # set to 0 rather than exp'd into denormals, which make the products below ~30x slower.
        resp = log_joint.sub_(top).clamp_min_(cut).exp_()
        resp = torch.nn.functional.threshold_(resp, floor, 0.0)
        norm = resp.sum(0)
        resp /= norm
        total += float((top + norm.log()).double().sum())  # float64: N terms of ~ -20
        stats = stats + _weighted_sums(resp, feats).double()
        n += feats.shape[1]
    totals = torch.tensor([total, n], dtype=torch.float64, device=stats.device)
    all_reduce_sum([stats, totals], g)
    return float(totals[0] / totals[1]), stats


# How far float32 arithmetic may be off, at worst, before an iteration is redone in the data's
# float64: in any log-density (nats) and in any variance (relative). Both are worst-case bounds;
# on 200k blobs the measured errors are ~1e-5 nats and ~4e-5 (bounds 2e-4 and 7e-3), and a
# cluster 100x tighter than its distance from the data's mean trips the second.
FAST_LOG_DENSITY_ERROR = 1e-2
FAST_VARIANCE_ERROR = 1e-2
SUM_ROUNDING = 512 * torch.finfo(torch.float32).eps  # a float32 sum of a chunk, worst case


def _variance_error(stats: Tensor, d: int, diag: bool) -> float:
    """The largest relative error float32 sums can put in a variance: the rounding of
    sum r x^2 over what is left after the mean's share cancels (a tight cluster far from the
    data's mean cancels most of it)."""
    sxx, sx, nk = stats[:, : -d - 1], stats[:, -d - 1 : -1], stats[:, -1:]
    if not diag:
        i, j = _pairs(d, stats.device)
        sxx = sxx[:, i == j]
    left = (sxx - sx * sx / nk.clamp_min(1e-300)).clamp_min(1e-300)
    return float((SUM_ROUNDING * sxx.abs() / left).max())


def _m_step(n: int, stats: Tensor, d: int, diag: bool, reg_covar: float):
    sxx, sx, nk = stats[:, : -d - 1], stats[:, -d - 1 : -1], stats[:, -1]
    nk = nk + 10 * torch.finfo(nk.dtype).eps  # as scikit-learn: no empty component divides by 0
    means = sx / nk[:, None]
    if diag:
        # E[x^2] - mean^2 cancels: in float32 it can fall below 0 for a tight cluster
        cov = (sxx / nk[:, None] - means**2).clamp_min(0) + reg_covar
    else:
        eye = torch.eye(d, dtype=means.dtype, device=means.device)
        i, j = _pairs(d, stats.device)
        second = means.new_zeros(len(means), d, d)  # sum r x x^T from its upper triangle
        second[:, i, j] = sxx
        second[:, j, i] = sxx
        cov = second / nk[:, None, None] - means[:, :, None] * means[:, None, :]
        cov = 0.5 * (cov + cov.transpose(-1, -2)) + reg_covar * eye
    return nk / n, means, cov


class MixtureEM(Algorithm):
    """Closed-form EM for a GaussianMixture, one pass over the data per epoch (the loop's
    batch is the whole data: every process sums the statistics of its rows). Starts from
    ``init`` (``GaussianMixture.initialize``: scikit-learn's starts, drawn with ``seed``) or,
    with init=None, from the mixture's parameters. Computes in the data's dtype and device;
    stops when the mean log-likelihood changes by less than ``tol``. Per-point features are
    kept between iterations when they fit in ``cache_bytes``.

    Parameters
    ----------
    gmm : GaussianMixture
    device : torch.device
    tol : float
    init : str, optional
        "kmeans", "k-means++", "random", "random_from_data", or None (the current parameters).
    seed : int
    chunk_size : int
        Datapoints per pass of the E-step.
    cache_bytes : int
        Memory the per-point features may keep between iterations.
    fast : bool
        Keep them (else recompute each iteration).
    """

    name = "mixture-em"
    converges = True
    draws = False
    advice = "raise max_iter, loosen tol, or check for degenerate data"

    def __init__(self, gmm: GaussianMixture, *, device: torch.device, tol: float = 1e-3,
                 init: str | None = "kmeans", seed: int = 0, chunk_size: int = 16384,
                 cache_bytes: int = 2**28, fast: bool = True):  # fmt: skip
        if not isinstance(gmm, GaussianMixture):
            raise TypeError(f"MixtureEM fits a GaussianMixture, got {type(gmm).__name__}")
        if gmm.config.prior:
            raise ValueError("EM maximises the likelihood; build the mixture with prior=False")
        if init is not None and init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {list(INITS)}, or None")
        self.gmm, self.tol, self.init, self.seed = (
            gmm,
            check_number("tol", tol, positive=False),
            init,
            seed,
        )
        self.chunk_size, self.cache_bytes = check_count("chunk_size", chunk_size), cache_bytes
        self.fast = fast
        self.device, self.group = device, group(device)
        self.diag = gmm.config.covariance == "diag"
        self.lower = -math.inf
        self.exact_steps = 0  # float64 data: iterations float32 could not be trusted with
        self.param_state = {"params": {}, "constraints": {}}

    def settings(self) -> dict:
        return {"tol": self.tol, "init": self.init, "reg_covar": self.gmm.config.min_variance}

    def setup(self, data, batch_size: int) -> None:
        x = data.batch(torch.arange(len(data), device=self.device))[0]
        if not x.is_floating_point():
            raise TypeError(f"EM fits floating-point data, got {x.dtype}: pass x.double()")
        self.gmm.check_data(x)
        if not all_finite(x, self.chunk_size):
            raise ValueError("x holds NaN/inf values; remove or impute them before fitting")
        self.gmm.to(device=x.device, dtype=x.dtype)
        self.n, self.d = x.shape
        self.shift = x.mean(0)  # EM is shift-equivariant; centring keeps float32 sums accurate
        mine = x[shard(len(x), self.group)] - self.shift
        # float64 data: the per-point work in float32 where it is accurate enough, the sums,
        # parameters and any iteration it is not in float64
        self.work = torch.float32 if self.fast and x.dtype == torch.float64 else x.dtype
        self.chunks = self._chunker(mine, self.work)
        self.exact_chunks = None if self.work != x.dtype else self.chunks
        self.rows = mine  # for the float64 features, built the first time an iteration needs them
        if self.work != x.dtype:  # the largest |feature| of each kind, for the error bounds
            scale = torch.stack([f.abs().amax(1) for f in self.chunks()]).amax(0)
            self.feature_scale = scale.double()
        if self.init is not None:  # every process computes the same start from all the data
            self.gmm.initialize(x, method=self.init, seed=self.seed)
        with torch.no_grad():
            g = self.gmm
            self.weights, self.means, self.cov = g.weights, g.means - self.shift, g.covariances

    def _chunker(self, mine: Tensor, dtype: torch.dtype):
        """A function giving this process's feature chunks in ``dtype``: built once and kept
        when they fit in cache_bytes, else rebuilt per chunk (memory bounded by the chunk size)."""
        size, diag = self.chunk_size, self.diag
        d = mine.shape[1]
        width = 2 * d + 1 if diag else d * (d + 1) // 2 + d + 1
        itemsize = torch.finfo(dtype).bits // 8
        if len(mine) * width * itemsize <= self.cache_bytes:
            cached = [_features(mine[i : i + size], diag, dtype) for i in range(0, len(mine), size)]
            return lambda: iter(cached)
        starts = range(0, len(mine), size)
        return lambda: (_features(mine[i : i + size], diag, dtype) for i in starts)

    def step(self, index: Tensor, *, keys: None, first: bool, stop: bool) -> float:
        """One EM iteration over this process's rows (``index`` is all of them)."""
        self.previous = self.lower
        coef = _coefficients(self.weights, self.means, self.cov, self.diag)
        fast = self._fast_e_step(coef) if self.work != coef.dtype else None
        if fast is None:
            if self.exact_chunks is None:
                self.exact_chunks = self._chunker(self.rows, self.rows.dtype)
            self.exact_steps += self.work != coef.dtype
            fast = _e_step_stats(self.exact_chunks, coef, self.group)
        lower, stats = fast
        self.lower = lower
        reg = self.gmm.config.min_variance
        stats = stats.to(self.means.dtype)
        self.weights, self.means, self.cov = _m_step(self.n, stats, self.d, self.diag, reg)
        self.stop_requested = vote(stop, self.group)
        return -self.lower

    def _fast_e_step(self, coef: Tensor) -> tuple[float, Tensor] | None:
        """The E-step in float32, or None where its worst-case error would pass a bound (every
        process agrees: the bound's vote and the sums are shared)."""
        bound = torch.finfo(self.work).eps * (coef.abs() @ self.feature_scale).max()
        if vote(float(bound) > FAST_LOG_DENSITY_ERROR, self.group):
            return None
        lower, stats = _e_step_stats(self.chunks, coef.to(self.work), self.group)
        if _variance_error(stats, self.d, self.diag) > FAST_VARIANCE_ERROR:
            return None
        return lower, stats

    def end_epoch(self, losses: list[float]) -> tuple[float, bool]:
        previous = -losses[-1] if losses else -math.inf
        return -self.lower, abs(self.lower - previous) < self.tol

    def state_dict(self) -> dict:
        return {"weights": self.weights, "means": self.means, "covariances": self.cov,
                "lower": self.lower}  # fmt: skip

    def load_state_dict(self, state: dict, *, source: str) -> None:
        shapes = {"weights": self.weights.shape, "means": self.means.shape,
                  "covariances": self.cov.shape}  # fmt: skip
        if set(shapes) - set(state) or any(state[k].shape != v for k, v in shapes.items()):
            raise CheckpointError(f"{source} does not hold a fit of this mixture's shape")
        to = dict(dtype=self.means.dtype, device=self.device)
        self.weights, self.means = state["weights"].to(**to), state["means"].to(**to)
        self.cov, self.lower = state["covariances"].to(**to), state["lower"]

    def finish(self) -> None:
        self.gmm.set_params(self.weights, self.means + self.shift, self.cov)
        self.param_state = {"params": {}, "constraints": {}}  # the store fit(gmm.model) leaves
        with pyro.get_param_store().scope(self.param_state):
            pyro.module("gmm", self.gmm)
            store = pyro.get_param_store()
            self._params = {n: p.detach().clone() for n, p in store.named_parameters()}

    def params(self) -> dict[str, Tensor]:
        return self._params

    def info(self) -> dict:
        return {"e_step": "closed-form", "exact_steps": self.exact_steps}
