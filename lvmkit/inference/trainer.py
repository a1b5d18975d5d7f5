"""``Trainer``: SVI steps for any Pyro model/guide pair, with one torch optimizer over every
parameter they create, in a parameter store private to the trainer."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager, nullcontext

import pyro
import torch
from torch import Tensor

from lvmkit.core.checks import check_number
from lvmkit.core.files import CheckpointError
from lvmkit.core.processes import all_reduce_sum, broadcast, group, process_device, shard
from lvmkit.core.rng import draw_keys, drawn_by, seeded
from lvmkit.data import as_dataset
from lvmkit.inference.draws import PositionDraws
from lvmkit.inference.elbo import check_objective, make_elbo
from lvmkit.inference.jit import UNTRACEABLE, TracedLoss
from lvmkit.inference.programs import modules_behind, on_device, resolve_device, trace_once
from lvmkit.inference.resume import check_optimizer_state, check_same
from lvmkit.inference.tracking import quiet_logger

OPTIMIZERS = {
    # foreach: one multi-tensor kernel per update instead of one per parameter tensor.
    "adam": lambda p, lr: torch.optim.Adam(p, lr=lr, foreach=True),
    "adamw": lambda p, lr: torch.optim.AdamW(p, lr=lr, foreach=True),
    "sgd": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, foreach=True),
}


EVALUATION_EPOCH = 2**31 - 1  # the draws of evaluate: none of a training epoch's


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the parameters were not updated with it."""


def optimizer_name(optimizer) -> str:
    """How an optimizer choice is recorded in a checkpoint's settings: its name."""
    if isinstance(optimizer, str):
        return optimizer
    return getattr(optimizer, "__qualname__", type(optimizer).__qualname__)


