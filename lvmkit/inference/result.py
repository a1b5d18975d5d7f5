"""``FitResult``: what ``fit``, ``em``, ``fit_adversarial`` and ``run`` return."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyro
from torch import Tensor


@dataclass
class FitResult:
    """What ``fit``, ``em`` and ``run`` return. Losses are per datapoint, in nats; index i is
    epoch (or EM iteration) i + 1.

    Parameters
    ----------
    losses, val_losses : list of float
    best_epoch : int, optional
        The epoch of the lowest validation loss.
    params_epoch : int
        The epoch the parameters are from.
    elapsed : float
        Seconds.
    device : str
    params : dict of str to Tensor
        The fitted ``pyro.param`` values by name.
    param_state : dict
        Pyro's parameter store state (``scope()`` uses it).
    algorithm : str
    converged : bool, optional
        Whether the algorithm's own stopping rule was met (EM).
    info : dict
        The algorithm's notes (``jit``, ``e_step``, ``generator_loss``).
    stopped_early, interrupted : bool
    checkpoint : Path, optional
    """

    losses: list[float]  # SVI: the objective; EM: -log p(x) (mean, at each E-step)
    val_losses: list[float]
    best_epoch: int | None  # 1-based epoch of the lowest validation loss (None without val_data)
    # the epoch whose parameters ``params`` holds (best_epoch if restored; interrupted
    # mid-epoch, the epoch it stopped in)
    params_epoch: int
    elapsed: float  # seconds of training, summed over resumed runs
    device: str
    params: dict[str, Tensor]  # fitted constrained parameter values
    param_state: dict = field(repr=False)  # the fit's Pyro param store state
    algorithm: str = "svi"  # the Algorithm.name that made it: "svi", "em" or "mixture-em"
    converged: bool | None = None  # algorithms with a stopping rule (EM): whether it was met
    info: dict = field(default_factory=dict)  # what only this algorithm reports (EM's e_step)
    stopped_early: bool = False
    interrupted: bool = False  # stopped by SIGINT/SIGTERM after writing a checkpoint
    checkpoint: Path | None = None

    @property
    def epochs(self) -> int:
        """Epochs (SVI) or iterations (EM) run."""
        return len(self.losses)

    def scope(self):
        """``with result.scope(): ...`` runs Pyro code against the fitted parameters."""
        return pyro.get_param_store().scope(self.param_state)
