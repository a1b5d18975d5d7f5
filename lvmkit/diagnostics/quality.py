"""Sample quality by a classifier trained here on the same data (no downloaded weights): the
Inception score (Salimans et al. 2016) and the Fréchet distance of Heusel et al. 2017 with
this classifier's features in place of Inception's. Numbers to compare models on one dataset,
not across datasets or with published FIDs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lvmkit.core.checks import check_count
from lvmkit.core.rng import seeded
from lvmkit.diagnostics.representation import probe_problem
from lvmkit.nets import MLP

FEATURES = 256  # width of the classifier's hidden layer: the features compared


@dataclass
class SampleQuality:
    """Sample quality by a classifier trained on the real images (``sample_quality``).

    Parameters
    ----------
    inception_score : float
        Of the samples, up to the number of classes.
    frechet_distance : float
        Between the classifier's features of the samples and of held-out real images.
    real_inception_score : float
        Of the held-out real images: the ceiling on this data.
    classifier_accuracy : float
        On the held-out real images.
    """

    inception_score: float  # exp E_x KL(p(y|x) || p(y)) over the samples: 1 to the classes
    frechet_distance: float  # between Gaussians fitted to the samples' and real features
    real_inception_score: float  # the held-out real images' own score, for scale
    classifier_accuracy: float  # the classifier's held-out accuracy, which the scores rest on

    def row(self) -> dict:
        return dict(self.__dict__)


def inception_score(probs: Tensor) -> float:
    """exp(mean_x KL(p(y|x) || p(y))) from class probabilities (N, classes), p(y) their mean.

    Parameters
    ----------
    probs : Tensor of shape (N, classes)

    Returns
    -------
    float
    """
    p = probs.double().clamp_min(1e-12)
    marginal = p.mean(0, keepdim=True)
    return float((p * (p.log() - marginal.log())).sum(1).mean().exp())


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to the
    rows of a (N, F) and b (M, F); the trace of the root is that of (S_a^½ S_b S_a^½)^½.

    Parameters
    ----------
    a : Tensor of shape (N, F)
    b : Tensor of shape (M, F)

    Returns
    -------
    float
    """
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)
    values, vectors = torch.linalg.eigh(s_a)
    root_a = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + s_a.trace() + s_b.trace() - 2 * cross)


class Classifier(nn.Module):
    """Pictures (N, C, H, W) in [0, 1] -> class logits, through FEATURES ReLU features."""

    def __init__(self, pixels: int, classes: int):
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), MLP(pixels, (FEATURES,), FEATURES), nn.ReLU())
        self.head = nn.Linear(FEATURES, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def check_unit_pixels(name: str, x: Tensor) -> None:
    """ValueError unless every value of ``x`` is a finite number in [0, 1]."""
    if not bool(torch.isfinite(x).all()) or len(x) and (x.min() < 0 or x.max() > 1):
        raise ValueError(
            f"{name} must be pictures in [0, 1], got values in [{float(x.min()):.4g}, "
            f"{float(x.max()):.4g}]: scale them (lvmkit.data.scale(data).x, or "
            "model.sample_images(n) for samples)"
        )


def sample_quality(
    samples: Tensor, images: Tensor, labels: Tensor, *, epochs: int = 30, seed: int = 0
) -> SampleQuality:
    """How good generated pictures look to a classifier trained here on real ones (no
    downloaded weights): the Inception score of the samples and the Fréchet distance between
    the classifier's features of the samples and of held-out real pictures.

    Parameters
    ----------
    samples : Tensor of shape (N, C, H, W)
        Generated pictures in [0, 1] (``model.sample_images(n)``).
    images : Tensor of shape (M, C, H, W)
        Real pictures in [0, 1] (``lvmkit.data.scale(data).x``); the classifier trains on
        three quarters of them and the Fréchet distance compares with the rest.
    labels : Tensor of shape (M,)
        Their classes.
    epochs : int
        The classifier's epochs of Adam.
    seed : int
        Seeds the split and the classifier.

    Returns
    -------
    SampleQuality
        ``inception_score`` (up to the number of classes), ``frechet_distance`` (lower is
        better), ``real_inception_score`` (the held-out real pictures'), ``classifier_accuracy``
        (on them): compare models scored on the same data only.
    """
    check_count("epochs", epochs)
    problem = probe_problem(labels)
    if problem:
        raise ValueError(f"no sample quality: {problem}")
    check_unit_pixels("samples", samples)
    check_unit_pixels("images", images)
    if samples.shape[1:] != images.shape[1:]:
        raise ValueError(
            f"samples of shape {tuple(samples.shape[1:])} cannot be scored against images of "
            f"shape {tuple(images.shape[1:])}; pass pictures of the same shape"
        )
    images, samples = images.float().cpu(), samples.float().cpu()
    labels = labels.long().cpu()
    with seeded(seed):
        order = torch.randperm(len(images))
        held = order[: len(images) // 4]
        train = order[len(images) // 4 :]
        net = Classifier(images[0].numel(), int(labels.max()) + 1)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        for _ in range(epochs):
            for step in torch.randperm(len(train)).split(128):
                optimizer.zero_grad()
                F.cross_entropy(net(images[train[step]]), labels[train[step]]).backward()
                optimizer.step()
    net.eval()
    with torch.no_grad():
        accuracy = float((net(images[held]).argmax(1) == labels[held]).float().mean())
        real_features, fake_features = net.features(images[held]), net.features(samples)
        real_probs = net.head(real_features).softmax(1)
        fake_probs = net.head(fake_features).softmax(1)
    return SampleQuality(
        inception_score=inception_score(fake_probs),
        frechet_distance=frechet_distance(fake_features, real_features),
        real_inception_score=inception_score(real_probs),
        classifier_accuracy=accuracy,
    )
