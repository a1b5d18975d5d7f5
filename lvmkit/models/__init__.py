"""Probabilistic programs: each model is an nn.Module with ``model`` and ``guide`` methods."""

from lvmkit.models.lvm import GaussianLVM, GaussianLVMConfig

__all__ = ["GaussianLVM", "GaussianLVMConfig"]
