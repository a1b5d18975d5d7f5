"""``fit``: amortized SVI for any Pyro model/guide pair, as the ``SVI`` algorithm of the loop
(``loop.run``): validation, early stopping, checkpoints and exact resume come from there."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from lvmkit.core.files import CheckpointError
from lvmkit.core.processes import set_threads
from lvmkit.core.rng import drawn_by
from lvmkit.inference.loop import OPTIONAL, Algorithm, FitResult, run
from lvmkit.inference.tracking import Logger
from lvmkit.inference.trainer import Trainer, optimizer_name


class SVI(Algorithm):
    """Stochastic variational inference: one gradient step of the objective per batch, with a
    ``Trainer``. The epoch's loss is the mean of its steps' losses, weighted by batch size.

    Parameters
    ----------
    model, guide : callable
        Pyro programs.
    **trainer_options
        ``Trainer``'s: elbo, num_samples, optimizer, lr, device, jit.
    """

    name = "svi"
    honours = frozenset(OPTIONAL)

    def __init__(self, model, guide, **trainer_options):
        self.trainer = Trainer(model, guide, **trainer_options)
        self.device, self.group = self.trainer.device, self.trainer.group
        self.loss_sum, self.count = 0.0, 0  # the current epoch's, so far

    @property
    def param_state(self) -> dict:
        return self.trainer.param_state

    def settings(self) -> dict:
        t = self.trainer
        name = t.elbo_name or type(t.loss).__qualname__
        return {"elbo": name, "num_samples": t.loss.num_particles, "lr": t.lr,
                "optimizer": optimizer_name(t.optimizer_choice)}  # fmt: skip

    def setup(self, data, batch_size: int) -> None:
        self.data = data
        self.trainer.init(*data.batch(torch.arange(min(batch_size, len(data)), device=self.device)))

    def step(self, index: Tensor, *, keys: Tensor, first: bool, stop: bool) -> float:
        t = self.trainer
        with drawn_by(keys):  # the batch's own noise (dequantization, ...) by position too
            batch = self.data.batch(index)
        loss = t.step(*batch, validate=first, stop=stop, keys=keys)
        self.stop_requested = t.stop_requested  # any process's signal stops them all
        self.loss_sum += loss * t.last_count
        self.count += t.last_count
        return loss

    def end_epoch(self, losses: list[float]) -> tuple[float, bool]:
        loss = self.loss_sum / self.count
        self.loss_sum, self.count = 0.0, 0
        return loss, False

    def validate(self, data, *, batch_size: int, seed: int) -> float:
        return self.trainer.evaluate(data, batch_size=batch_size, seed=seed)

    def snapshot(self) -> dict:
        state = self.trainer.state_dict()
        return {"params": state["params"], "buffers": state["buffers"]}

    def restore(self, snapshot: dict) -> None:
        self.trainer.load_params(snapshot["params"])
        self.trainer.load_buffers(snapshot["buffers"] or {})  # older checkpoints: params only

    def state_dict(self) -> dict:
        return {**self.trainer.state_dict(), "loss_sum": self.loss_sum, "count": self.count}

    def load_state_dict(self, state: dict, *, source: str) -> None:
        self.trainer.load_state_dict(state, source=source)
        loss_sum, count = state.get("loss_sum", 0.0), state.get("count", 0)
        numbers = isinstance(loss_sum, float | int) and isinstance(count, int) and count >= 0
        if not (numbers and math.isfinite(loss_sum)):
            raise CheckpointError(
                f"{source}: its running loss {loss_sum!r}/{count!r} is no finite sum and count"
            )
        self.loss_sum, self.count = loss_sum, count

    def params(self) -> dict[str, Tensor]:
        return self.trainer.params()

    def info(self) -> dict:
        return {"jit": self.trainer.jit_note}

    @property
    def unseeded(self) -> set[str]:
        return self.trainer.unseeded


def fit(
    model,
    guide,
    data,
    *,
    elbo: str = "elbo",
    num_samples: int = 1,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: str | Callable = "adam",
    val_data=None,
    patience: int | None = None,
    restore_best: bool | None = None,
    device: str = "auto",
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    jit: bool | str = False,
    threads: int | str | None = None,
    callbacks: list[Callable[[dict], None]] = (),
    loggers: list[Logger] = (),
) -> FitResult:
    """Fit ``model``/``guide`` to ``data`` by stochastic variational inference.

    Under torchrun (or with a process group initialised) every process runs this same call:
    each takes its share of every global batch of ``batch_size``, and they take the same steps.

    Parameters
    ----------
    model, guide : callable
        Pyro programs, each called on a batch as ``model(*batch)``.
    data : Tensor of shape (N, ...), tuple of such tensors, or Dataset
        A tuple's tensors (N rows each) are passed positionally; an ``ImageData`` gives what
        its ``batch`` returns.
    elbo : {"elbo", "meanfield", "iwae", "enum", "stl", "dreg"}
        ``Trace_ELBO``; the analytic KL where available; the importance-weighted bound with
        ``num_samples``; ``TraceEnum_ELBO`` for discrete latents; the ELBO with the
        sticking-the-landing gradient; the IWAE bound with the doubly reparameterized gradient
        (``num_samples`` >= 2).
    num_samples : int
        Particles (draws of z per datapoint) in the objective's estimate.
    epochs : int
        The total number of epochs; with ``resume`` training continues up to it.
    batch_size : int
        Datapoints per step (over all processes).
    lr : float
        Learning rate.
    optimizer : {"adam", "adamw", "sgd"} or callable
        Or a factory ``(params, lr=lr) -> torch.optim.Optimizer``.
    val_data : like ``data``, optional
        Scored after every epoch.
    patience : int, optional
        Stop after this many epochs without a better validation loss.
    restore_best : bool, optional
        End with the parameters of the epoch of lowest validation loss instead of the last
        epoch's; None restores them when ``patience`` is set. ``FitResult.params_epoch`` says
        which epoch the parameters are from.
    device : str
        "auto" (CUDA when present), "cpu", "cuda" or "cuda:N".
    seed : int
        Seeds the batch order and every draw.
    checkpoint_dir : str or Path, optional
        Gets ``checkpoint.pt`` after every epoch, and on SIGINT/SIGTERM (which finish the
        current step and return with ``interrupted=True``).
    resume : bool
        Continue from the checkpoint in ``checkpoint_dir`` if there is one.
    overwrite : bool
        Start afresh over a checkpoint in ``checkpoint_dir``; without it (or ``resume``) a
        checkpoint there is refused, never silently replaced.
    progress : bool
        A progress bar.
    jit : bool or "auto"
        Run the steps from a trace of the loss (see ``Trainer``): same draws, same results,
        less Python per step, for a model whose Python keeps no state between calls. "auto"
        traces where the model allows (``FitResult.info["jit"]`` says which); True warns when
        it cannot trace; False never traces.
    threads : int or "auto", optional
        Torch threads for this process; "auto" takes the cores not busy with other work,
        shared among torchrun's processes; None leaves torch's setting as it is.
    callbacks : list of callable
        Called with each step's and epoch's metrics (see ``run``).
    loggers : list of Logger
        ``TensorBoardLogger``, ``MLflowLogger`` (``lvmkit[tracking]``) or your own: the same
        metrics, and the fit's settings, sent to an experiment tracker.

    Returns
    -------
    FitResult
        Losses per datapoint in nats per epoch, the fitted parameters (``params``,
        ``scope()``), ``interrupted``, ``info``.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist, torch, lvmkit
    >>> def model(x):
    ...     mu = pyro.param("mu", torch.tensor(0.0))
    ...     with pyro.plate("data", len(x)):
    ...         pyro.sample("x", dist.Normal(mu, 1.0), obs=x)
    >>> result = lvmkit.fit(model, lambda x: None, torch.full((100,), 3.0), epochs=200,
    ...                     batch_size=100, lr=0.05, progress=False)
    >>> round(float(result.params["mu"]), 2)
    3.0
    """
    set_threads(threads)
    algorithm = SVI(model, guide, elbo=elbo, num_samples=num_samples, optimizer=optimizer,
                    lr=lr, device=device, jit=jit)  # fmt: skip
    return run(algorithm, data, epochs=epochs, batch_size=batch_size, val_data=val_data,
               patience=patience, restore_best=restore_best, seed=seed,
               checkpoint_dir=checkpoint_dir, resume=resume, overwrite=overwrite,
               progress=progress, callbacks=callbacks, loggers=loggers)  # fmt: skip
