"""The dataset protocol every trainer batches from, and ``as_dataset`` for plain tensors."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from lvmkit.core.checks import all_finite


@runtime_checkable
class Dataset(Protocol):
    """What ``fit``, ``em`` and the estimators batch from: ``ImageData``, ``CompletionData``, or
    your own class with these three methods."""

    def __len__(self) -> int: ...

    def batch(self, index: Tensor) -> tuple[Tensor, ...]:
        """The model's arguments for the datapoints ``index``: ``model(*data.batch(index))``."""
        ...

    def to(self, device) -> Dataset:
        """The same data on ``device``."""
        ...


class TensorData:
    """A tuple of tensors sharing their first dim, batched along it.

    Parameters
    ----------
    tensors : tuple of Tensor
        Each (N, ...).
    what : str
        What the data are called in error messages.
    """

    def __init__(self, tensors: tuple[Tensor, ...], what: str = "data"):
        if not tensors:
            raise ValueError(f"{what} is an empty tuple; give a tensor or a tuple of tensors")
        if not all(isinstance(t, Tensor) for t in tensors):
            kinds = ", ".join(type(t).__name__ for t in tensors[:3])
            kinds += f", ... ({len(tensors)} items)" if len(tensors) > 3 else ""
            raise TypeError(
                f"{what} must be a tensor, a tuple of tensors, or lvmkit ImageData; got {kinds} "
                "(torch.as_tensor converts arrays and lists)"
            )
        n = len(tensors[0]) if tensors[0].dim() else 0
        if n == 0:
            raise ValueError(f"{what} is empty (0 datapoints); nothing to fit")
        for i, t in enumerate(tensors):
            if t.dim() == 0 or len(t) != n:
                raise ValueError(
                    f"{what}: tensor {i} has {len(t) if t.dim() else 0} rows but tensor 0 has {n}; "
                    "every tensor in the tuple needs one row per datapoint"
                )
            if t.is_meta:
                raise ValueError(
                    f"{what}: tensor {i} is on the meta device, which holds shapes but no "
                    "values; create the data with values (on 'cpu' or 'cuda')"
                )
            if t.is_floating_point() and not all_finite(t):
                bad = ~torch.isfinite(t)
                first = int(bad.reshape(n, -1).any(1).nonzero()[0])
                raise ValueError(
                    f"{what}: tensor {i} has {int(bad.sum())} NaN/inf values (first in row "
                    f"{first}); remove or impute them before fitting"
                )
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def batch(self, index: Tensor) -> tuple[Tensor, ...]:
        return tuple(t[index] for t in self.tensors)

    def to(self, device) -> TensorData:
        self.tensors = tuple(t.to(device) for t in self.tensors)
        return self


def as_dataset(data, what: str = "data") -> Dataset:
    """A tensor (N, ...), a tuple of tensors with N rows each, or a Dataset -> a Dataset.

    Parameters
    ----------
    data : Tensor of shape (N, ...), tuple of such tensors, or Dataset
    what : str
        What the data are called in error messages.

    Returns
    -------
    Dataset
    """
    if isinstance(data, Dataset):
        return data
    if isinstance(data, Tensor):
        return TensorData((data,), what)
    if isinstance(data, (tuple, list)):
        return TensorData(tuple(data), what)
    raise TypeError(
        f"{what} must be a tensor, a tuple of tensors, or lvmkit ImageData; "
        f"got {type(data).__name__}"
    )
