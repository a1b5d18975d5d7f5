import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SklearnGMM

import lvmkit
from lvmkit.inference import GaussianMixtureEM, MixtureEM
from lvmkit.models import GaussianMixture, GaussianMixtureConfig


@pytest.fixture(scope="module")
def blobs():
    x, _ = make_blobs(n_samples=3000, n_features=4, centers=4, random_state=0)
    means0 = x[np.random.default_rng(0).choice(len(x), 4, replace=False)]
    return x, means0


@pytest.mark.parametrize("covariance", ["full", "diag"])
@pytest.mark.parametrize("dtype, close", [("float64", 1e-5), ("auto", 1e-4)])
def test_em_matches_scikit_learn_from_the_same_start(blobs, covariance, dtype, close):
    """float64 is scikit-learn's arithmetic; "auto" (the default) does the per-point work in
    float32 where that is accurate: the same iterations, the fit to 1e-6."""
    x, means0 = blobs
    cov0 = np.stack([np.eye(4)] * 4) if covariance == "full" else np.ones((4, 4))
    prec0 = np.linalg.inv(cov0) if covariance == "full" else 1 / cov0
    kw = dict(
        covariance_type=covariance,
        means_init=means0,
        weights_init=np.full(4, 0.25),
        tol=1e-4,
        max_iter=300,
    )
    theirs = SklearnGMM(4, precisions_init=prec0, **kw).fit(x)
    # chunk_size=700 streams the data in uneven chunks: the statistics must add up the same
    ours = GaussianMixtureEM(4, precisions_init=prec0, chunk_size=700, dtype=dtype, **kw).fit(x)
    assert ours.n_iter_ == theirs.n_iter_ and ours.converged_ and theirs.converged_
    rel = abs(ours.score(x) - theirs.score(x)) / abs(theirs.score(x))
    assert rel <= 1e-6 and abs(ours.lower_bound_ - theirs.lower_bound_) <= 1e-6 * abs(
        theirs.lower_bound_
    )
    for a, b in [
        (ours.weights_, theirs.weights_),
        (ours.means_, theirs.means_),
        (ours.covariances_, theirs.covariances_),
    ]:
        assert np.allclose(a, b, rtol=close, atol=close * np.abs(b).max() / 10)
    assert np.allclose(ours.precisions_cholesky_, theirs.precisions_cholesky_, rtol=close,
                       atol=close / 10)  # fmt: skip
    assert np.allclose(ours.predict_proba(x[:50]), theirs.predict_proba(x[:50]), atol=1e-5)
    assert np.isclose(ours.bic(x), theirs.bic(x), rtol=1e-5)
    assert np.isclose(ours.aic(x), theirs.aic(x), rtol=1e-5)


def test_float32_work_is_checked_and_a_tight_cluster_is_fitted_in_float64():
    """The default dtype does the per-point work in float32 only where its worst-case error is
    small: on blobs every iteration is float32's; a cluster 10^4 times tighter than its distance
    from the data's mean is fitted in float64 throughout, exactly as dtype="float64" fits it."""
    x, _ = make_blobs(n_samples=2000, n_features=3, centers=3, random_state=1)
    tight = 50 + 1e-4 * np.random.default_rng(0).normal(size=(500, 3))
    for data, exact in [(x, 0), (np.r_[x, tight], 10)]:
        t = torch.as_tensor(data, dtype=torch.float64)
        results = {}
        for fast in (True, False):
            gmm = GaussianMixture(GaussianMixtureConfig(dim=3, components=4)).double()
            em = MixtureEM(gmm, device=t.device, tol=0.0, fast=fast)
            results[fast] = (lvmkit.run(em, t, epochs=10, progress=False), gmm)
        fast_result, fast_gmm = results[True]
        assert fast_result.info["exact_steps"] == exact
        if exact:  # every iteration redone in float64: the float64 fit, bit for bit
            assert fast_result.losses == results[False][0].losses
            assert torch.equal(fast_gmm.covariances, results[False][1].covariances)
        else:
            assert fast_result.losses == pytest.approx(results[False][0].losses, rel=1e-6)


def fit_em(gmm, x, *, max_iter=100, **options):
    """Closed-form EM of gmm on x in x's dtype, in the loop."""
    return lvmkit.run(MixtureEM(gmm, device=x.device, **options), x, epochs=max_iter,
                      progress=False)  # fmt: skip


