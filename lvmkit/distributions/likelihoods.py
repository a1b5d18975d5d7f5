"""The observation models by name: the one table that ``likelihood=`` settings are read from."""

from __future__ import annotations

import inspect

from lvmkit.distributions.autoregressive import AutoregressiveObs
from lvmkit.distributions.observations import (
    BernoulliObs,
    CategoricalObs,
    GaussianObs,
    LogisticObs,
    LowRankGaussianObs,
    Observation,
)

OBSERVATIONS: dict[str, type] = {
    cls.name: cls
    for cls in (
        GaussianObs,
        LowRankGaussianObs,
        BernoulliObs,
        CategoricalObs,
        LogisticObs,
        AutoregressiveObs,
    )
}
LIKELIHOODS = tuple(OBSERVATIONS)


def observation_class(likelihood: str) -> type:
    """The observation model class called ``likelihood``; ValueError naming the choices.

    Parameters
    ----------
    likelihood : str

    Returns
    -------
    type
    """
    if likelihood not in OBSERVATIONS:
        raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {list(LIKELIHOODS)}")
    return OBSERVATIONS[likelihood]


def make_observation(likelihood: str, event_shape, **settings) -> Observation:
    """Build the observation model called ``likelihood`` for data of ``event_shape``.

    Parameters
    ----------
    likelihood : str
        A name of ``OBSERVATIONS``: "gaussian", "lowrank", "bernoulli", "categorical",
        "logistic", "pixelcnn".
    event_shape : tuple of int
    **settings
        Each class takes those it names (``levels``, ``min_scale``, ``rank``, ``components``,
        ``ar_features``, ...) and ignores the rest, so one model config can hold the settings of
        every likelihood.

    Returns
    -------
    Observation
    """
    cls = observation_class(likelihood)
    accepted = inspect.signature(cls).parameters
    return cls(tuple(event_shape), **{k: v for k, v in settings.items() if k in accepted})
