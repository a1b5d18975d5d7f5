"""Sample quality: the Inception score and Fréchet distance against their definitions, and the
classifier-based scores ordering real images, a model's samples and noise."""

import numpy as np
import pytest
import scipy.linalg
import torch

from lvmkit.data import load_digits
from lvmkit.diagnostics import frechet_distance, inception_score, sample_quality


def test_the_inception_score_runs_from_one_to_the_number_of_classes():
    assert inception_score(torch.full((10, 4), 0.25)) == pytest.approx(1.0)
    assert inception_score(torch.eye(4).repeat(3, 1)) == pytest.approx(4.0)


def test_the_frechet_distance_is_the_closed_form_between_fitted_gaussians():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 5, generator=g, dtype=torch.float64)
    b = torch.randn(200, 5, generator=g, dtype=torch.float64) @ torch.rand(5, 5, generator=g,
                                                                           dtype=torch.float64)
    mu_a, mu_b = a.mean(0).numpy(), b.mean(0).numpy()
    s_a, s_b = np.cov(a.numpy().T), np.cov(b.numpy().T)
    root = scipy.linalg.sqrtm(s_a @ s_b).real
    exact = ((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * root)
    assert frechet_distance(a, b) == pytest.approx(exact, rel=1e-8)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_real_images_score_better_than_noise():
    data = load_digits()
    x, y = data.x / 16, data.y
    real = sample_quality(x[:600], x, y, epochs=5)
    noise = sample_quality(torch.rand(600, 1, 8, 8), x, y, epochs=5)
    assert real.classifier_accuracy > 0.8
    assert real.frechet_distance < noise.frechet_distance / 10
    assert real.inception_score > 2 * noise.inception_score


def test_bad_input_is_refused():
    x = torch.rand(10, 1, 4, 4)
    with pytest.raises(ValueError, match="same shape"):
        sample_quality(torch.rand(5, 1, 3, 3), x, torch.arange(10) % 2)
    with pytest.raises(ValueError, match="two or more"):
        sample_quality(x, x, torch.zeros(10))