def test_float32_and_restarts_reach_the_same_likelihood(blobs):
    x, _ = blobs
    f64 = GaussianMixtureEM(4, n_init=3, tol=1e-6, max_iter=500, dtype="float64").fit(x)
    f32 = GaussianMixtureEM(4, n_init=3, tol=1e-6, max_iter=500, dtype="float32").fit(x)
    assert abs(f64.score(x) - f32.score(x)) < 1e-3
    bounds = f64.lower_bounds_  # EM never decreases the likelihood (up to rounding)
    assert all(b >= a - 1e-9 for a, b in zip(bounds[:-1], bounds[1:], strict=True))


def test_em_and_svi_fit_the_same_model_object(blobs):
    x = torch.as_tensor(blobs[0], dtype=torch.float32)
    em = GaussianMixture(GaussianMixtureConfig(dim=4, components=4))
    fit_em(em, x)  # EM, in place
    svi = GaussianMixture(GaussianMixtureConfig(dim=4, components=4)).initialize(x)
    lvmkit.fit(
        svi.model, svi.guide, x, elbo="enum", epochs=30, lr=0.05, batch_size=500, progress=False
    )
    assert abs(float(em.log_prob(x).mean() - svi.log_prob(x).mean())) < 0.05
    assert em.sample(3)[0].shape == (3, 4) and em.responsibilities(x[:2]).shape == (2, 4)


def test_em_warns_when_it_stops_early_and_rejects_bad_input(blobs):
    x, _ = blobs
    with pytest.warns(ConvergenceWarning, match="did not converge in 2 iterations"):
        GaussianMixtureEM(4, max_iter=2, tol=0.0).fit(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GaussianMixtureEM(4, max_iter=200).fit(x)
    with pytest.raises(ValueError, match="NaN"):
        GaussianMixtureEM(2).fit(np.array([[0.0, np.nan], [1.0, 2.0], [3.0, 4.0]]))
    with pytest.raises(ValueError, match=r"0 sample\(s\)"):
        GaussianMixtureEM(2).fit(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="init_params must be one of"):
        GaussianMixtureEM(2, init_params="kmeans+").fit(x)


def three_clusters() -> torch.Tensor:
    """600 points (600, 2) from a known 3-component mixture, seeded."""
    torch.manual_seed(0)
    truth = GaussianMixture(GaussianMixtureConfig(dim=2, components=3))
    truth.set_params(
        torch.tensor([0.2, 0.3, 0.5]),
        torch.tensor([[-4.0, 0.0], [0.0, 4.0], [4.0, -1.0]]),
        torch.full((3, 2), 0.5),
    )
    return truth.sample(600)[0]


def test_generic_em_with_exact_e_step_equals_closed_form_em():
    x = three_clusters()
    closed = GaussianMixture(GaussianMixtureConfig(dim=2, components=3)).initialize(x, seed=1)
    fit_em(closed, x, tol=1e-9, max_iter=500)
    generic = GaussianMixture(GaussianMixtureConfig(dim=2, components=3)).initialize(x, seed=1)
    result = lvmkit.em(generic.model, x, max_iter=15, m_steps=20, lr=0.05, tol=1e-5)
    assert result.info["e_step"] == "enum" and result.algorithm == "em" and result.epochs <= 15
    assert result.losses[-1] == pytest.approx(-float(generic.log_prob(x).mean()), abs=0.05)
    assert abs(float(generic.log_prob(x).mean() - closed.log_prob(x).mean())) < 1e-4
    hard = GaussianMixture(GaussianMixtureConfig(dim=2, components=3)).initialize(x, seed=1)
    lvmkit.em(hard.model, x, max_iter=10, m_steps=20, lr=0.05, hard=True)
    assert float(hard.log_prob(x).mean()) <= float(closed.log_prob(x).mean()) + 1e-6


def test_generic_em_with_importance_e_step_reaches_the_ppca_maximum_likelihood():
    """Probabilistic PCA has a closed-form ML solution (Tipping & Bishop 1999) to aim at. With
    4 latent dims the prior is a poor proposal (EM on it stalled at -13.62 against -10.87, its
    log p(x) estimate at -15.14); reusing each E-step's draws as the next proposal reaches it."""
    import pyro
    import pyro.distributions as dist

    g = torch.Generator().manual_seed(0)
    d, q, n = 10, 4, 400
    w_true = torch.randn(d, q, generator=g)
    x = torch.randn(n, q, generator=g) @ w_true.T + 0.3 * torch.randn(n, d, generator=g)

    def model(x):
        w = pyro.param("w", 0.1 * torch.ones(d, q))
        mu = pyro.param("mu", torch.zeros(d))
        s = pyro.param("s", torch.tensor(1.0), constraint=dist.constraints.positive)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(q), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ w.T + mu, s).to_event(1), obs=x)

    def exact_log_lik(w, mu, s):
        cov = w @ w.T + s**2 * torch.eye(d)
        return float(dist.MultivariateNormal(mu, cov).log_prob(x).mean())

    xc = x - x.mean(0)
    evals, evecs = torch.linalg.eigh(xc.T @ xc / n)  # ascending
    s2 = evals[:-q].mean()
    w_ml = evecs[:, -q:] * (evals[-q:] - s2).sqrt()
    best = exact_log_lik(w_ml, x.mean(0), s2.sqrt())
    torch.manual_seed(0)
    fit = lvmkit.em(model, x, num_samples=200, m_steps=10, lr=0.05)
    assert fit.info["e_step"] == "importance" and fit.converged
    p = fit.params
    reached = exact_log_lik(p["w"], p["mu"], p["s"])
    assert reached > exact_log_lik(0.1 * torch.ones(d, q), torch.zeros(d), torch.tensor(1.0))
    assert best - 0.05 < reached <= best + 1e-6, (reached, best)
    assert abs(-fit.losses[-1] - reached) < 0.05  # its own log p(x) estimate is not biased


