"""``fit``: amortized SVI for any Pyro model/guide pair, with validation, early stopping,
checkpoints and exact resume. ``FitResult`` is what every fitting function returns (EM too)."""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from torch import Tensor
from tqdm import tqdm

from lvmkit.data import as_dataset, check_count
from lvmkit.inference.checkpoint import checksum, run_lock, save_checkpoint
from lvmkit.inference.distributed import (
    gather_objects,
    set_threads,
    shard,
    share_object,
    vote,
)
from lvmkit.inference.resume import StopOnSignal, load_resumable, rng_state, set_rng_state
from lvmkit.inference.trainer import NonFiniteLossError, Trainer, optimizer_name

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class FitResult:
    """What ``fit`` and ``em`` return. Losses are per datapoint, in nats; index i is epoch (or
    EM iteration) i + 1."""

    losses: list[float]  # SVI: the objective; EM: -log p(x) (mean, before each M-step)
    val_losses: list[float]
    best_epoch: int | None  # 1-based epoch of the lowest validation loss (None without val_data)
    params_epoch: int  # the epoch whose parameters ``params`` holds (best_epoch if restored)
    elapsed: float  # seconds of training, summed over resumed runs
    device: str
    params: dict[str, Tensor]  # fitted constrained parameter values
    param_state: dict = field(repr=False)  # the fit's Pyro param store state
    method: str = "svi"  # "svi" or "em"
    e_step: str | None = None  # EM: "closed-form", "enum" or "importance"
    converged: bool | None = None  # closed-form EM: whether the change fell below tol
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


def fingerprint(dataset) -> str:
    """What identifies a dataset for resuming: its size, the shape and dtype of a batch, and a
    hash of up to 64 datapoints spread across it (batches drawn with a fixed seed, so that
    random batches, e.g. dynamic binarization, give the same answer)."""
    n = len(dataset)
    index = torch.linspace(0, n - 1, min(n, 64)).long()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        batch = dataset.batch(index)  # a CPU index selects from data on any device
    shapes = ", ".join(f"{tuple(t.shape[1:])} {str(t.dtype).removeprefix('torch.')}" for t in batch)
    return f"{n} datapoints of {shapes}, sha256 {checksum(batch)[:16]}"


@dataclass
class LoopState:
    """Everything a checkpoint needs to continue a fit exactly where it stopped."""

    epoch: int = 0  # epochs finished
    step: int = 0  # steps finished in the current epoch
    perm: Tensor | None = None  # the current epoch's shuffle
    loss_sum: float = 0.0  # summed over the current epoch's datapoints so far
    count: int = 0
    losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    best_val: float = math.inf
    best_params: dict | None = None
    best_buffers: dict | None = None  # the best epoch's module buffers (a warm-up's counter)
    bad_epochs: int = 0  # epochs since the best validation loss
    elapsed: float = 0.0

    def next_epoch(self) -> None:
        self.epoch += 1
        self.step, self.perm, self.loss_sum, self.count = 0, None, 0.0, 0


