"""Amortized SVI for any Pyro model/guide pair: ``fit``, or ``Trainer`` for a loop of your own.

A model and a guide are plain Pyro callables that take one batch: a tensor, or a tuple of tensors
passed positionally. Parameters live in a parameter store private to each Trainer, so two fits in
one process never see each other's parameters.
"""

from __future__ import annotations

import math
import random
import signal
import threading
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro.infer import TraceEnum_ELBO, TraceMeanField_ELBO
from torch import Tensor
from torch.fx.experimental.proxy_tensor import make_fx
from tqdm.auto import tqdm

from lvmkit.inference.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from lvmkit.inference.elbo import ReparamELBO
from lvmkit.inference.importance import IWAELoss, modules_behind

ELBOS = {
    "elbo": ReparamELBO,  # Trace_ELBO's estimate in one pass (falls back to it when needed)
    "meanfield": lambda k: TraceMeanField_ELBO(num_particles=k),  # analytic KL where available
    "iwae": IWAELoss,  # per-datapoint importance-weighted bound (Burda et al. 2016)
    "enum": lambda k: TraceEnum_ELBO(num_particles=k),  # sums out enumerated discrete latents
}
OPTIMIZERS = {
    # foreach: one multi-tensor kernel per update instead of one per parameter tensor.
    "adam": lambda p, lr: torch.optim.Adam(p, lr=lr, foreach=True),
    "adamw": lambda p, lr: torch.optim.AdamW(p, lr=lr, foreach=True),
    "sgd": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, foreach=True),
}
CHECKPOINT_NAME = "checkpoint.pt"


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the parameters were not updated with it."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else must name a usable device."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; use 'auto' or 'cpu'")
    return dev


def make_elbo(name: str, num_particles: int = 1):
    """The objective called ``name`` (one of ELBOS) with ``num_particles`` samples."""
    if name not in ELBOS:
        raise ValueError(f"unknown elbo {name!r}; choose one of {sorted(ELBOS)}")
    if not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(f"num_particles must be a positive int, got {num_particles!r}")
    return ELBOS[name](num_particles)