def test_generic_em_rejects_unknown_e_steps():
    with pytest.raises(ValueError, match="unknown e_step 'gibbs'"):
        lvmkit.em(lambda x: None, torch.zeros(3, 2), e_step="gibbs")

    def continuous(x):
        import pyro
        import pyro.distributions as dist

        loc = pyro.param("loc", torch.zeros(()))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(loc, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    with pytest.raises(ValueError, match="e_step='enum' needs every latent site"):
        lvmkit.em(continuous, torch.zeros(3), e_step="enum")


def test_one_em_entry_point_returns_what_fit_returns(blobs):
    """lvmkit.em(gmm, x) runs the closed-form EM and gives a FitResult shaped like fit's."""
    x = torch.as_tensor(blobs[0])
    gmm = GaussianMixture(GaussianMixtureConfig(dim=4, components=4))
    result = lvmkit.em(gmm, x, device="cpu", seed=0)
    assert isinstance(result, lvmkit.FitResult)
    assert result.algorithm == "mixture-em" and result.converged
    assert result.info["e_step"] == "closed-form"
    assert result.losses[-1] == pytest.approx(-float(gmm.log_prob(x).mean()), abs=1e-3)
    # non-increasing up to the float32 rounding of the default's per-point log-densities
    losses = result.losses
    assert all(b <= a + 1e-6 * abs(a) for a, b in zip(losses, losses[1:], strict=False))
    assert torch.equal(result.params["gmm$$$means"], gmm.means.detach())
    sklearn_face = GaussianMixtureEM(4, covariance_type="diag", random_state=0).fit(x)
    assert sklearn_face.n_iter_ == result.epochs  # the same EM behind both faces
    with result.scope():  # the store fit(gmm.model, ...) would leave
        import pyro

        assert torch.equal(pyro.param("gmm$$$means"), gmm.means)
    with pytest.raises(ValueError, match=r"closed-form EM.*lvmkit.em\(gmm.model, x\)"):
        lvmkit.em(gmm, x, e_step="importance")


def test_svi_cannot_shrink_a_mixture_component_below_the_variance_floor():
    """A dim that is constant in the data lets SVI drive a variance to 0 and the likelihood up
    without bound; the built-in mixture holds it at min_variance (as EM's reg_covar) and says so."""
    x, _ = make_blobs(n_samples=600, n_features=2, centers=2, random_state=0)
    x = torch.as_tensor(np.c_[x, np.ones(len(x))], dtype=torch.float32)  # dim 2 is constant
    gmm = GaussianMixture(GaussianMixtureConfig(dim=3, components=2)).initialize(x)
    lvmkit.fit(gmm.model, gmm.guide, x, elbo="enum", epochs=40, lr=0.05, progress=False)
    assert float(gmm.covariances.detach().min()) >= 1e-6 * (1 - 1e-5)
    with pytest.warns(UserWarning, match=r"variances at the floor min_variance=1e-06"):
        bounded = float(gmm.log_prob(x).mean())
    # the constant dim adds at most log N(0 | 0, 1e-6) = 6.0 nats; unbounded it gave ~40
    assert bounded < 0.5 * math.log(1 / (2 * math.pi * 1e-6)) + 2


def test_a_gmm_written_as_a_plain_pyro_model_reaches_the_closed_form_optimum():
    """Generic EM (exact E-step, gradient M-step) on a user's own mixture, from the start the
    closed-form EM takes, stops converged at the closed-form optimum; cut short, it warns."""
    import pyro
    import pyro.distributions as dist
    from pyro.distributions import constraints

    x = three_clusters()
    closed = GaussianMixture(GaussianMixtureConfig(dim=2, components=3)).initialize(x, seed=1)
    start = [t.detach().clone() for t in (closed.weights, closed.means, closed.covariances)]
    fit_em(closed, x, init=None, tol=1e-9, max_iter=1000)
    optimum = float(closed.log_prob(x).mean())

    def model(x):
        w = pyro.param("weights", start[0], constraint=constraints.simplex)
        locs = pyro.param("locs", start[1])
        scales = pyro.param("scales", start[2].sqrt(), constraint=constraints.positive)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(locs[z], scales[z]).to_event(1), obs=x)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = lvmkit.em(model, x, tol=1e-5)
    assert result.converged and result.info["e_step"] == "enum"
    assert -result.losses[-1] == pytest.approx(optimum, abs=1e-4)
    with pytest.warns(ConvergenceWarning, match="did not converge in 2 iterations"):
        short = lvmkit.em(model, x, max_iter=2, tol=1e-9)
    assert short.converged is False and short.epochs == 2


