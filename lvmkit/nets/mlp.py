"""MLP building blocks. Nets map tensors to distribution parameters and know nothing of Pyro."""

from __future__ import annotations

from torch import nn


class MLP(nn.Sequential):
    """Linear layers with ReLU between them: in_features -> *hidden -> out_features."""

    def __init__(self, in_features: int, hidden: tuple[int, ...], out_features: int):
        widths = [in_features, *hidden, out_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(nn.ReLU())
        super().__init__(*layers)
