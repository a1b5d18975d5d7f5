"""lvmkit: latent variable models as Pyro programs."""

from lvmkit import data
from lvmkit.diagnostics import encode, linear_probe
from lvmkit.inference import CheckpointError, FitResult, NonFiniteLossError, Trainer, fit
from lvmkit.inference.importance import LogLikelihood, log_likelihood

__version__ = "0.1.0"
__all__ = [
    "CheckpointError",
    "FitResult",
    "LogLikelihood",
    "NonFiniteLossError",
    "Trainer",
    "data",
    "encode",
    "fit",
    "linear_probe",
    "log_likelihood",
]
