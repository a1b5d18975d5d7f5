"""Gaussian mixture: z ~ Categorical(w), x | z ~ N(mu_z, Sigma_z); z is enumerated (summed out)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from lvmkit import data as lvdata
from lvmkit.core.checks import check_count, check_number
from lvmkit.models.base import BuiltinModel
from lvmkit.models.kmeans import initial_responsibilities

COVARIANCES = ("diag", "full")


@dataclass
class GaussianMixtureConfig:
    dim: int = 2
    components: int = 3
    covariance: str = "diag"  # "diag" or "full"
    # Conjugate priors for MAP fitting; False fits by maximum likelihood.
    prior: bool = False
    weight_concentration: float = 2.0  # Dirichlet(alpha) on the weights; alpha > 1 keeps them > 0
    mean_prior_scale: float = 10.0  # N(0, s^2 I) on each mean
    # Inverse-gamma(a, b) on each variance (diag); Wishart(D + 2a, (2b I)^-1) on each precision
    # (full), whose mode sits near a covariance of b/a I.
    covariance_prior_shape: float = 2.0
    covariance_prior_rate: float = 0.1
    # Size of the whole dataset, so that a minibatch carries its share of the prior. None applies
    # the whole prior to every batch (right when each batch is the whole dataset).
    num_data: int | None = None
    # The data's shape as pictures (C, H, W), when the vectors are flattened images; None draws
    # each vector as one row.
    image_shape: tuple[int, ...] | None = None
    # Floor on the variances (diag) or on the squared diagonal of the Cholesky factors (full),
    # as EM's reg_covar: without one, SVI can shrink a component onto a single point (or a dim
    # that is constant in the data) and drive its density, and the likelihood, without bound.
    min_variance: float = 1e-6


class GaussianMixture(BuiltinModel):
    """K Gaussians in D dims. Fit with ``lvmkit.fit(gmm.model, gmm.guide, x, elbo="enum")``.

    Parameters are stored as weight logits (K,), means (K, D) and either log std devs (K, D) or
    Cholesky factors with a log diagonal (K, D, D), so EM can write closed-form values in.

    Parameters
    ----------
    config : GaussianMixtureConfig, optional
        Its settings, the defaults where None (``lvmkit fit gmm --help`` lists them with
        their meaning).
    """

    config_class = GaussianMixtureConfig
    can_sample = True
    can_complete = True  # the exact Gaussian conditional
    can_encode = True  # encode(x): the responsibilities p(z | x)
    closed_form_em = True  # lvmkit.em(gmm, x)
    density = "exact"
    default_elbo = "enum"
    data_kind = "continuous"

    @classmethod
    def config_for_data(cls, image_shape, levels, settings):
        """Images become vectors of dim C*H*W."""
        shape = tuple(image_shape)
        return cls.config_class(**settings, dim=math.prod(shape), image_shape=shape)

    @property
    def picture_shape(self) -> tuple[int, int, int]:
        return tuple(self.config.image_shape or (1, 1, self.config.dim))

    def __init__(self, config: GaussianMixtureConfig | None = None):
        super().__init__()
        self.config = c = config or GaussianMixtureConfig()
        if c.covariance not in COVARIANCES:
            raise ValueError(f"unknown covariance {c.covariance!r}; choose one of {COVARIANCES}")
        check_count("components", c.components)
        check_count("dim", c.dim)
        check_number("min_variance", c.min_variance)  # above 0: EM's floor keeps it finite
        k, d = c.components, c.dim
        self.weight_logits = nn.Parameter(torch.zeros(k))
        self.means = nn.Parameter(torch.randn(k, d))
        if c.covariance == "diag":
            self.log_scales = nn.Parameter(torch.zeros(k, d))
        else:
            self.tril_raw = nn.Parameter(torch.zeros(k, d, d))  # diag holds log of L's diagonal
        self._warned_collapse = False

    # ---- parameters in natural form -------------------------------------------------------
    @property
    def weights(self) -> Tensor:
        return self.weight_logits.softmax(-1)

    def _log_scales(self) -> Tensor:
        """Log std devs (diag, (K, D)) or log diagonal of the Cholesky factors (full, (K, D)),
        held at or above the floor ``min_variance`` (a clamp: below it, no gradient)."""
        if self.config.covariance == "diag":
            raw = self.log_scales
        else:
            raw = self.tril_raw.diagonal(dim1=-2, dim2=-1)
        floor = self.config.min_variance
        return raw.clamp(min=0.5 * math.log(floor)) if floor > 0 else raw

    @property
    def scale_tril(self) -> Tensor:
        """Cholesky factors of the covariances: (K, D, D)."""
        if self.config.covariance == "diag":
            return torch.diag_embed(self._log_scales().exp())
        return self.tril_raw.tril(-1) + torch.diag_embed(self._log_scales().exp())

    @property
    def covariances(self) -> Tensor:
        """(K, D, D) for full covariance, (K, D) variances for diag (scikit-learn's shapes)."""
        if self.config.covariance == "diag":
            return (2 * self._log_scales()).exp()
        tril = self.scale_tril
        return tril @ tril.transpose(-1, -2)

    def _warn_if_collapsed(self) -> None:
        """Once per mixture: say so when variances sit at the floor ``min_variance``."""
        floor = self.config.min_variance
        if floor <= 0 or self._warned_collapse:
            return
        with torch.no_grad():
            raw = self.log_scales if self.config.covariance == "diag" else self.tril_raw
            raw = raw if self.config.covariance == "diag" else raw.diagonal(dim1=-2, dim2=-1)
            at_floor = raw <= 0.5 * math.log(floor) + 1e-6  # (K, D)
        if at_floor.any():
            self._warned_collapse = True
            components = at_floor.any(1).nonzero().flatten().tolist()
            warnings.warn(
                f"GaussianMixture: components {components} have variances at the floor "
                f"min_variance={floor:g} in {int(at_floor.sum())} (component, dim) pairs: the "
                "data are constant there (EM's reg_covar stops there too), or an SVI fit shrank "
                "components onto points to drive the likelihood up; raise min_variance if the "
                "likelihood matters to you",
                stacklevel=3,
            )

    @torch.no_grad()
    def set_params(self, weights: Tensor, means: Tensor, covariances: Tensor) -> None:
        """Write natural parameters in (shapes as ``covariances``); used by EM and tests."""
        self.weight_logits.copy_(weights.log())
        self.means.copy_(means)
        if self.config.covariance == "diag":
            self.log_scales.copy_(0.5 * covariances.log())
        else:
            tril = torch.linalg.cholesky(covariances)
            self.tril_raw.copy_(
                tril.tril(-1) + torch.diag_embed(tril.diagonal(dim1=-2, dim2=-1).log())
            )

    @torch.no_grad()
    def initialize(self, x: Tensor, *, method: str = "kmeans", seed: int = 0) -> GaussianMixture:
        """Start from x (N, dim) as scikit-learn's ``init_params`` do: ``method`` ("kmeans",
        "k-means++", "random" or "random_from_data", see ``kmeans.INITS``) gives
        responsibilities, drawn with ``seed``; weights, means and covariances are their
        weighted moments, plus ``min_variance`` on the diagonal (scikit-learn's reg_covar)."""
        self.check_data(x)
        resp = initial_responsibilities(x, self.config.components, method, seed)  # (N, K)
        nk = resp.sum(0) + 10 * torch.finfo(x.dtype).eps  # as scikit-learn: no division by 0
        means = resp.T @ x / nk[:, None]  # (K, D)
        covs = []
        for k in range(len(means)):  # two passes: a tight cluster far from 0 keeps its spread
            centred = x - means[k]
            weighted = resp[:, k, None] * centred
            diag = self.config.covariance == "diag"
            covs.append((weighted * centred).sum(0) if diag else weighted.T @ centred)
        cov = torch.stack(covs) / (nk[:, None] if diag else nk[:, None, None])
        floor = self.config.min_variance
        cov = cov + (floor if diag else floor * torch.eye(x.shape[1]).to(x))
        if not diag and torch.linalg.cholesky_ex(cov).info.any():
            raise ValueError(
                f"the start's covariances are not positive definite in {x.dtype}, which cannot "
                "resolve a cluster this tight: fit in float64 (x.double()), or raise min_variance"
            )
        self.set_params(nk / len(x), means, cov)
        return self

    # ---- the probabilistic program ---------------------------------------------------------
    def check_data(self, x: Tensor) -> None:
        """ValueError unless x is a batch of vectors (N, dim)."""
        if x.dim() != 2 or x.shape[1] != self.config.dim:
            raise ValueError(
                f"GaussianMixture was built for vectors of dim {self.config.dim}, got a batch of "
                f"shape {tuple(x.shape)}; flatten images with x.flatten(1) and set dim to match"
            )

    def component(self, z: Tensor) -> dist.Distribution:
        """p(x | z) for component indices z (any shape)."""
        if self.config.covariance == "diag":
            return dist.Normal(self.means[z], self._log_scales()[z].exp()).to_event(1)
        return dist.MultivariateNormal(self.means[z], scale_tril=self.scale_tril[z])

    def log_prior(self) -> Tensor:
        """log p(weights, means, covariances) under the config's conjugate priors: a scalar."""
        c = self.config
        lp = dist.Dirichlet(torch.full_like(self.weight_logits, c.weight_concentration)).log_prob(
            self.weights
        )
        lp = lp + dist.Normal(0.0, c.mean_prior_scale).log_prob(self.means).sum()
        if c.covariance == "diag":
            ig = dist.InverseGamma(
                torch.tensor(c.covariance_prior_shape), torch.tensor(c.covariance_prior_rate)
            )
            return lp + ig.log_prob(self.covariances).sum()
        eye = torch.eye(c.dim, dtype=self.means.dtype)
        wishart = torch.distributions.Wishart(
            df=torch.tensor(c.dim + 2 * c.covariance_prior_shape, dtype=self.means.dtype),
            covariance_matrix=eye / (2 * c.covariance_prior_rate),
        )
        precision = torch.cholesky_inverse(self.scale_tril)
        return lp + wishart.log_prob(precision).sum()

    def model(self, x: Tensor | None = None, n: int | None = None) -> Tensor:
        if x is None and n is None:
            raise ValueError("pass a batch x, or n to sample n datapoints")
        if x is not None:
            self.check_data(x)
            n = len(x)
        pyro.module("gmm", self)
        if self.config.prior:
            share = 1.0 if self.config.num_data is None else n / self.config.num_data
            pyro.factor("log_prior", share * self.log_prior())
        with pyro.plate("data", n):
            z = pyro.sample(
                "z", dist.Categorical(logits=self.weight_logits), infer={"enumerate": "parallel"}
            )
            return pyro.sample("x", self.component(z), obs=x)

    def bayesian_model(self, x: Tensor) -> Tensor:
        """The mixture with its parameters as random variables, under the config's priors
        (Dirichlet weights, normal means, inverse-gamma variances; diagonal covariance only),
        z summed out: for NUTS over the parameters (``lvmkit.nuts(gmm.bayesian_model, x)``)."""
        c = self.config
        if c.covariance != "diag":
            raise ValueError("bayesian_model supports covariance='diag' only")
        self.check_data(x)
        k, d = c.components, c.dim
        ones = torch.ones(k, d, dtype=x.dtype, device=x.device)
        weights = pyro.sample("weights", dist.Dirichlet(c.weight_concentration * ones[:, 0]))
        means = pyro.sample("means", dist.Normal(0 * ones, c.mean_prior_scale).to_event(2))
        variances = pyro.sample(
            "variances",
            dist.InverseGamma(c.covariance_prior_shape * ones, c.covariance_prior_rate).to_event(2),
        )
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
            return pyro.sample("x", dist.Normal(means[z], variances[z].sqrt()).to_event(1), obs=x)

    def guide(self, x: Tensor | None = None, n: int | None = None) -> None:
        """Nothing to guess: z is summed out exactly by the "enum" ELBO."""

    def inputs(self, data: lvdata.ImageData) -> tuple[Tensor]:
        return (self.prepare(data),)

    def prepare(self, data: lvdata.ImageData) -> Tensor:
        """Images as vectors (N, C*H*W): discrete pixels dequantized once, (v + u) / levels
        with u ~ U[0, 1) drawn from a fixed seed, so that the mixture's density bounds the
        discrete likelihood (``lvmkit.evaluate`` reports it so); continuous ones as they are."""
        if data.levels is None:
            return data.x.flatten(1)
        noise = torch.rand(data.x.shape, generator=torch.Generator().manual_seed(0))
        return ((data.x + noise.to(data.x)) / data.levels).flatten(1)

    # ---- uses -----------------------------------------------------------------------------
    @torch.no_grad()
    def component_log_probs(self, x: Tensor) -> Tensor:
        """log w_k + log N(x_n | mu_k, Sigma_k): (N, K)."""
        self.check_data(x)
        self._warn_if_collapsed()
        return self.weight_logits.log_softmax(-1) + self.component(
            torch.arange(self.config.components)
        ).log_prob(x.unsqueeze(-2))

    @torch.no_grad()
    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x_n): (N,)."""
        return self.component_log_probs(x).logsumexp(-1)

    @torch.no_grad()
    def responsibilities(self, x: Tensor) -> Tensor:
        """p(z = k | x_n): (N, K)."""
        return self.component_log_probs(x).softmax(-1)

    @torch.no_grad()
    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """n draws: x (n, D) and their components z (n,)."""
        z = dist.Categorical(logits=self.weight_logits).sample((check_count("n", n),))
        return self.component(z).sample(), z

    def sample_images(self, n: int) -> Tensor:
        """n draws as pictures (n, C, H, W)."""
        return self.to_images(self.sample(n)[0])

    def encode(self, x: Tensor) -> dist.Distribution:
        """p(z | x) as a distribution over components."""
        return dist.Categorical(probs=self.responsibilities(x))

    @torch.no_grad()
    def complete(self, x: Tensor, known: Tensor) -> Tensor:
        """Sample the unknown coordinates from p(x_unknown | x_known), exactly: per datapoint,
        z ~ p(z | x_known), then the Gaussian conditional of that component."""
        out = x.clone()
        cov = self.covariances
        cov = torch.diag_embed(cov) if self.config.covariance == "diag" else cov
        for i in range(len(x)):
            k, u = known[i], ~known[i]
            if not u.any():
                continue
            marg = dist.MultivariateNormal(self.means[:, k], cov[:, k][:, :, k])
            logits = self.weight_logits.log_softmax(-1) + marg.log_prob(x[i, k])
            j = int(dist.Categorical(logits=logits).sample())
            s_uk, s_kk = cov[j][u][:, k], cov[j][k][:, k]
            gain = s_uk @ torch.linalg.inv(s_kk)
            loc = self.means[j, u] + gain @ (x[i, k] - self.means[j, k])
            out[i, u] = dist.MultivariateNormal(loc, cov[j][u][:, u] - gain @ s_uk.T).sample()
        return out