def _check_args(epochs, batch_size, patience, restore_best, val_data, resume, checkpoint_dir):
    check_count("epochs", epochs)
    check_count("batch_size", batch_size)
    if restore_best and val_data is None:
        raise ValueError("restore_best needs val_data to choose the best epoch; pass val_data")
    if patience is not None and val_data is None:
        raise ValueError("patience needs val_data to watch; pass val_data or patience=None")
    if (
        checkpoint_dir is not None
        and Path(checkpoint_dir).exists()
        and not Path(checkpoint_dir).is_dir()
    ):
        raise ValueError(f"checkpoint_dir {checkpoint_dir} is a file; give a folder")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir, the folder holding checkpoint.pt")


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
    jit: bool = False,
    threads: int | str | None = None,
) -> FitResult:
    """Fit ``model``/``guide`` to ``data`` by stochastic variational inference.

    data: a tensor (N, ...), a tuple of tensors with N rows each (passed positionally), or
        a Dataset (ImageData). ``model(*batch)`` and ``guide(*batch)`` are called on each batch.
    elbo: "elbo" (Trace_ELBO), "meanfield" (analytic KL where available), "iwae" (importance-
        weighted bound with ``num_samples``), "enum" (TraceEnum_ELBO for discrete latents).
    num_samples: particles (draws of z per datapoint) in the objective's estimate.
    optimizer: "adam", "adamw", "sgd", or a factory ``(params, lr=lr) -> torch.optim.Optimizer``.
    epochs: the total number of epochs; with ``resume`` training continues up to it.
    val_data, patience: per-epoch validation loss; stop after ``patience`` epochs without
        improvement.
    restore_best: end with the parameters of the epoch of lowest validation loss instead of
        the last epoch's; None (the default) restores them when ``patience`` is set.
        ``FitResult.params_epoch`` says which epoch the parameters are from.
    checkpoint_dir: write ``checkpoint.pt`` there after every epoch (and on SIGINT/SIGTERM,
        which finish the current step and return with ``interrupted=True``).
    resume: continue from the checkpoint in ``checkpoint_dir`` if there is one.
    overwrite: start afresh over a checkpoint already in ``checkpoint_dir``; without it (or
        ``resume``) a checkpoint there is refused, never silently replaced.
    jit: run the steps from a trace of the loss (see ``Trainer``): same draws, same results,
        less Python per step; for models without data-dependent Python.
    threads: torch threads for this process (``torch.set_num_threads``); "auto" takes the
        cores not busy with other work, shared among torchrun's processes; None (the default)
        leaves torch's setting as it is.

    Under torchrun (or with a process group initialised) every process runs this same call:
    each takes its share of every global batch of ``batch_size``, and they take the same steps.
    """
    _check_args(epochs, batch_size, patience, restore_best, val_data, resume, checkpoint_dir)
    set_threads(threads)
    trainer = Trainer(
        model,
        guide,
        elbo=elbo,
        num_samples=num_samples,
        optimizer=optimizer,
        lr=lr,
        device=device,
        jit=jit,
    )
    train = as_dataset(data, "data").to(trainer.device)
    val = None if val_data is None else as_dataset(val_data, "val_data").to(trainer.device)
    n = len(train)
    steps_per_epoch = math.ceil(n / batch_size)
    settings = dict(
        elbo=elbo,
        num_samples=num_samples,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer_name(optimizer),
        seed=seed,
        data=fingerprint(train),
    )
    ckpt_path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME
    if ckpt_path is not None and ckpt_path.exists() and not (resume or overwrite):
        raise ValueError(
            f"{ckpt_path} holds an earlier fit: continue it with resume=True, replace it with "
            "overwrite=True, or give another checkpoint_dir"
        )

    g = trainer.group  # under torchrun: this process's place; rank 0 writes the checkpoints
    pyro.set_rng_seed(seed + g.rank)  # each process its own draws (the same seed alone)
    shuffle = torch.Generator().manual_seed(seed)  # one batch order, the same everywhere
    trainer.init(*train.batch(torch.arange(min(batch_size, n), device=trainer.device)))

    s = LoopState()
    ckpt = None
    if resume and g.main and ckpt_path.exists():
        ckpt = load_resumable(ckpt_path, settings)
    ckpt = share_object(ckpt, g)  # read once, by rank 0: the others may not see its disk
    if ckpt is not None:
        trainer.load_state_dict(ckpt["trainer"], source=str(ckpt_path))
        s = LoopState(**ckpt["loop"])
        rngs = ckpt.get("rank_rng") or [ckpt["rng"]]
        # the same world size continues every stream; another one gives rank r > 0 a fresh one
        set_rng_state(rngs[g.rank] if len(rngs) == g.size else ckpt["rng"], trainer.device, shuffle)
        if len(rngs) != g.size and g.rank > 0:
            torch.manual_seed(hash((seed, g.rank, s.epoch, s.step)) % 2**63)
    elif resume and g.main:
        warnings.warn(
            f"resume=True but {ckpt_path} does not exist yet; starting from scratch", stacklevel=2
        )

    def checkpoint():
        if ckpt_path is not None:
            rngs = gather_objects(rng_state(trainer.device, shuffle), g)
            if g.main:
                state = {
                    "config": settings,
                    "trainer": trainer.state_dict(),
                    "loop": dataclasses.asdict(s),
                    "rng": rngs[0],
                    "rank_rng": rngs if g.active else None,
                }
                save_checkpoint(state, ckpt_path)

    stopped_early = interrupted = False
    lock = run_lock(checkpoint_dir) if checkpoint_dir is not None and g.main else nullcontext()
    bar = tqdm(
        total=epochs * steps_per_epoch,
        initial=min(s.epoch, epochs) * steps_per_epoch + s.step,
        disable=not progress or not g.main,
        unit="step",
        desc="fit",
        dynamic_ncols=True,
    )
    stop_requested = False
    with lock, StopOnSignal() as stop, trainer.scope(), bar:
        while s.epoch < epochs and not stopped_early:
            t0 = time.perf_counter()
            if s.perm is None:
                # one batch per epoch keeps the data's order: a per-datapoint guide may rely on it
                single = steps_per_epoch == 1
                s.perm = torch.arange(n) if single else torch.randperm(n, generator=shuffle)
            while s.step < steps_per_epoch and not stop_requested:
                idx = s.perm[s.step * batch_size : (s.step + 1) * batch_size]
                mine = idx[shard(len(idx), g)]  # this process's share of the global batch
                batch = train.batch(mine.to(trainer.device))
                try:
                    loss = trainer.step(*batch, validate=s.step == 0, stop=stop.signum is not None)
                except NonFiniteLossError as err:
                    where = ""
                    if ckpt_path is not None and ckpt_path.exists():
                        where = f"; the last good checkpoint is {ckpt_path}"
                    raise NonFiniteLossError(
                        f"{err} at epoch {s.epoch + 1}, step {s.step + 1}; parameters were "
                        f"not updated{where}. Try a lower lr or check the data and model"
                    ) from None
                s.loss_sum += loss * len(idx)
                s.count += len(idx)
                s.step += 1
                stop_requested = trainer.stop_requested  # any process's signal stops them all
                bar.update()
                bar.set_postfix(
                    epoch=f"{s.epoch + 1}/{epochs}",
                    loss=f"{s.loss_sum / s.count:.3f}",
                    pts_per_s=f"{s.count / (time.perf_counter() - t0 + 1e-9):.0f}",
                    refresh=False,
                )
            s.elapsed += time.perf_counter() - t0
            if s.step < steps_per_epoch:  # interrupted mid-epoch
                interrupted = True
                checkpoint()
                break
            s.losses.append(s.loss_sum / s.count)
            if val is not None:
                vl = trainer.evaluate(val, batch_size=batch_size, seed=seed)
                s.val_losses.append(vl)
                if vl < s.best_val:
                    s.best_val, s.best_epoch, s.bad_epochs = vl, s.epoch + 1, 0
                    state = trainer.state_dict()
                    s.best_params, s.best_buffers = state["params"], state["buffers"]
                else:
                    s.bad_epochs += 1
                stopped_early = patience is not None and s.bad_epochs >= patience
            s.next_epoch()
            checkpoint()
            if stop_requested or vote(stop.signum is not None, g):
                interrupted = True
                break
        params_epoch = len(s.losses)
        if restore_best is None:
            restore_best = patience is not None
        if restore_best and s.best_params is not None and not interrupted:
            trainer.load_params(s.best_params)
            trainer.load_buffers(s.best_buffers or {})  # older checkpoints kept params only
            params_epoch = s.best_epoch
    return FitResult(
        losses=s.losses,
        val_losses=s.val_losses,
        best_epoch=s.best_epoch,
        params_epoch=params_epoch,
        elapsed=s.elapsed,
        device=str(trainer.device),
        params=trainer.params(),
        param_state=trainer.param_state,
        stopped_early=stopped_early,
        interrupted=interrupted,
        checkpoint=ckpt_path if ckpt_path is not None and ckpt_path.exists() else None,
    )
