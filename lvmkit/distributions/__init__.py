"""Pyro distributions that Pyro lacks, and the swappable observation models p(x | h)."""

from lvmkit.distributions.autoregressive import AutoregressiveImage, AutoregressiveObs
from lvmkit.distributions.logistic import DiscretizedLogistic, DiscretizedLogisticMixture
from lvmkit.distributions.observations import (
    LIKELIHOODS,
    Observation,
    check_support,
    make_observation,
)

__all__ = [
    "AutoregressiveImage",
    "AutoregressiveObs",
    "LIKELIHOODS",
    "DiscretizedLogistic",
    "DiscretizedLogisticMixture",
    "Observation",
    "check_support",
    "make_observation",
]
