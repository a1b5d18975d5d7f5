"""lvmkit: latent variable models as Pyro programs."""

from lvmkit import data
from lvmkit.diagnostics import diagnose, encode, linear_probe, posterior
from lvmkit.inference import (
    CheckpointError,
    FitResult,
    GaussianMixtureEM,
    LogLikelihood,
    NonFiniteLossError,
    Sandwich,
    Trainer,
    ais,
    bdmc,
    em,
    evaluate,
    fit,
    log_likelihood,
    nuts,
)
from lvmkit.runs import Run, load_run

__version__ = "0.1.0"
__all__ = [
    "CheckpointError",
    "FitResult",
    "GaussianMixtureEM",
    "LogLikelihood",
    "NonFiniteLossError",
    "Run",
    "Sandwich",
    "Trainer",
    "ais",
    "bdmc",
    "data",
    "diagnose",
    "em",
    "encode",
    "evaluate",
    "fit",
    "linear_probe",
    "load_run",
    "log_likelihood",
    "nuts",
    "posterior",
]
