"""Inference: one public function per strategy (``fit``, ``em``, ``fit_adversarial``,
``log_likelihood``, ``ais``, ``bdmc``, ``evaluate``, ``nuts``), the ``Trainer`` for loops of your
own, checkpoints, and loggers to experiment trackers."""

from lvmkit.core.files import CheckpointError, load_checkpoint, save_checkpoint
from lvmkit.inference.adversarial import Adversarial, fit_adversarial
from lvmkit.inference.annealing import ais
from lvmkit.inference.bdmc import Sandwich, bdmc
from lvmkit.inference.elbo import STLELBO, DReGLoss, IWAELoss, Objective, ReparamELBO, make_elbo
from lvmkit.inference.em import GenericEM, em
from lvmkit.inference.evaluation import evaluate
from lvmkit.inference.fit import SVI, fit
from lvmkit.inference.importance import log_likelihood
from lvmkit.inference.likelihood import LogLikelihood
from lvmkit.inference.loop import Algorithm, FitResult, run
from lvmkit.inference.mcmc import nuts
from lvmkit.inference.mixture_em import MixtureEM
from lvmkit.inference.programs import resolve_device
from lvmkit.inference.tracking import Logger, MLflowLogger, TensorBoardLogger
from lvmkit.inference.trainer import NonFiniteLossError, Trainer

__all__ = [
    "Adversarial",
    "GenericEM",
    "Logger",
    "MLflowLogger",
    "MixtureEM",
    "TensorBoardLogger",
    "SVI",
    "Algorithm",
    "run",
    "CheckpointError",
    "DReGLoss",
    "FitResult",
    "GaussianMixtureEM",
    "IWAELoss",
    "LogLikelihood",
    "NonFiniteLossError",
    "Objective",
    "ReparamELBO",
    "Sandwich",
    "STLELBO",
    "Trainer",
    "ais",
    "bdmc",
    "em",
    "evaluate",
    "fit",
    "fit_adversarial",
    "load_checkpoint",
    "log_likelihood",
    "make_elbo",
    "nuts",
    "resolve_device",
    "save_checkpoint",
]


def __getattr__(name: str):
    # the scikit-learn estimator imports scikit-learn: only when it is asked for
    if name == "GaussianMixtureEM":
        from lvmkit.inference.estimator import GaussianMixtureEM

        return GaussianMixtureEM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
