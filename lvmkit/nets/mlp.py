"""MLP building blocks. Nets map tensors to distribution parameters and know nothing of Pyro."""

from __future__ import annotations

from torch import Tensor, nn


class BatchNorm(nn.BatchNorm1d):
    """Batch normalisation of the last dim of (..., features): every leading dim is a batch
    dim (vectorized particles or chains included)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class MLP(nn.Sequential):
    """Linear layers with ``activation`` between them: ``in_features -> *hidden -> out_features``;
    ``batch_norm`` normalises each hidden layer before its activation (DCGAN's generator).

    Parameters
    ----------
    in_features : int
    hidden : tuple of int
        The hidden layers' widths.
    out_features : int
    activation : type of nn.Module
        Built once per hidden layer.
    batch_norm : bool
    """

    def __init__(self, in_features: int, hidden: tuple[int, ...], out_features: int, *,
                 activation: type[nn.Module] = nn.ReLU, batch_norm: bool = False):  # fmt: skip
        widths = [in_features, *hidden, out_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            hidden_layer = i < len(widths) - 2
            # no bias where batch norm follows: it would cancel it (a gradient of rounding noise)
            layers.append(nn.Linear(a, b, bias=not (hidden_layer and batch_norm)))
            if hidden_layer:
                layers += [BatchNorm(b)] if batch_norm else []
                layers.append(activation())
        super().__init__(*layers)
