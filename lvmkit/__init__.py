"""lvmkit: latent variable models as Pyro programs."""

from lvmkit import data
from lvmkit.inference import CheckpointError, FitResult, NonFiniteLossError, Trainer, fit

__version__ = "0.1.0"
__all__ = ["CheckpointError", "FitResult", "NonFiniteLossError", "Trainer", "data", "fit"]
