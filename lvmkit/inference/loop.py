"""``run``: the one loop every fitting algorithm runs in (SVI, generic EM, closed-form mixture EM,
and any algorithm written to the ``Algorithm`` contract). It owns epochs, shuffling, sharding
over torchrun's processes, seeding, checkpoints and exact resume, SIGINT/SIGTERM, early stopping,
progress and callbacks; the algorithm owns what one step does."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pyro
import torch
from torch import Tensor
from tqdm import tqdm

from lvmkit.core.checks import check_count, check_flag, check_seed
from lvmkit.core.files import run_lock
from lvmkit.core.processes import Group, StopOnSignal, vote
from lvmkit.core.processes import shard as shard_of
from lvmkit.core.rng import draw_keys, seeded
from lvmkit.data import as_dataset
from lvmkit.inference.result import FitResult
from lvmkit.inference.resume import Checkpoints, LoopState, fingerprint
from lvmkit.inference.tracking import Logger

# Loop settings an algorithm may or may not honour; the others (epochs, seed, checkpoints,
# progress, callbacks) every algorithm honours.
OPTIONAL = ("batch_size", "val_data", "patience", "restore_best")


class Algorithm:
    """The contract of an algorithm ``run`` can run. A subclass sets ``name`` (recorded in
    checkpoints and runs: another algorithm's checkpoint is refused), ``honours`` (which of
    the loop's OPTIONAL settings it uses: any other one given is an error naming it), and
    ``device`` and ``group`` (this process's place under torchrun) when it is built; it writes:

    - ``setup(data, batch_size)``: create parameters (from a first batch); nothing is trained.
    - ``step(index, keys, first, stop)``: one step on the datapoints ``index`` (this process's
      share of a global batch); returns the loss per datapoint of the global batch, or None if
      it has none until the epoch ends. ``keys`` seed the step's draws by the datapoints'
      positions (``draws.PositionDraws``: the same draws on any number of processes; None
      for an algorithm with ``draws = False``). ``stop``
      is this process's wish to stop; afterwards ``stop_requested`` says whether any process
      wished it.
    - ``end_epoch(losses)``: the epoch's loss per datapoint and whether the algorithm's own
      stopping rule is met, given the losses of the epochs before.
    - ``state_dict()`` / ``load_state_dict(state, source)``: everything a resume needs.
    - ``settings()``: what a resumed checkpoint must match (a dict of plain values).
    - ``params()``, ``param_state``: the fitted parameters; ``info()``: what FitResult.info gets.

    And, to honour "val_data": ``validate(data, batch_size, seed)`` and ``snapshot()`` /
    ``restore(snapshot)`` of the parameters (for restore_best).
    """

    name = "algorithm"
    honours: frozenset[str] = frozenset()
    converges = False  # whether it has a stopping rule of its own (a ConvergenceWarning if unmet)
    draws = True  # whether step draws random numbers (else it gets keys=None: hashing N keys per
    # step is a tenth of a closed-form EM iteration)
    advice = ""  # what to change when it does not converge
    stop_requested = False
    device: torch.device
    group: Group
    param_state: dict

    def setup(self, data, batch_size: int) -> None:
        raise NotImplementedError

    def step(self, index: Tensor, *, keys: Tensor | None, first: bool,
             stop: bool) -> float | None:  # fmt: skip
        raise NotImplementedError

    def end_epoch(self, losses: list[float]) -> tuple[float, bool]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict, *, source: str) -> None:
        raise NotImplementedError

    def settings(self) -> dict:
        return {}

    def params(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def info(self) -> dict:
        return {}

    def finish(self) -> None:
        """After the last epoch (write parameters where they belong)."""


def _check_options(algorithm: Algorithm, given: dict, checkpoint_dir, resume, overwrite) -> None:
    """ValueError naming a loop setting the algorithm does not use, or a bad combination."""
    for name, value in given.items():
        if value is not None and name not in algorithm.honours:
            raise ValueError(
                f"{algorithm.name} does not use {name} (it would be ignored); leave it out"
            )
    if given.get("batch_size") is not None:
        check_count("batch_size", given["batch_size"])
    if given.get("restore_best") and given.get("val_data") is None:
        raise ValueError("restore_best needs val_data to choose the best epoch; pass val_data")
    if given.get("patience") is not None:
        check_count("patience", given["patience"])
        if given.get("val_data") is None:
            raise ValueError("patience needs val_data to watch; pass val_data or patience=None")
    check_flag("resume", resume)
    if resume and overwrite:
        raise ValueError("resume=True and overwrite=True ask for opposite things; choose one")
    if checkpoint_dir is not None and Path(checkpoint_dir).is_file():
        raise ValueError(f"checkpoint_dir {checkpoint_dir} is a file; give a folder")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir, the folder holding checkpoint.pt")


def run(
    algorithm: Algorithm,
    data,
    *,
    epochs: int,
    batch_size: int | None = None,
    val_data=None,
    patience: int | None = None,
    restore_best: bool | None = None,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: list[Callable[[dict], None]] = (),
    loggers: list[Logger] = (),
) -> FitResult:
    """Run ``algorithm`` over ``data`` for at most ``epochs`` epochs.

    Each epoch visits the datapoints in an order drawn with ``seed`` (the data's own order
    when one batch holds them all: a per-datapoint guide may rely on it); under torchrun each
    process steps on its share of every global batch, its draws seeded by position.

    Parameters
    ----------
    algorithm : Algorithm
        What one step does (``SVI``, ``GenericEM``, ``MixtureEM`` or your own).
    data : Tensor of shape (N, ...), tuple of such tensors, or Dataset
    epochs : int
        The total to reach (with ``resume``, counting the checkpoint's).
    batch_size : int, optional
        Datapoints per global step; None: all of them (one step per epoch).
    val_data : like ``data``, optional
        Scored after every epoch (algorithms that honour it).
    patience : int, optional
        Stop after this many epochs without a better validation loss.
    restore_best : bool, optional
        End with the best validation epoch's parameters (default: when ``patience`` is set).
    seed : int
        Seeds the batch order and every draw.
    checkpoint_dir : str or Path, optional
        Gets checkpoint.pt after every epoch and on SIGINT/SIGTERM (which end the run after
        the current step, ``interrupted=True``).
    resume, overwrite : bool
        Continue the checkpoint there exactly, or start afresh over it; without either a
        checkpoint there is refused.
    progress : bool
        A progress bar (rank 0).
    callbacks : list of callables
        Each gets a dict after every step (``{"event": "step", "epoch", "step",
        "global_step"}``, plus ``"loss"``, the batch's per datapoint, where the step has one)
        and every epoch (``{"event": "epoch", "epoch", "global_step", "loss", "elapsed"}``,
        plus ``"val_loss"`` with ``val_data``, ``"lr"`` and the numbers of the algorithm's
        ``info()``), on rank 0, in order, all with the same dict: one may add entries for
        those after it.
    loggers : list of Logger
        ``tracking.TensorBoardLogger``, ``tracking.MLflowLogger`` or your own: started with
        the settings, given the metrics after the callbacks, closed at the end (rank 0).

    Returns
    -------
    FitResult
        Losses per datapoint in nats, per epoch; the fitted parameters; ``algorithm``,
        ``converged`` and the algorithm's ``info``.
    """
    given = dict(batch_size=batch_size, val_data=val_data, patience=patience,
                 restore_best=restore_best)  # fmt: skip
    _check_options(algorithm, given, checkpoint_dir, resume, overwrite)
    check_count("epochs", epochs)
    check_seed("seed", seed)
    data = as_dataset(data, "data").to(algorithm.device)
    if val_data is not None:
        val_data = as_dataset(val_data, "val_data").to(algorithm.device)
        _check_alike(val_data, data)
    g, n = algorithm.group, len(data)
    batch_size = batch_size or n
    settings = {"algorithm": algorithm.name, **algorithm.settings(), "batch_size": batch_size,
                "seed": seed, "data": fingerprint(data)}  # fmt: skip
    shuffle = torch.Generator().manual_seed(seed)  # one batch order, the same everywhere
    ckpts = Checkpoints(checkpoint_dir, settings, algorithm, shuffle, n)
    if ckpts.exists() and not (resume or overwrite):  # refused before anything is touched
        raise ValueError(
            f"{ckpts.path} holds an earlier fit: continue it with resume=True, replace it with "
            "overwrite=True, or give another checkpoint_dir"
        )
    pyro.set_rng_seed(seed + g.rank)  # each process its own draws (the same seed alone)
    algorithm.setup(data, batch_size)
    s = ckpts.load(seed) if resume else LoopState()
    _check_not_past(s, epochs, ckpts.path)
    lock = run_lock(checkpoint_dir) if checkpoint_dir is not None and g.main else nullcontext()
    steps = math.ceil(n / batch_size)
    bar = tqdm(total=epochs * steps, initial=min(s.epoch, epochs) * steps + s.step,
               disable=not progress or not g.main, unit="step", desc=algorithm.name,
               dynamic_ncols=True)  # fmt: skip
    loggers = list(loggers) if g.main else []
    loop = _Loop(algorithm, data, s, ckpts, bar, [*callbacks, *loggers])
    tracked = _started(loggers, settings, s.epoch * steps + s.step, loop)
    with lock, StopOnSignal() as stop, bar, tracked:
        converged = loop.epochs(epochs, batch_size, stop, val_data, patience, seed)
        params_epoch = len(s.losses) + (s.step > 0)  # interrupted mid-epoch: that epoch, partly
        if restore_best is None:
            restore_best = patience is not None
        if restore_best and s.best is not None and not loop.interrupted:
            algorithm.restore(s.best)
            params_epoch = s.best_epoch
        algorithm.finish()
    _warn_after(algorithm, loop, converged, epochs)
    return _result(algorithm, loop, converged, params_epoch)


@contextmanager
def _started(loggers: list[Logger], settings: dict, first_step: int, loop: _Loop):
    """The loggers started with the fit's settings, and closed however it ends."""
    status = "FAILED"
    try:
        for logger in loggers:
            logger.start(settings, first_step)
        yield
        status = "KILLED" if loop.interrupted else "FINISHED"
    finally:
        for logger in loggers:
            logger.close(status)


def _result(algorithm: Algorithm, loop: _Loop, converged: bool, params_epoch: int) -> FitResult:
    s, path = loop.s, loop.ckpts.path
    return FitResult(
        losses=s.losses,
        val_losses=s.val_losses,
        best_epoch=s.best_epoch,
        params_epoch=params_epoch,
        elapsed=s.elapsed,
        device=str(algorithm.device),
        params=algorithm.params(),
        param_state=algorithm.param_state,
        algorithm=algorithm.name,
        converged=converged if algorithm.converges else None,
        info=algorithm.info(),
        stopped_early=loop.stopped_early,
        interrupted=loop.interrupted,
        checkpoint=path if loop.ckpts.exists() else None,
    )


def _check_alike(val_data, data) -> None:
    """ValueError unless a datapoint of ``val_data`` has the tensors, shapes and dtypes of one
    of ``data``: the model is fitted on one and scored on the other."""

    def one(d) -> list[tuple]:
        with seeded(0):  # a batch may draw (binarization, masks): keep the fit's stream
            return [(tuple(t.shape[1:]), t.dtype) for t in d.batch(torch.arange(1))]

    if one(val_data) != one(data):
        raise ValueError(
            f"val_data hold datapoints of (shape, dtype) {one(val_data)} but data hold "
            f"{one(data)}; give validation data like the training data"
        )


def _check_not_past(s: LoopState, epochs: int, path) -> None:
    """ValueError when a resumed checkpoint is further on than ``epochs``."""
    done = s.epoch + (s.step > 0)  # an epoch begun counts: its steps changed the parameters
    if done > epochs:
        begun = f" and {s.step} steps of the next" if s.step else ""
        raise ValueError(
            f"{path} holds {s.epoch} epochs{begun} already, more than epochs={epochs}: pass "
            f"epochs >= {done} to continue it, or overwrite=True to start over"
        )


def _warn_after(algorithm: Algorithm, loop: _Loop, converged: bool, epochs: int) -> None:
    """Say when latents were drawn by each process's stream under torchrun, and when an
    algorithm with a stopping rule ran out of epochs."""
    g, losses = algorithm.group, loop.s.losses
    unseeded = sorted(getattr(algorithm, "unseeded", ()))
    if unseeded and g.active and g.main:
        warnings.warn(
            f"latent site(s) {unseeded} have distributions lvmkit cannot draw by position "
            "(lvmkit.inference.draws): each process drew them from its own stream, so this fit "
            "differs from a 1-process fit by those draws",
            stacklevel=4,
        )
    if algorithm.converges and not converged and not loop.interrupted and losses:
        _warn_not_converged(algorithm, losses, epochs)


def _warn_not_converged(algorithm: Algorithm, losses: list[float], epochs: int) -> None:
    from sklearn.exceptions import ConvergenceWarning  # scikit-learn's, for filters users have

    change = abs(losses[-1] - losses[-2]) if len(losses) > 1 else "n/a"
    warnings.warn(
        f"{algorithm.name} did not converge in {epochs} iterations (last change in the loss "
        f"{change}); {algorithm.advice}",
        ConvergenceWarning,
        stacklevel=5,
    )


class _Loop:
    """The epochs of one ``run``: its state, checkpoints, progress bar and callbacks."""

    def __init__(self, algorithm, data, state, ckpts, bar, callbacks):
        self.a, self.data, self.s, self.ckpts, self.bar = algorithm, data, state, ckpts, bar
        self.callbacks = callbacks
        self.stopped_early = self.interrupted = False

    def epochs(self, epochs, batch_size, stop, val_data, patience, seed) -> bool:
        """Run epochs until ``epochs``, a stopping rule, or a signal; whether the algorithm's
        own rule was met."""
        a, s, n = self.a, self.s, len(self.data)
        self.steps = steps = math.ceil(n / batch_size)
        self.total, self.seed = epochs, seed
        converged = False
        while s.epoch < epochs and not (self.stopped_early or converged):
            t0 = self.t0 = time.perf_counter()
            self.points, self.shown_sum, self.shown_count = 0, 0.0, 0
            if s.perm is None:
                # one batch per epoch keeps the data's order: a per-datapoint guide may rely on it
                s.perm = (
                    torch.arange(n)
                    if steps == 1
                    else torch.randperm(n, generator=self.ckpts.shuffle)
                )
            while s.step < steps and not a.stop_requested:
                self._step(s.perm[s.step * batch_size : (s.step + 1) * batch_size], stop)
            s.elapsed += time.perf_counter() - t0
            if s.step < steps:  # interrupted mid-epoch
                self.interrupted = True
                self.ckpts.save(s)
                return converged
            loss, converged = a.end_epoch(list(s.losses))
            s.losses.append(loss)
            metrics = {"event": "epoch", "epoch": s.epoch + 1, "loss": loss}
            if val_data is not None:
                metrics["val_loss"] = self._validate(val_data, batch_size, patience, seed)
            s.epoch, s.step, s.perm = s.epoch + 1, 0, None
            self.ckpts.save(s)
            self._tell(metrics | {"global_step": s.epoch * steps, "elapsed": s.elapsed}
                       | self._numbers())  # fmt: skip
            if a.stop_requested or vote(stop.signum is not None, a.group):
                self.interrupted = True
                break
        return converged

    def _step(self, index: Tensor, stop) -> None:
        a, s = self.a, self.s
        mine = index[shard_of(len(index), a.group)].to(a.device)  # this process's share
        keys = draw_keys(self.seed, s.epoch, s.step, mine) if a.draws else None
        try:
            loss = a.step(mine, keys=keys, first=s.step == 0, stop=stop.signum is not None)
        except FloatingPointError as err:  # NonFiniteLossError: say where, and what is kept
            raise type(err)(
                f"{err} at epoch {s.epoch + 1}, step {s.step + 1}; parameters were not "
                f"updated{self.ckpts.where()}. Try a lower lr or check the data and model"
            ) from None
        s.step += 1
        self.points += len(index)
        self.bar.update()
        shown = {}
        if loss is not None:  # the bar shows the epoch's running mean; callbacks the batch's
            self.shown_sum += loss * len(index)
            self.shown_count += len(index)
            shown = {"loss": f"{self.shown_sum / self.shown_count:.3f}"}
        speed = self.points / (time.perf_counter() - self.t0 + 1e-9)
        self.bar.set_postfix(epoch=f"{s.epoch + 1}/{self.total}", **shown,
                             pts_per_s=f"{speed:.0f}", refresh=False)  # fmt: skip
        shown = {} if loss is None else {"loss": loss}  # EM's loss is known at the epoch's end
        self._tell({"event": "step", "epoch": s.epoch + 1, "step": s.step,
                    "global_step": s.epoch * self.steps + s.step, **shown})  # fmt: skip

    def _numbers(self) -> dict:
        """The learning rate and the numbers of the algorithm's info, for an epoch's metrics."""
        found = {"lr": self.a.settings().get("lr"), **self.a.info()}
        return {k: v for k, v in found.items() if type(v) in (int, float)}

    def _validate(self, val_data, batch_size, patience, seed) -> float:
        s = self.s
        vl = self.a.validate(val_data, batch_size=batch_size, seed=seed)
        s.val_losses.append(vl)
        if vl < s.best_val:
            s.best_val, s.best_epoch, s.bad_epochs = vl, s.epoch + 1, 0
            s.best = self.a.snapshot()
        else:
            s.bad_epochs += 1
        self.stopped_early = patience is not None and s.bad_epochs >= patience
        return vl

    def _tell(self, metrics: dict) -> None:
        if self.a.group.main:
            for callback in self.callbacks:
                callback(metrics)