class Trainer:
    """SVI with one torch optimizer over every parameter the model and guide create (``fit``'s
    step, for a loop of your own).

    Pyro's argument/support checks run on a step when ``validate=True`` (the default) and always
    in ``evaluate``; ``fit`` validates the first step of every epoch only (on a small VAE the
    checks cost ~8% of a step).

    ``jit`` traces the loss into a graph of torch ops (``make_fx``, one per batch shape) and
    runs the unvalidated steps from it, so the Pyro program's Python runs once, not per step.
    A trace freezes Python (a call counter driving an annealing schedule would freeze too),
    so it is off by default. A tensor read into Python (``.item()``) stops the trace and the
    model runs itself; validated steps, and under "auto" the 1st, 2nd, 4th, 8th, ... step,
    check the trace against the model from the same draws, and fall back if they differ.
    ``jit=True`` warns at any fallback, "auto" once some steps ran from the trace (``jit_note``).

    Parameters
    ----------
    model, guide : callable
        Pyro programs, called on a batch as ``model(*batch)``.
    elbo : str or pyro.infer.ELBO
        A name (see ``lvmkit.inference.elbo.ELBOS``) or any object with Pyro's
        ``differentiable_loss`` and ``loss`` methods (EM's M-step passes its own).
    num_samples : int
        Particles of a named objective.
    optimizer : {"adam", "adamw", "sgd"} or callable
        Or a factory ``(params, lr=lr) -> torch.optim.Optimizer`` such as
        ``torch.optim.RMSprop`` or ``functools.partial(torch.optim.SGD, momentum=0.5)``.
    lr : float
    device : str or torch.device
        "auto" (CUDA when present), "cpu", "cuda" or "cuda:N".
    jit : bool or "auto"
        Run unvalidated steps from a trace of the loss (above).

    Examples
    --------
    >>> import pyro, pyro.distributions as dist, torch
    >>> from lvmkit import Trainer
    >>> def model(x):
    ...     mu = pyro.param("mu", torch.tensor(0.0))
    ...     with pyro.plate("data", len(x)):
    ...         pyro.sample("x", dist.Normal(mu, 1.0), obs=x)
    >>> trainer = Trainer(model, lambda x: None, lr=0.1)
    >>> for batch in torch.full((3000,), 2.0).split(30):
    ...     loss = trainer.step(batch)  # nats per datapoint
    >>> round(trainer.evaluate(torch.full((10,), 2.0)), 2)  # -log N(2; 2, 1), no update
    0.92
    """

    def __init__(
        self,
        model,
        guide,
        *,
        elbo="elbo",
        num_samples: int = 1,
        optimizer: str | Callable = "adam",
        lr: float = 1e-3,
        device: str | torch.device = "auto",
        jit: bool | str = False,
    ):
        if isinstance(optimizer, str) and optimizer not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {optimizer!r}; choose one of {sorted(OPTIMIZERS)}, or pass "
                "a factory such as torch.optim.RMSprop"
            )
        if not callable(optimizer) and not isinstance(optimizer, str):
            raise TypeError(f"optimizer must be a name or a callable, got {optimizer!r}")
        check_number("lr", lr)
        if jit != "auto" and not isinstance(jit, bool):
            raise TypeError(f"jit must be True, False or 'auto', got {jit!r}")
        self.model, self.guide = model, guide
        self.loss = make_elbo(elbo, num_samples) if isinstance(elbo, str) else elbo
        self.elbo_name = elbo if isinstance(elbo, str) else None
        self.optimizer_choice, self.lr = optimizer, lr
        self.device = resolve_device(process_device(device))  # under torchrun: its own GPU
        self.group = group(self.device)  # a world of one outside torchrun
        self.stop_requested = False  # after a step: whether any process asked to stop
        self.last_count = 0  # after a step: the datapoints it took, over every process
        self.steps = 0  # optimizer steps taken (a checkpoint of some must hold their moments)
        self.unseeded: set[str] = set()  # latent sites drawn from the stream, not by position
        self.param_state = {"params": {}, "constraints": {}}  # this trainer's own param store
        self.param_names: list[str] = []
        self.optimizer: torch.optim.Optimizer | None = None
        quiet = jit == "auto"  # a fallback before any traced step is silent, and noted
        self.traced = TracedLoss(self.loss, model, guide, self._aside, quiet=quiet) if jit else None
        if quiet and isinstance(elbo, str) and elbo in UNTRACEABLE:  # stops a trace: not tried
            self.traced.stop(UNTRACEABLE[elbo])
        self._in_scope = False

    @property
    def jit(self) -> bool:
        """Whether steps run from a trace (False after a fallback)."""
        return self.traced is not None and self.traced.active

    @property
    def jit_note(self) -> str:
        """How the steps ran: "traced", or "not traced: WHY" (WHY: what stopped the trace)."""
        return "not traced: jit=False" if self.traced is None else self.traced.note

    @contextmanager
    def scope(self):
        """Run code against this trainer's parameters (and its device as the default device)."""
        if self._in_scope:  # already inside: nothing to swap
            yield
            return
        with pyro.get_param_store().scope(self.param_state), on_device(self.device):
            self._in_scope = True
            try:
                yield
            finally:
                self._in_scope = False

    def to_device(self, batch: tuple) -> tuple:
        """The batch's tensors on this trainer's device."""
        return tuple(t.to(self.device) if isinstance(t, Tensor) else t for t in batch)

    def init(self, *batch) -> None:
        """Create the parameters by running model and guide once, then build the optimizer.
        Module buffers (counters, running statistics) are left as they were."""
        for owner in modules_behind(self.model, self.guide):
            owner.to(self.device)
        batch = self.to_device(batch)
        # with gradients: TraceEnum_ELBO refuses a loss without a graph; Pyro logs its guess
        # of the plate nesting at INFO, which is noise here
        with self.scope(), self._buffers_kept(), quiet_logger("pyro"):
            self._check_guide_covers(batch)
            try:
                self.loss.differentiable_loss(self.model, self.guide, *batch)
            except ValueError as err:  # TraceEnum_ELBO's words for a loss with no parameters
                if "cannot be differentiated" not in str(err):
                    raise
            self._collect_params()
        if not self.param_names:
            raise ValueError(
                "the model and guide create no parameters: register nets with pyro.module or "
                "create pyro.param sites, otherwise there is nothing to fit"
            )
        # every process starts from rank 0's parameters and buffers, as DDP does
        broadcast([*self.leaves(), *self._buffers().values()], self.group)

    def _check_guide_covers(self, batch: tuple) -> None:
        """The objective's rules for this model and guide (``check_objective``), on one trace
        that also checks the programs themselves (``trace_once``)."""
        with seeded(None, self.device):  # a check: the fit's draws stay the same
            guide_tr, model_tr = trace_once(self.model, self.guide, *batch)
        check_objective(self.elbo_name, guide_tr, model_tr)

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
            choice = self.optimizer_choice
            factory = OPTIMIZERS[choice] if isinstance(choice, str) else choice
            self.optimizer = factory(params, lr=self.lr)
        else:
            self.optimizer.add_param_group({"params": params})

    def step(self, *batch, validate: bool = True, stop: bool = False, keys=None) -> float:
        """One gradient step on ``batch``; returns the loss in nats per datapoint.

        ``validate=True`` runs Pyro's checks, on the model itself; under ``jit`` it also checks
        the trace against the model, so run most steps with ``validate=False`` (as ``fit`` does)
        for them to run from the trace.

        ``keys`` (``draws.draw_keys``, as the loop gives them) draw the latents by the
        datapoints' positions instead of from the random stream.

        Under torchrun each process passes its shard of the batch: the gradients (the loss is a
        sum over datapoints, so their sum is the whole batch's gradient), the loss, the count
        and ``stop`` (afterwards ``stop_requested``: whether any process asked) are summed over
        the processes in one collective call, and every process takes the same step."""
        if self.optimizer is None:
            self.init(*batch)
        batch = self.to_device(batch)
        with self.scope():
            self.optimizer.zero_grad(set_to_none=True)
            if len(batch[0]) == 0:  # under torchrun, this process's share of a short last batch
                loss = torch.zeros((), device=self.device)
            else:
                loss = self._loss(batch, validate, keys)
                if not loss.requires_grad:
                    raise ValueError("the loss does not depend on any parameter; nothing to fit")
                loss.backward()
            total, n = self._share(loss.detach(), len(batch[0]), stop)
            value = self._check_finite(total, n)
            self.last_count = n  # datapoints in the step over every process
            self.optimizer.step()
            self.steps += 1
            self._collect_params()
        return value

    def _share(self, loss: Tensor, n: int, stop: bool) -> tuple[Tensor, int]:
        """Gradients, loss, count and stop votes summed over the processes in one call; a
        gradient no process has stays None, as it would in one process."""
        self.stop_requested = stop
        if not self.group.active:
            return loss, n
        leaves = self.leaves()
        had = torch.tensor([p.grad is not None for p in leaves], dtype=loss.dtype)
        for p in leaves:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        tail = torch.cat([loss.reshape(1), loss.new_tensor([n, float(stop)]), had.to(loss)])
        all_reduce_sum([p.grad for p in leaves] + [tail], self.group)
        for p, count in zip(leaves, tail[3:].tolist(), strict=True):
            if count == 0:
                p.grad = None
        self.stop_requested = bool(tail[2] > 0)
        return tail[0], int(tail[1])

    def _check_finite(self, loss: Tensor, n: int) -> float:
        """The loss per datapoint, after checking it and every gradient for NaN/inf (a finite
        loss can have a NaN gradient, e.g. sqrt at 0) in one fused pass and one device sync.
        The NonFiniteLossError names the loss or the first such parameter; nothing is updated."""
        named = [(n_, p.grad) for n_, p in zip(self.param_names, self.leaves(), strict=True)]
        named = [(name, g) for name, g in named if g is not None]
        norms = torch._foreach_norm([g for _, g in named]) if named else []
        total, *grad_norms = torch.stack([loss.detach().reshape(()), *norms]).tolist()
        value = total / n
        problem = None if math.isfinite(value) else f"loss is {value}"
        for (name, _), norm in zip(named, grad_norms, strict=True):
            if problem is None and not math.isfinite(norm):
                problem = f"the gradient of parameter {name!r} is not finite"
        if problem is not None:
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(problem)
        return value

    def _loss(self, batch: tuple, validate: bool, keys: Tensor | None) -> Tensor:
        """The step's loss: from the trace, or from the model (checked against the trace)."""
        trace = self.traced.get(self.leaves(), batch, keys) if self.jit else None
        extra = () if keys is None else (keys,)
        step = self.steps + 1  # "auto" also checks steps 1, 2, 4, 8, ...: log2(steps) checks
        checked = validate or (
            self.traced is not None and self.traced.quiet and not step & (step - 1)
        )
        if trace is not None and not checked:
            self.traced.traced_steps += 1
            return trace(*self.leaves(), *batch, *extra)
        expected = None if trace is None else self.traced.replay(trace, self.leaves(), batch, keys)
        draws = PositionDraws(keys) if keys is not None else nullcontext()
        with pyro.validation_enabled(validate), draws:
            loss = self.loss.differentiable_loss(self.model, self.guide, *batch)
        self.unseeded |= draws.unseeded if keys is not None else set()
        if expected is not None:
            self.traced.check(expected, loss)
        return loss

    def leaves(self) -> list[Tensor]:
        """The unconstrained parameters, the tensors the optimizer updates: a trace's inputs."""
        return [self.param_state["params"][n] for n in self.param_names]

    def evaluate(self, data, *, batch_size: int = 256, seed: int = 0) -> float:
        """Mean loss per datapoint over ``data`` (tensor, tuple or Dataset), no update.

        Draws by position (``draws``, with ``seed`` and an epoch of its own), so successive
        evaluations are comparable, any number of processes gives the same value, and the
        training stream is left untouched.
        """
        data = as_dataset(data, "data").to(self.device)
        if self.optimizer is None:
            self.init(*data.batch(torch.arange(min(batch_size, len(data)))))
        rows = shard(len(data), self.group)  # under torchrun each process scores its share
        total = 0.0
        with seeded(seed + self.group.rank, self.device), self.scope(), torch.no_grad():
            for start in range(rows.start, rows.stop, batch_size):
                index = torch.arange(start, min(start + batch_size, rows.stop))
                keys = draw_keys(seed, EVALUATION_EPOCH, 0, index.to(self.device))
                with drawn_by(keys):
                    batch = data.batch(index)
                with PositionDraws(keys):
                    total += self.loss.loss(self.model, self.guide, *batch)
        summed = torch.tensor(
            [total, rows.stop - rows.start], dtype=torch.float64, device=self.device
        )
        all_reduce_sum([summed], self.group)
        return float(summed[0] / summed[1])

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
        with seeded(None, self.device), self._buffers_kept():
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
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict, *, source: str = "checkpoint") -> None:
        """Copy saved parameters (in place) and optimizer state into this trainer."""
        missing = {"param_names", "params", "optimizer", "buffers"} - set(state)
        if missing:
            raise CheckpointError(
                f"{source} holds an incomplete trainer state (it lacks {sorted(missing)}); it "
                "was not written by lvmkit.fit: delete it or start over"
            )
        if set(state["params"]) != set(state["param_names"]):
            odd = sorted(set(state["params"]) ^ set(state["param_names"]))
            raise CheckpointError(
                f"{source}: its parameters and their list of names disagree on {odd}; the file "
                "was edited or written by other code: start over"
            )
        if state["param_names"] != self.param_names:
            missing = sorted(set(self.param_names) - set(state["param_names"]))
            extra = sorted(set(state["param_names"]) - set(self.param_names))
            raise CheckpointError(
                f"{source} does not fit this model/guide: it lacks parameters {missing} and has "
                f"unknown ones {extra}; resume with the model that wrote it, or start over"
            )
        self.load_params(state["params"], source=source)
        check_optimizer_state(self.optimizer, self.param_names, state, source)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(
                f"{source}: its optimizer state does not fit this fit's optimizer ({err}); "
                "resume with the settings that wrote it, or start over"
            ) from err
        self.steps = state.get("steps") or 0
        if not isinstance(state["buffers"], dict) or set(state["buffers"]) != set(self._buffers()):
            raise CheckpointError(f"{source} holds other module buffers than this model has")
        for name, value in state["buffers"].items():
            check_same(value, self._buffers()[name], f"{source}: buffer {name!r}")
        self.load_buffers(state["buffers"])

    def load_buffers(self, buffers: dict[str, Tensor]) -> None:
        """Copy saved module buffers (as ``state_dict()["buffers"]`` names them) in place."""
        current = self._buffers()
        with torch.no_grad():
            for name, value in buffers.items():
                current[name].copy_(value)

    def load_params(self, params: dict[str, Tensor], *, source: str = "checkpoint") -> None:
        """Copy unconstrained parameter values in place (shapes must match)."""
        current = self.param_state["params"]
        with torch.no_grad():
            for name, value in params.items():
                if not isinstance(value, Tensor):
                    raise CheckpointError(f"{source}: parameter {name!r} is not a tensor")
                if current[name].shape != value.shape or current[name].dtype != value.dtype:
                    raise CheckpointError(
                        f"{source}: parameter {name!r} is {tuple(value.shape)} {value.dtype}, the "
                        f"model's is {tuple(current[name].shape)} {current[name].dtype}; was it "
                        "built with another config?"
                    )
                current[name].copy_(value)
