"""Inference: one public function per strategy."""

from lvmkit.inference.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from lvmkit.inference.svi import FitResult, NonFiniteLossError, Trainer, fit, resolve_device

__all__ = [
    "CheckpointError",
    "FitResult",
    "NonFiniteLossError",
    "Trainer",
    "fit",
    "load_checkpoint",
    "resolve_device",
    "save_checkpoint",
]