class Trainer:
    """SVI with one torch optimizer over every parameter the model and guide create.

    >>> trainer = Trainer(model, guide, elbo="elbo", lr=1e-3)
    >>> for x in batches:
    ...     loss = trainer.step(x)           # nats per datapoint
    >>> trainer.evaluate(val_x)             # mean loss per datapoint, no update

    Pyro's argument/support checks run on a step when ``validate=True`` (the default) and always in
    ``evaluate``. ``fit`` validates the first step of every epoch only: on a small VAE the checks
    cost ~8% of a step.

    ``jit=True`` traces the loss into a graph of torch ops (``make_fx``, one trace per batch
    shape) and runs the unvalidated steps from it: the Pyro program's Python runs once, not per
    step, which on a small VAE makes a step cost what a hand-written PyTorch step does. A trace
    freezes Python: a model that branches on data or keeps state outside tensors must not be
    traced. A tensor read into Python (``.item()``, ``float(t)``) stops the trace and the fit
    goes on without jit, with a warning; every validated step runs the model itself and checks
    that the trace gives the same loss from the same draws, and falls back the same way if not.
    """

    def __init__(
        self,
        model,
        guide,
        *,
        elbo: str = "elbo",
        num_particles: int = 1,
        optimizer: str = "adam",
        lr: float = 1e-3,
        device: str | torch.device = "auto",
        jit: bool = False,
    ):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(OPTIMIZERS)}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        if not isinstance(jit, bool):
            raise ValueError(f"jit must be True or False, got {jit!r}")
        self.model, self.guide = model, guide
        # A name, or any object with Pyro's differentiable_loss / loss methods (EM's M-step).
        self.loss = make_elbo(elbo, num_particles) if isinstance(elbo, str) else elbo
        self.optimizer_name, self.lr = optimizer, lr
        self.device = resolve_device(device)
        self.param_state = {"params": {}, "constraints": {}}  # this trainer's own param store
        self.param_names: list[str] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.jit = jit
        self._traces: dict[tuple, torch.fx.GraphModule] = {}  # batch signature -> trace

    @contextmanager
    def scope(self):
        """Run code against this trainer's parameters (and its device as the default device)."""
        with pyro.get_param_store().scope(self.param_state):
            # The device context makes torch.zeros(...) inside a user's model land on the GPU.
            with self.device if self.device.type != "cpu" else nullcontext():
                yield

    def _to_device(self, batch: tuple) -> tuple:
        return tuple(t.to(self.device) if isinstance(t, Tensor) else t for t in batch)

    def init(self, *batch) -> None:
        """Create the parameters by running model and guide once, then build the optimizer.
        Module buffers (counters, running statistics) are left as they were."""
        for owner in modules_behind(self.model, self.guide):
            owner.to(self.device)
        batch = self._to_device(batch)
        # with gradients: TraceEnum_ELBO refuses a loss without a graph
        with self.scope(), self._buffers_kept():
            self.loss.differentiable_loss(self.model, self.guide, *batch)
            self._collect_params()
        if not self.param_names:
            raise ValueError(
                "the model and guide create no parameters: register nets with pyro.module or "
                "create pyro.param sites, otherwise there is nothing to fit"
            )

    def _collect_params(self) -> None:
        """Pick up parameters created since the last call; move them to the device."""
        store = pyro.get_param_store()
        if len(store) == len(self.param_names):
            return
        named = dict(store.named_parameters())
        new = sorted(set(named) - set(self.param_names))
        params = [named[n] for n in new]
        for p in params:
            if p.device != self.device:
                p.data = p.data.to(self.device)  # in place: nn.Module owners keep the same object
        self.param_names += new
        self.param_state.update(store.get_state())  # the scope only syncs this dict on exit
        if self.optimizer is None:
            self.optimizer = OPTIMIZERS[self.optimizer_name](params, self.lr)
        else:
            self.optimizer.add_param_group({"params": params})

    def step(self, *batch, validate: bool = True) -> float:
        """One gradient step on ``batch``; returns the loss in nats per datapoint.

        ``validate=True`` runs Pyro's checks, on the model itself; under ``jit`` it also checks
        the trace against the model, so run most steps with ``validate=False`` (as ``fit`` does)
        for them to run from the trace."""
        if self.optimizer is None:
            self.init(*batch)
        with self.scope():
            return self._step(self._to_device(batch), validate)

    def _step(self, batch: tuple, validate: bool) -> float:
        trace = self._trace(batch) if self.jit else None
        if trace is not None and not validate:
            loss = trace(*self._leaves(), *batch)
        else:
            if trace is not None:  # for the check below: the trace's loss from the same draws
                with self._aside(), torch.no_grad():
                    traced = trace(*self._leaves(), *batch)
            with pyro.validation_enabled(validate):
                loss = self.loss.differentiable_loss(self.model, self.guide, *batch)
            if trace is not None:
                self._check_trace(traced, loss)
        value = loss.item() / len(batch[0])
        if not math.isfinite(value):
            raise NonFiniteLossError(f"loss is {value}")
        if not loss.requires_grad:
            raise ValueError("the loss does not depend on any parameter; nothing to fit")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self._collect_params()
        return value

    def _leaves(self) -> list[Tensor]:
        """The unconstrained parameters, the tensors the optimizer updates: a trace's inputs."""
        return [self.param_state["params"][n] for n in self.param_names]

    def _trace(self, batch: tuple):
        """The traced loss for batches shaped like ``batch`` (traced on first use), or None."""
        if not all(isinstance(t, Tensor) for t in batch):
            self._stop_jit("a trace takes tensor arguments only")
            return None
        key = (len(self.param_names), *((t.shape, t.dtype, t.device) for t in batch))
        if key not in self._traces:
            leaves = self._leaves()

            def loss_fn(*inputs):
                return self.loss.differentiable_loss(self.model, self.guide, *inputs[len(leaves) :])

            # make_fx records the ops the Python ran (pre_dispatch keeps no_grad regions) and
            # refuses a tensor read into Python. The tracing run's draws are put back, so traced
            # steps see the draws the model's own steps would.
            with self._aside(), pyro.validation_enabled(False):
                try:
                    self._traces[key] = make_fx(loss_fn, pre_dispatch=True)(*leaves, *batch)
                except Exception as err:  # whatever stops the trace, the model still runs
                    what = str(err).strip().split("\n")[0][:300]
                    self._stop_jit(f"the step cannot be traced ({type(err).__name__}: {what})")
                    return None
        return self._traces[key]

    def _check_trace(self, traced: Tensor, loss: Tensor) -> None:
        """The trace must give the loss the model gives, from the same draws."""
        if not torch.allclose(traced, loss.detach(), rtol=1e-4, atol=1e-6):
            self._stop_jit(
                f"the traced step gives loss {float(traced):.6g} where the model gives "
                f"{float(loss.detach()):.6g} from the same draws; the model keeps state outside "
                "tensors or branches on data, which a trace freezes"
            )

    def _stop_jit(self, why: str) -> None:
        warnings.warn(f"jit=True: {why}. Running without jit from here on.", stacklevel=4)
        self.jit = False
        self._traces.clear()

    def evaluate(self, data, *, batch_size: int = 256, seed: int = 0) -> float:
        """Mean loss per datapoint over ``data`` (tensor, tuple or ImageData), no update.

        Uses its own seeded random stream, so successive evaluations are comparable and the
        training stream is left untouched.
        """
        data = as_dataset(data, "data").to(self.device)
        if self.optimizer is None:
            self.init(*data.batch(torch.arange(min(batch_size, len(data)))))
        total = 0.0
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), self.scope(), torch.no_grad():
            torch.manual_seed(seed)
            for start in range(0, len(data), batch_size):
                batch = data.batch(torch.arange(start, min(start + batch_size, len(data))))
                total += self.loss.loss(self.model, self.guide, *batch)
        return total / len(data)

    def params(self) -> dict[str, Tensor]:
        """Constrained parameter values, detached."""
        with self.scope():
            store = pyro.get_param_store()
            return {n: store[n].detach().clone() for n in self.param_names}

    @contextmanager
    def _buffers_kept(self):
        """Undo what the code inside does to module buffers (step counters, running stats)."""
        saved = {k: b.clone() for k, b in self._buffers().items()}
        try:
            yield
        finally:
            current = self._buffers()
            with torch.no_grad():
                for name, value in saved.items():
                    current[name].copy_(value)

    @contextmanager
    def _aside(self):
        """Run code that is not a training step (tracing, checking a trace) without leaving a
        mark on the random streams or on module buffers."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), self._buffers_kept():
            yield

    def _buffers(self) -> dict[str, Tensor]:
        """Buffers of the modules behind model and guide (counters, running statistics)."""
        return {
            f"{i}.{name}": buf
            for i, m in enumerate(modules_behind(self.model, self.guide))
            for name, buf in m.named_buffers()
        }

    def state_dict(self) -> dict:
        """Parameters (unconstrained, CPU), optimizer state and module buffers, for checkpoints."""
        state = self.param_state["params"]
        return {
            "param_names": list(self.param_names),
            "params": {n: state[n].detach().cpu().clone() for n in self.param_names},
            "optimizer": self.optimizer.state_dict(),
            "buffers": {k: b.detach().cpu().clone() for k, b in self._buffers().items()},
        }

    def load_state_dict(self, state: dict, *, source: str = "checkpoint") -> None:
        """Copy saved parameters (in place) and optimizer state into this trainer."""
        if state["param_names"] != self.param_names:
            missing = sorted(set(self.param_names) - set(state["param_names"]))
            extra = sorted(set(state["param_names"]) - set(self.param_names))
            raise CheckpointError(
                f"{source} does not fit this model/guide: it lacks parameters {missing} and has "
                f"unknown ones {extra}; resume with the model that wrote it, or start over"
            )
        self.load_params(state["params"], source=source)
        self.optimizer.load_state_dict(state["optimizer"])
        buffers = self._buffers()
        if set(state["buffers"]) != set(buffers):
            raise CheckpointError(f"{source} holds other module buffers than this model has")
        with torch.no_grad():
            for name, value in state["buffers"].items():
                buffers[name].copy_(value)

    def load_params(self, params: dict[str, Tensor], *, source: str = "checkpoint") -> None:
        """Copy unconstrained parameter values in place (shapes must match)."""
        current = self.param_state["params"]
        with torch.no_grad():
            for name, value in params.items():
                if current[name].shape != value.shape:
                    raise CheckpointError(
                        f"{source}: parameter {name!r} has shape {tuple(value.shape)}, the model's "
                        f"has {tuple(current[name].shape)}; was it built with another config?"
                    )
                current[name].copy_(value)


class _TensorData:
    """A tuple of tensors sharing their first dim, batched along it."""

    def __init__(self, tensors: tuple[Tensor, ...], what: str):
        if not tensors or not all(isinstance(t, Tensor) for t in tensors):
            raise ValueError(f"{what} must be a tensor, a tuple of tensors, or lvmkit ImageData")
        n = len(tensors[0]) if tensors[0].dim() else 0
        if n == 0:
            raise ValueError(f"{what} is empty (0 datapoints); nothing to fit")
        for i, t in enumerate(tensors):
            if t.dim() == 0 or len(t) != n:
                raise ValueError(
                    f"{what}: tensor {i} has {len(t) if t.dim() else 0} rows but tensor 0 has {n}; "
                    "every tensor in the tuple needs one row per datapoint"
                )
            if t.is_floating_point() and not torch.isfinite(t).all():
                bad = ~torch.isfinite(t)
                first = int(bad.reshape(n, -1).any(1).nonzero()[0])
                raise ValueError(
                    f"{what}: tensor {i} has {int(bad.sum())} NaN/inf values (first in row "
                    f"{first}); remove or impute them before fitting"
                )
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def batch(self, index: Tensor) -> tuple[Tensor, ...]:
        return tuple(t[index] for t in self.tensors)

    def to(self, device) -> _TensorData:
        self.tensors = tuple(t.to(device) for t in self.tensors)
        return self


def as_dataset(data, what: str = "data"):
    """Tensor, tuple of tensors, or ImageData -> an object with len, ``batch(index)`` and ``to``."""
    if hasattr(data, "batch") and hasattr(data, "to"):
        return data
    if isinstance(data, Tensor):
        return _TensorData((data,), what)
    if isinstance(data, (tuple, list)):
        return _TensorData(tuple(data), what)
    raise ValueError(
        f"{what} must be a tensor, a tuple of tensors, or lvmkit ImageData; "
        f"got {type(data).__name__}"
    )


@dataclass
class FitResult:
    """What ``fit`` returns. Losses are per datapoint, in nats; index i is epoch i + 1."""

    losses: list[float]
    val_losses: list[float]
    best_epoch: int | None  # 1-based epoch of the lowest validation loss (None without val_data)
    elapsed: float  # seconds of training, summed over resumed runs
    device: str
    params: dict[str, Tensor]  # fitted constrained parameter values
    param_state: dict = field(repr=False)  # the fit's Pyro param store state
    stopped_early: bool = False
    interrupted: bool = False  # stopped by SIGINT/SIGTERM after writing a checkpoint
    checkpoint: Path | None = None

    @property
    def epochs(self) -> int:
        return len(self.losses)

    def scope(self):
        """``with result.scope(): ...`` runs Pyro code against the fitted parameters."""
        return pyro.get_param_store().scope(self.param_state)


class _StopOnSignal:
    """Turn SIGINT/SIGTERM into a flag the loop checks between steps; a second signal aborts."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _rng_state(device: torch.device, shuffle: torch.Generator) -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "shuffle": shuffle.get_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict, device: torch.device, shuffle: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    shuffle.set_state(state["shuffle"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(_as_tuple(state["python"]))


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def fit(
    model,
    guide,
    data,
    *,
    elbo: str = "elbo",
    num_particles: int = 1,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: str = "adam",
    val_data=None,
    patience: int | None = None,
    device: str = "auto",
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    jit: bool = False,
) -> FitResult:
    """Fit ``model``/``guide`` to ``data`` by stochastic variational inference.

    data: a tensor (N, ...), a tuple of tensors with N rows each (passed positionally), or
        lvmkit ImageData. ``model(*batch)`` and ``guide(*batch)`` are called on each batch.
    elbo: "elbo" (Trace_ELBO), "meanfield" (analytic KL where available), "iwae" (importance-
        weighted bound with ``num_particles``), "enum" (TraceEnum_ELBO for discrete latents).
    epochs: the total number of epochs; with ``resume`` training continues up to it.
    val_data, patience: per-epoch validation loss; stop after ``patience`` epochs without
        improvement and restore the parameters of the best epoch.
    checkpoint_dir: write ``checkpoint.pt`` there after every epoch (and on SIGINT/SIGTERM,
        which finish the current step and return with ``interrupted=True``).
    resume: continue from the checkpoint in ``checkpoint_dir`` if there is one.
    jit: run the steps from a trace of the loss (see ``Trainer``): same draws, same results,
        less Python per step; for models without data-dependent Python.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if patience is not None and val_data is None:
        raise ValueError("patience needs val_data to watch; pass val_data or patience=None")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir, the folder holding checkpoint.pt")

    trainer = Trainer(
        model,
        guide,
        elbo=elbo,
        num_particles=num_particles,
        optimizer=optimizer,
        lr=lr,
        device=device,
        jit=jit,
    )
    train = as_dataset(data, "data").to(trainer.device)
    val = None if val_data is None else as_dataset(val_data, "val_data").to(trainer.device)
    n = len(train)
    steps_per_epoch = math.ceil(n / batch_size)
    config = dict(
        elbo=elbo,
        num_particles=num_particles,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        seed=seed,
    )
    ckpt_path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME

    pyro.set_rng_seed(seed)
    shuffle = torch.Generator().manual_seed(seed)
    trainer.init(*train.batch(torch.arange(min(batch_size, n), device=trainer.device)))

    # Loop state: everything a checkpoint needs to continue exactly where it stopped.
    s = dict(
        epoch=0,
        step=0,
        perm=None,
        loss_sum=0.0,
        count=0,
        losses=[],
        val_losses=[],
        best_epoch=None,
        best_val=math.inf,
        best_params=None,
        bad_epochs=0,
        elapsed=0.0,
    )
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        missing = {"config", "trainer", "loop", "rng"} - set(ckpt)
        if missing:
            raise CheckpointError(
                f"{ckpt_path} lacks {sorted(missing)}: it was not written by lvmkit.fit; "
                "delete it or pass resume=False"
            )
        diff = {
            k: (ckpt["config"].get(k), v) for k, v in config.items() if ckpt["config"].get(k) != v
        }
        if diff:
            details = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise CheckpointError(
                f"{ckpt_path} was written with other settings ({details}); pass the same "
                "settings to resume, or resume=False to start over"
            )
        trainer.load_state_dict(ckpt["trainer"], source=str(ckpt_path))
        s.update(ckpt["loop"])
        _set_rng_state(ckpt["rng"], trainer.device, shuffle)
    elif resume:
        warnings.warn(
            f"resume=True but {ckpt_path} does not exist yet; starting from scratch", stacklevel=2
        )

    def checkpoint():
        if ckpt_path is not None:
            loop = {k: s[k] for k in s}
            save_checkpoint(
                {
                    "config": config,
                    "trainer": trainer.state_dict(),
                    "loop": loop,
                    "rng": _rng_state(trainer.device, shuffle),
                },
                ckpt_path,
            )

    stopped_early = interrupted = False
    bar = tqdm(
        total=epochs * steps_per_epoch,
        initial=min(s["epoch"], epochs) * steps_per_epoch + s["step"],
        disable=not progress,
        unit="step",
        desc="fit",
        dynamic_ncols=True,
    )
    with _StopOnSignal() as stop, trainer.scope(), bar:
        while s["epoch"] < epochs and not stopped_early:
            t0 = time.perf_counter()
            if s["perm"] is None:
                s["perm"] = torch.randperm(n, generator=shuffle)
            while s["step"] < steps_per_epoch and stop.signum is None:
                idx = s["perm"][s["step"] * batch_size : (s["step"] + 1) * batch_size]
                try:
                    loss = trainer._step(train.batch(idx.to(trainer.device)), s["step"] == 0)
                except NonFiniteLossError as err:
                    where = (
                        ""
                        if ckpt_path is None or not ckpt_path.exists()
                        else (f"; the last good checkpoint is {ckpt_path}")
                    )
                    raise NonFiniteLossError(
                        f"{err} at epoch {s['epoch'] + 1}, step {s['step'] + 1}; parameters were "
                        f"not updated{where}. Try a lower lr or check the data and model"
                    ) from None
                s["loss_sum"] += loss * len(idx)
                s["count"] += len(idx)
                s["step"] += 1
                bar.update()
                bar.set_postfix(
                    epoch=f"{s['epoch'] + 1}/{epochs}",
                    loss=f"{s['loss_sum'] / s['count']:.3f}",
                    pts_per_s=f"{s['count'] / (time.perf_counter() - t0 + 1e-9):.0f}",
                    refresh=False,
                )
            s["elapsed"] += time.perf_counter() - t0
            if s["step"] < steps_per_epoch:  # interrupted mid-epoch
                interrupted = True
                checkpoint()
                break
            s["losses"].append(s["loss_sum"] / s["count"])
            if val is not None:
                vl = trainer.evaluate(val, batch_size=batch_size, seed=seed)
                s["val_losses"].append(vl)
                if vl < s["best_val"]:
                    s.update(best_val=vl, best_epoch=s["epoch"] + 1, bad_epochs=0)
                    s["best_params"] = trainer.state_dict()["params"]
                else:
                    s["bad_epochs"] += 1
                stopped_early = patience is not None and s["bad_epochs"] >= patience
            s.update(epoch=s["epoch"] + 1, step=0, perm=None, loss_sum=0.0, count=0)
            checkpoint()
            if stop.signum is not None:
                interrupted = True
                break
        if s["best_params"] is not None and not interrupted:
            trainer.load_params(s["best_params"])
    return FitResult(
        losses=s["losses"],
        val_losses=s["val_losses"],
        best_epoch=s["best_epoch"],
        elapsed=s["elapsed"],
        device=str(trainer.device),
        params=trainer.params(),
        param_state=trainer.param_state,
        stopped_early=stopped_early,
        interrupted=interrupted,
        checkpoint=ckpt_path if ckpt_path is not None and ckpt_path.exists() else None,
    )