def test_a_tight_cluster_far_from_the_mean_fits_from_float32_data():
    """E[x^2] - mean^2 cancels in float32 (NaN variances, or a non-positive-definite covariance
    before); lvmkit.em computes in float64, and fit_em in float32 says what to do."""
    x, _ = make_blobs(n_samples=600, n_features=3, centers=3, random_state=0)
    tight = 100 + 1e-2 * np.random.default_rng(0).standard_normal((30, 3))
    x = torch.as_tensor(np.r_[x, tight], dtype=torch.float32)
    for covariance in ("diag", "full"):
        config = GaussianMixtureConfig(dim=3, components=4, covariance=covariance)
        gmm, gmm64 = GaussianMixture(config), GaussianMixture(config)
        result, result64 = lvmkit.em(gmm, x), lvmkit.em(gmm64, x.double())
        assert torch.isfinite(gmm.means).all() and gmm.means.dtype == torch.float32
        assert result.losses == pytest.approx(result64.losses, abs=1e-9)  # float64's answer
    gmm = GaussianMixture(GaussianMixtureConfig(dim=3, components=4, covariance="full"))
    with pytest.raises(ValueError, match="not positive definite in torch.float32.*float64"):
        fit_em(gmm, x - 100, seed=0)  # here float32 cannot resolve the cluster's covariance


