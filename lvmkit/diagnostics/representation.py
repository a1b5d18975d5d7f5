"""Representations z|x for a dataset, and how linearly they reveal the labels."""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def encode(model, data, *, batch_size: int = 256) -> Tensor:
    """Codes (N, Z) of a built-in model for ``data``: the mean of q(z|x) (for a mixture, the
    responsibilities p(z|x)). ImageData goes through ``model.prepare`` first."""
    if hasattr(data, "levels") and hasattr(model, "prepare"):
        data = model.prepare(data)
    x = getattr(data, "x", data)
    was_training = model.training
    model.eval()
    try:
        codes = []
        for start in range(0, len(x), batch_size):
            q = model.encode(x[start : start + batch_size])
            codes.append(q.probs if hasattr(q, "probs") else q.mean)
        return torch.cat(codes)
    finally:
        model.train(was_training)


def linear_probe(
    codes: Tensor, labels: Tensor, *, test_fraction: float = 0.25, seed: int = 0
) -> float:
    """Test accuracy of a logistic regression from standardized codes to labels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    z, y = codes.detach().cpu().double().numpy(), labels.cpu().numpy()
    z_tr, z_te, y_tr, y_te = train_test_split(
        z, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return float(clf.fit(z_tr, y_tr).score(z_te, y_te))


def active_units(model, data, *, threshold: float = 0.01) -> tuple[int, Tensor]:
    """Burda et al. 2016: unit u is active if Cov_x(E_q[z_u | x]) > threshold. Returns the count
    and each unit's variance (Z,)."""
    variances = encode(model, data).var(0)
    return int((variances > threshold).sum()), variances
