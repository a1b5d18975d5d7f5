"""Pyro distributions that Pyro lacks, and the swappable observation models p(x | h)."""

from lvmkit.distributions.autoregressive import AutoregressiveImage, AutoregressiveObs
from lvmkit.distributions.likelihoods import (
    LIKELIHOODS,
    OBSERVATIONS,
    make_observation,
    observation_class,
)
from lvmkit.distributions.logistic import DiscretizedLogistic, DiscretizedLogisticMixture
from lvmkit.distributions.observations import Observation, check_support

__all__ = [
    "AutoregressiveImage",
    "AutoregressiveObs",
    "DiscretizedLogistic",
    "DiscretizedLogisticMixture",
    "LIKELIHOODS",
    "OBSERVATIONS",
    "Observation",
    "check_support",
    "make_observation",
    "observation_class",
]