def test_gaussian_mixture_em_passes_scikit_learns_estimator_checks():
    """scikit-learn's own conformance suite; the one check it skips is the array-API check,
    which runs only with SCIPY_ARRAY_API=1 and array-api-compat installed."""
    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(GaussianMixtureEM(), on_fail=None)
    failed = [
        (r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"
    ]
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    assert failed == [] and skipped <= {"check_array_api_input"} and len(results) > 30


def kmeans_start(x: np.ndarray, k: int, covariance: str, reg: float) -> dict:
    """scikit-learn's "kmeans" start, from its own KMeans, as weights/means/precisions."""
    from sklearn.cluster import KMeans

    resp = np.eye(k)[KMeans(k, n_init=1, random_state=0).fit(x).labels_]
    nk = resp.sum(0)
    means = resp.T @ x / nk[:, None]
    if covariance == "diag":
        precisions = 1 / (resp.T @ x**2 / nk[:, None] - means**2 + reg)
    else:
        cov = [((x - m).T * r) @ (x - m) / n + reg * np.eye(x.shape[1])
               for m, r, n in zip(means, resp.T, nk, strict=True)]  # fmt: skip
        precisions = np.linalg.inv(np.stack(cov))
    return dict(weights_init=nk / len(x), means_init=means, precisions_init=precisions)


@pytest.mark.parametrize("covariance, reg", [("diag", 1e-6), ("full", 1e-3)])
def test_from_scikit_learns_kmeans_start_the_digits_fit_is_scikit_learns(covariance, reg):
    from sklearn.datasets import load_digits

    x = load_digits().data
    perm = np.random.default_rng(0).permutation(len(x))
    train, test = x[perm[:1500]], x[perm[1500:]]
    kw = dict(covariance_type=covariance, reg_covar=reg, **kmeans_start(train, 10, covariance, reg))
    theirs = SklearnGMM(10, **kw).fit(train)
    ours = GaussianMixtureEM(10, **kw).fit(train)
    assert ours.n_iter_ == theirs.n_iter_
    assert abs(ours.score(test) - theirs.score(test)) <= 1e-6 * abs(theirs.score(test))
    # lvmkit's own k-means start lands in the same region (k-means optima differ by seed)
    own = GaussianMixtureEM(10, covariance_type=covariance, reg_covar=reg, random_state=0)
    assert own.fit(train).score(test) > theirs.score(test) - 0.01 * abs(theirs.score(test))


def test_gaussian_mixture_em_in_a_pipeline_and_a_grid_search():
    from sklearn.base import clone
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline

    x = load_digits().data[:600]
    pipe = make_pipeline(PCA(8, random_state=0), GaussianMixtureEM(random_state=0))
    search = GridSearchCV(pipe, {"gaussianmixtureem__n_components": [1, 4]}, cv=3).fit(x)
    assert search.best_params_ == {"gaussianmixtureem__n_components": 4}  # more fits better
    est = GaussianMixtureEM(3, covariance_type="diag", warm_start=True, random_state=0)
    assert clone(est).get_params() == est.get_params()
    first = est.fit(x[:, :5]).lower_bound_
    assert est.set_params(max_iter=5).fit(x[:, :5]).lower_bound_ >= first - 1e-9  # warm start
    labels = est.predict(x[:, :5])
    assert isinstance(labels, np.ndarray) and labels.shape == (600,)
    samples, components = est.sample(10)
    assert samples.shape == (10, 5) and isinstance(components, np.ndarray)


@pytest.mark.parametrize(
    "start, message",
    [
        (dict(weights_init=np.array([1.2, -0.2])), r"weights_init must lie in \[0, 1\]"),
        (dict(weights_init=np.array([0.3, 0.3])), "weights_init must sum to 1, got 0.600000"),
        (dict(precisions_init=-np.stack([np.eye(3)] * 2)), "symmetric positive definite"),
        (dict(precisions_init=-np.ones((2, 3)), covariance_type="diag"), "must be positive"),
    ],
)
def test_starting_values_are_checked_as_scikit_learn_does(start, message):
    x = np.random.default_rng(0).normal(size=(50, 3))
    with pytest.raises(ValueError, match=message):
        GaussianMixtureEM(2, **start).fit(x)


def bernoulli_mixture():
    """A mixture of Bernoullis with pyro.param weights, its component enumerated, and the exact
    mean log-likelihood at any parameter values."""
    torch.manual_seed(0)
    x = torch.cat([torch.rand(60, 6) < 0.8, torch.rand(60, 6) < 0.2]).float()
    x[:, :3] = 1 - x[:, :3] * (torch.arange(120) >= 60)[:, None]

    def model(x):
        w = pyro.param("w", torch.ones(2) / 2, constraint=dist.constraints.simplex)
        p = pyro.param(
            "p",
            torch.full((2, 6), 0.5) + 0.1 * torch.randn(2, 6).clamp(-3, 3),
            constraint=dist.constraints.unit_interval,
        )
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Categorical(w), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Bernoulli(p[c]).to_event(1), obs=x)

    def exact(params):
        w, p = params["w"], params["p"]
        per = dist.Bernoulli(p).log_prob(x[:, None]).sum(-1) + w.log()
        return float(per.logsumexp(-1).mean())

    return model, x, exact


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_em_continues_a_fit_from_params_or_inside_its_scope():
    model, x, exact = bernoulli_mixture()
    fitted = lvmkit.fit(
        model, lambda x: None, x, elbo="enum", epochs=60, lr=0.05, batch_size=120, progress=False
    )
    at_fit = exact(fitted.params)
    first = lvmkit.em(model, x, params=fitted, max_iter=1)
    assert first.losses[0] == pytest.approx(-at_fit, abs=1e-5)
    with fitted.scope():
        scoped = lvmkit.em(model, x, max_iter=1)
    assert scoped.losses[0] == pytest.approx(-at_fit, abs=1e-5)
    by_values = lvmkit.em(model, x, params=fitted.params, max_iter=1)
    assert by_values.losses[0] == pytest.approx(-at_fit, abs=1e-5)
    # the fit is continued, not replaced: EM from there improves on it, and leaves it as it was
    more = lvmkit.em(model, x, params=fitted, max_iter=30, lr=0.05)
    assert exact(more.params) > at_fit - 1e-6
    assert exact(fitted.params) == at_fit
    fresh = lvmkit.em(model, x, max_iter=1)  # an empty store: the model's initial values
    assert fresh.losses[0] > -at_fit + 0.5


def test_em_names_a_parameter_the_given_values_lack():
    model, x, _ = bernoulli_mixture()
    with pytest.warns(UserWarning, match=r"\['p'\] had no value"):
        lvmkit.em(model, x, params={"w": torch.tensor([0.5, 0.5])}, max_iter=1)
