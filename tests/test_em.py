import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SklearnGMM

import lvmkit
from lvmkit.inference.em import GaussianMixtureEM, fit_em
from lvmkit.models import GaussianMixture, GaussianMixtureConfig


@pytest.fixture(scope="module")
def blobs():
    x, _ = make_blobs(n_samples=3000, n_features=4, centers=4, random_state=0)
    means0 = x[np.random.default_rng(0).choice(len(x), 4, replace=False)]
    return x, means0


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_em_matches_scikit_learn_from_the_same_start(blobs, covariance):
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
    ours = GaussianMixtureEM(4, covariances_init=cov0, chunk_size=700, **kw).fit(x)
    assert ours.n_iter_ == theirs.n_iter_ and ours.converged_ and theirs.converged_
    rel = abs(ours.score(x) - theirs.score(x)) / abs(theirs.score(x))
    assert rel <= 1e-5 and abs(ours.lower_bound_ - theirs.lower_bound_) <= 1e-5 * abs(
        theirs.lower_bound_
    )
    for a, b in [
        (ours.weights_, theirs.weights_),
        (ours.means_, theirs.means_),
        (ours.covariances_, theirs.covariances_),
    ]:
        assert np.allclose(a.numpy(), b, rtol=1e-5, atol=1e-8)
    assert np.allclose(ours.predict_proba(x[:50]).numpy(), theirs.predict_proba(x[:50]), atol=1e-6)
    assert np.isclose(ours.bic(x), theirs.bic(x), rtol=1e-5)
    assert np.isclose(ours.aic(x), theirs.aic(x), rtol=1e-5)


def test_float32_and_restarts_reach_the_same_likelihood(blobs):
    x, _ = blobs
    f64 = GaussianMixtureEM(4, n_init=3, tol=1e-6, max_iter=500).fit(x)
    f32 = GaussianMixtureEM(4, n_init=3, tol=1e-6, max_iter=500, dtype=torch.float32).fit(x)
    assert abs(f64.score(x) - f32.score(x)) < 1e-3
    assert f64.lower_bounds_ == sorted(f64.lower_bounds_)  # EM never decreases the likelihood


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
        GaussianMixtureEM(4, max_iter=2).fit(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GaussianMixtureEM(4, max_iter=200).fit(x)
    with pytest.raises(ValueError, match="NaN"):
        GaussianMixtureEM(2).fit(np.array([[0.0, np.nan], [1.0, 2.0], [3.0, 4.0]]))
    with pytest.raises(ValueError, match="non-empty"):
        GaussianMixtureEM(2).fit(np.zeros((0, 3)))
