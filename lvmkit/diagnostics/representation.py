"""Representations z|x for a dataset, and how linearly they reveal the labels."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from lvmkit.data import ImageData
from lvmkit.inference.programs import evaluating, place


@torch.no_grad()
def encode(model, data, *, batch_size: int = 256, device=None) -> Tensor:
    """Codes for ``data`` from a model's ``encode(x)`` (a built-in model's, or any module's):
    the mean of q(z|x), or for a mixture the responsibilities p(z|x).

    Parameters
    ----------
    model : BuiltinModel or nn.Module
        With ``encode(x)``.
    data : ImageData or Tensor of shape (N, ...)
        Images (a built-in model's ``inputs`` turn them into model units), or a tensor in model
        units.
    batch_size : int
    device : str or torch.device, optional
        Where to compute (None: where the model is); the codes come back there.

    Returns
    -------
    Tensor of shape (N, Z)
    """
    x = model.inputs(data)[0] if isinstance(data, ImageData) else data
    device = place(model, device=device)
    codes = []
    with evaluating(model):
        for start in range(0, len(x), batch_size):
            q = model.encode(x[start : start + batch_size].to(device))
            codes.append(q.probs if isinstance(q, torch.distributions.Categorical) else q.mean)
    return torch.cat(codes)


def linear_probe(
    codes: Tensor, labels: Tensor, *, test_fraction: float = 0.25, seed: int = 0
) -> float:
    """Test accuracy of a logistic regression from standardized codes to labels. Splits are
    stratified when every class has two images or more.

    Parameters
    ----------
    codes : Tensor of shape (N, Z)
    labels : Tensor of shape (N,)
    test_fraction : float
        The share held out for the accuracy.
    seed : int
        Seeds the split.

    Returns
    -------
    float
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    problem = probe_problem(labels)
    if problem:
        raise ValueError(f"no linear probe: {problem}")
    z, y = codes.detach().cpu().double().numpy(), labels.cpu().numpy()
    counts = np.bincount(y)
    n_test, n_classes = math.ceil(test_fraction * len(y)), int((counts > 0).sum())
    fits = (counts[counts > 0] > 1).all() and n_classes <= min(n_test, len(y) - n_test)
    stratify = y if fits else None  # sklearn refuses a stratified split that cannot be made
    z_tr, z_te, y_tr, y_te = train_test_split(
        z, y, test_size=test_fraction, random_state=seed, stratify=stratify
    )
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return float(clf.fit(z_tr, y_tr).score(z_te, y_te))


def probe_problem(labels: Tensor) -> str | None:
    """Why labels cannot score a linear probe (None if they can): it needs two classes.

    Parameters
    ----------
    labels : Tensor of shape (N,)

    Returns
    -------
    str or None
    """
    classes = torch.unique(labels)
    if len(classes) < 2:
        return f"the labels hold {len(classes)} class(es); a classifier needs two or more"
    return None


def active_units(model, data, *, threshold: float = 0.01) -> tuple[int, Tensor]:
    """Burda et al. 2016: unit u is active if Cov_x(E_q[z_u | x]) > threshold.

    Parameters
    ----------
    model : BuiltinModel
        With a Gaussian ``encode``.
    data : ImageData or Tensor of shape (N, ...)
    threshold : float

    Returns
    -------
    tuple of (int, Tensor of shape (Z,))
        The count of active units, and each unit's variance.
    """
    variances = encode(model, data).var(0)
    return int((variances > threshold).sum()), variances
