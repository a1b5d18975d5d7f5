"""lvmkit: latent variable models as Pyro programs."""

from lvmkit import data
from lvmkit.diagnostics import encode, linear_probe, posterior
from lvmkit.inference import CheckpointError, FitResult, NonFiniteLossError, Trainer, fit
from lvmkit.inference.em import GaussianMixtureEM, em, fit_em
from lvmkit.inference.importance import LogLikelihood, log_likelihood
from lvmkit.inference.mcmc import nuts

__version__ = "0.1.0"
__all__ = [
    "CheckpointError",
    "FitResult",
    "LogLikelihood",
    "NonFiniteLossError",
    "Trainer",
    "GaussianMixtureEM",
    "data",
    "em",
    "encode",
    "fit",
    "fit_em",
    "linear_probe",
    "log_likelihood",
    "nuts",
    "posterior",
]
