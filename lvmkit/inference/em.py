"""EM, the one entry point: closed-form for a Gaussian mixture, generic for any Pyro model; both
are algorithms of the loop (``loop.run``), so they checkpoint and resume as SVI does.

``em(gmm, x)`` with a :class:`~lvmkit.models.GaussianMixture` runs its exact E-step and
closed-form M-step (``mixture_em.MixtureEM``). ``em(model, data)`` with a Pyro model function
maximises the expected complete-data log-likelihood by gradient steps (the M-step), with an exact
(enumerated) or importance-sampled E-step (``GenericEM``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import config_enumerate
from torch import Tensor

from lvmkit.core.checks import check_choice, check_count, check_flag, check_number
from lvmkit.core.files import CheckpointError
from lvmkit.core.processes import all_reduce_sum
from lvmkit.core.rng import drawn_by
from lvmkit.inference.draws import PositionDraws
from lvmkit.inference.elbo import Objective
from lvmkit.inference.loop import Algorithm, FitResult, run
from lvmkit.inference.mixture_em import MixtureEM
from lvmkit.inference.programs import (
    DATA_PLATE,
    MODULE_SEPARATOR,
    is_latent,
    max_plate_nesting,
    param_state,
    particle_traces,
    per_datapoint,
    resolve_device,
)
from lvmkit.inference.resume import check_same
from lvmkit.inference.tracking import Logger
from lvmkit.inference.trainer import Trainer
from lvmkit.models.gmm import GaussianMixture

E_STEPS = ("auto", "enum", "importance")
# An importance E-step's log p(x) estimate is noisy: it has settled when the mean of its last
# IMPORTANCE_WINDOW iterations is within tol of the mean of the ones before (an exact E-step:
# the last iteration against the one before).
IMPORTANCE_WINDOW = 5


def _settled(losses: list[float], window: int, tol: float) -> bool:
    if len(losses) < 2 * window:
        return False
    last, before = losses[-window:], losses[-2 * window : -window]
    return abs(sum(last) - sum(before)) / window < tol


class ExpectedLogJoint(Objective):
    """Q(theta) = sum_n sum_k w_nk log p_theta(x_n, z_nk) with the E-step's (z, w) held fixed;
    ``differentiable_loss`` returns -Q, so a Trainer's gradient steps are the M-step.

    Without a guide the first importance E-step proposes from the prior, which in more than a
    few latent dims puts almost no draw where p(z | x) is. Each later one reuses what the last
    found: a diagonal Gaussian per datapoint, moment-matched to its weighted draws and widened
    1.5x (adaptive importance sampling), for real-valued latents in the data plate alone.
    """

    WIDEN = 1.5  # the adapted proposal's scale over the posterior's: heavier tails are safer

    def __init__(self, e_step: str, num_samples: int, hard: bool, proposal):
        super().__init__(num_samples)
        self.kind, self.hard = e_step, hard
        self.proposal = proposal  # a guide, or None to propose from the model's prior
        self.nesting: int | None = None
        self.values, self.weights = None, None
        self.adapted: dict[str, tuple[Tensor, Tensor]] = {}  # site -> loc, scale (size, ...)
        # datapoints with an adapted proposal; GenericEM.setup sizes it to the dataset
        self.seen = torch.zeros(0, dtype=torch.bool)

    def _enumerated_log_joint(self, model, args) -> Tensor:
        """log p(x_n, z = e) for every joint value e of the discrete latents: (E, N)."""
        enum_model = poutine.enum(
            config_enumerate(model, default="parallel"), first_available_dim=-self.nesting - 2
        )
        joint = per_datapoint(poutine.trace(enum_model).get_trace(*args), self.nesting)
        return joint.reshape(-1, joint.shape[-1])  # (E..., 1, N) -> (E, N)

    def e_step(self, model, *args, index: Tensor | None = None) -> float:
        """Fix the posterior weights for this batch (datapoints ``index`` of the dataset);
        return the mean log p(x) estimate."""
        if self.nesting is None:
            self.nesting = max_plate_nesting(
                model, self.proposal or (lambda *a: None), *args, check_guide=bool(self.proposal)
            )
        if self.kind == "enum":
            lj = self._enumerated_log_joint(model, args)  # (E, N)
            self.values = None
            log_px = torch.logsumexp(lj, 0)
        else:
            k = self.num_samples
            if self.proposal is not None:  # latents it leaves to enumeration are summed
                q_tr, m_tr = particle_traces(
                    model, self.proposal, args, num_samples=k, plate_nesting=self.nesting
                )
                log_q = per_datapoint(q_tr, self.nesting)
            elif index is not None and bool(self.seen[index.cpu()].all()):  # reuse: adapted q
                q_tr, m_tr = particle_traces(
                    model, self._adapted_guide(index), args, num_samples=k, plate_nesting=1
                )
                log_q = per_datapoint(q_tr, self.nesting)
            else:  # the prior proposes: the weights are the likelihood alone
                with pyro.plate("particles", k, dim=-self.nesting - 1):
                    m_tr = q_tr = poutine.trace(model).get_trace(*args)
                log_q = per_datapoint(q_tr, self.nesting, latent_only=True)
            lj = self._flat(per_datapoint(m_tr, self.nesting) - log_q)  # log weights (E*K, N)
            self.values = {
                name: site["value"] for name, site in q_tr.nodes.items() if is_latent(site)
            }
            log_px = torch.logsumexp(lj, 0) - math.log(k)
            if self.proposal is None and index is not None:
                self._adapt(q_tr, (lj - torch.logsumexp(lj, 0)).exp(), index)
        w = (lj - torch.logsumexp(lj, 0)).exp()  # posterior weights, each column sums to 1
        if self.hard:  # hard EM: all weight on the most probable z
            w = torch.nn.functional.one_hot(w.argmax(0), len(w)).T.to(w)
        self.weights = w.detach()
        return float(log_px.mean())

    def differentiable_loss(self, model, guide, *args) -> Tensor:
        if self.kind == "enum":
            lj = self._enumerated_log_joint(model, args)
        else:
            conditioned = poutine.condition(model, data=self.values)
            if self.proposal is not None:  # as in the E-step: what the guide left, enumerated
                conditioned = poutine.enum(conditioned, first_available_dim=-self.nesting - 2)
            with pyro.plate("particles", self.num_samples, dim=-self.nesting - 1):
                tr = poutine.trace(conditioned).get_trace(*args)
            lj = self._flat(per_datapoint(tr, self.nesting))
        return -(self.weights * lj).sum()

    def _adapt(self, q_tr, w: Tensor, index: Tensor) -> None:
        """Moment-match next iteration's proposal to these weighted draws (K, N)."""
        latents = {n: s for n, s in q_tr.nodes.items() if is_latent(s)}
        if self.nesting != 1 or not all(_real_in_data_plate(s) for s in latents.values()):
            return  # the prior keeps proposing
        for name, site in latents.items():
            value = site["value"]  # (K, N, *event)
            wk = w.reshape(w.shape + (1,) * (value.dim() - 2))
            loc = (wk * value).sum(0)
            scale = ((wk * (value - loc) ** 2).sum(0).sqrt() * self.WIDEN).clamp_min(1e-3)
            if name not in self.adapted:
                size = (len(self.seen), *loc.shape[1:])
                self.adapted[name] = (loc.new_zeros(size), loc.new_ones(size))
            self.adapted[name][0][index], self.adapted[name][1][index] = loc, scale
        self.seen[index.cpu()] = True

    def _adapted_guide(self, index: Tensor):
        """The proposal the last E-step left for datapoints ``index``, as a guide."""

        def guide(*args):
            with pyro.plate(DATA_PLATE, len(index), dim=-1):
                for name, (loc, scale) in self.adapted.items():
                    d = dist.Normal(loc[index], scale[index])
                    pyro.sample(name, d.to_event(loc.dim() - 1))

        return guide

    def _flat(self, log_joint: Tensor) -> Tensor:
        """(E..., K or 1, N) -> (E * K, N): every (enumerated value, particle) a weighted z."""
        lead = log_joint.shape[:-2]
        return log_joint.expand(*lead, self.num_samples, log_joint.shape[-1]).reshape(
            -1, log_joint.shape[-1]
        )


def _real_in_data_plate(site) -> bool:
    """A real-valued latent whose only plate is the data plate (and the particles')."""
    support = site["fn"].support
    real = getattr(support, "base_constraint", support) is constraints.real
    plates = {f.name for f in site["cond_indep_stack"] if f.vectorized}
    return real and plates <= {DATA_PLATE, "particles"}


def _pick_e_step(model, first_batch) -> str:
    """The E-step "auto" means: "enum" when every latent site has enumerable support, else
    "importance"."""
    with torch.no_grad(), poutine.block():
        tr = poutine.trace(model).get_trace(*first_batch)
    latent = [s for s in tr.nodes.values() if is_latent(s)]
    if latent and all(s["fn"].has_enumerate_support for s in latent):
        return "enum"
    return "importance"


def starting_params(params=None) -> dict:
    """A parameter-store state to start from: copies of the ``pyro.param`` values of ``params``
    (see ``fitted_params``) or, when None, of Pyro's global store. Module weights are left
    out: ``pyro.module`` registers the module's own tensors, which EM trains in place."""
    state = param_state(params) if params is not None else pyro.get_param_store().get_state()
    values = {
        n: v.detach().clone().requires_grad_()
        for n, v in state["params"].items()
        if MODULE_SEPARATOR not in n
    }
    return {"params": values, "constraints": {n: state["constraints"][n] for n in values}}


class GenericEM(Algorithm):
    """EM for any Pyro model: per batch, an E-step (``ExpectedLogJoint.e_step``) then
    ``m_steps`` gradient steps (Adam, ``lr``) on the expected complete-data log-likelihood.
    The epoch's loss is -log p(x) per datapoint, from the E-steps; it has settled when it
    changes by less than ``tol`` (an importance E-step: its mean over IMPORTANCE_WINDOW
    iterations against the window before).

    Parameters
    ----------
    model : callable
    guide, e_step, num_samples, hard, tol, m_steps, lr, device, params
        As for ``em``.
    """

    name = "em"
    honours = frozenset({"batch_size"})
    converges = True
    advice = ("raise max_iter or lr, loosen tol, or, for an importance E-step, raise "
              "num_samples (its estimate is noisy)")  # fmt: skip

    def __init__(self, model, *, guide=None, e_step="auto", num_samples=64, hard=False,
                 tol=1e-3, m_steps=10, lr=1e-2, device="auto", params=None):  # fmt: skip
        check_choice("e_step", e_step, E_STEPS)
        self.requested, self.hard = e_step, check_flag("hard", hard)
        self.tol = check_number("tol", tol, positive=False)
        self.m_steps, self.num_samples = check_count("m_steps", m_steps), num_samples
        self.model, self.params_given = model, params
        self.objective = ExpectedLogJoint(e_step, check_count("num_samples", num_samples),
                                          hard, guide)  # fmt: skip
        self.trainer = Trainer(model, guide or (lambda *a: None), elbo=self.objective, lr=lr,
                               device=device)  # fmt: skip
        self.device, self.group = self.trainer.device, self.trainer.group
        self.total = 0.0  # the epoch's summed log p(x) estimates, so far (this process's rows)
        self.unseeded: set[str] = set()  # latent sites the E-step drew from the stream

    @property
    def param_state(self) -> dict:
        return self.trainer.param_state

    def settings(self) -> dict:
        return {"e_step": self.requested, "num_samples": self.num_samples, "hard": self.hard,
                "tol": self.tol, "m_steps": self.m_steps, "lr": self.trainer.lr}  # fmt: skip

    def setup(self, data, batch_size: int) -> None:
        """Pick the E-step, start from the given parameters, run a first E-step (parameters
        must exist before it) and build the optimizer."""
        self.data, obj = data, self.objective
        first = data.batch(torch.arange(min(len(data), batch_size), device=self.device))
        if self.requested != "importance":  # "auto" picks; an explicit "enum" must be possible
            picked = _pick_e_step(self.model, first)
            if self.requested == "enum" and picked != "enum":
                raise ValueError(
                    "e_step='enum' needs every latent site to have enumerable (discrete, "
                    "finite) support; this model has a continuous one: use e_step='importance'"
                    " or 'auto'"
                )
            obj.kind = picked
        obj.seen = torch.zeros(len(data), dtype=torch.bool)
        self.trainer.param_state = start = starting_params(self.params_given)  # copies
        with self.trainer.scope():
            with torch.no_grad():
                obj.e_step(self.model, *first)
            fresh = sorted(set(pyro.get_param_store().keys()) - set(start["params"]))
        fresh = [n for n in fresh if MODULE_SEPARATOR not in n]
        if start["params"] and fresh:
            warnings.warn(
                f"pyro.param site(s) {fresh} had no value in the parameters EM started from and "
                "were initialised afresh: pass params= with values for them (what lvmkit.fit "
                "returned holds them all), or run inside that result's scope()",
                stacklevel=4,
            )
        self.trainer.init(*first)

    def step(self, index: Tensor, *, keys: Tensor, first: bool, stop: bool) -> None:
        with drawn_by(keys):
            batch = self.data.batch(index)
        if len(index):  # under torchrun a short last batch leaves some with none
            with self.trainer.scope(), torch.no_grad(), PositionDraws(keys) as draws:
                e = self.objective.e_step(self.model, *batch, index=index)
            self.unseeded |= draws.unseeded
            self.total += e * len(batch[0])
        for i in range(self.m_steps):
            self.trainer.step(*batch, stop=stop and i == self.m_steps - 1)
        self.stop_requested = self.trainer.stop_requested

    def end_epoch(self, losses: list[float]) -> tuple[float, bool]:
        summed = torch.tensor([self.total], dtype=torch.float64, device=self.device)
        all_reduce_sum([summed], self.group)
        self.total = 0.0
        loss = -float(summed[0]) / len(self.data)
        window = 1 if self.objective.kind == "enum" else IMPORTANCE_WINDOW
        return loss, _settled([*losses, loss], window, self.tol)

    def state_dict(self) -> dict:
        obj = self.objective
        return {**self.trainer.state_dict(), "total": self.total, "seen": obj.seen,
                "adapted": {k: list(v) for k, v in obj.adapted.items()}}  # fmt: skip

    def load_state_dict(self, state: dict, *, source: str) -> None:
        self.trainer.load_state_dict(state, source=source)
        obj = self.objective
        check_same(state["seen"], obj.seen, f"{source}: its record of datapoints seen")
        if not isinstance(state["total"], float | int):
            raise CheckpointError(f"{source}: its running total {state['total']!r} is no number")
        obj.seen = state["seen"].clone()
        obj.adapted = {k: (loc.to(self.device), scale.to(self.device))
                       for k, (loc, scale) in state["adapted"].items()}  # fmt: skip
        self.total = state["total"]

    def params(self) -> dict[str, Tensor]:
        return self.trainer.params()

    def info(self) -> dict:
        return {"e_step": self.objective.kind}


def em(
    model,
    data,
    *,
    guide=None,
    e_step: str | None = None,
    num_samples: int | None = None,
    hard: bool | None = None,
    max_iter: int = 100,
    tol: float = 1e-3,
    m_steps: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    seed: int = 0,
    init: str | None = "kmeans",
    params=None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: list[Callable[[dict], None]] = (),
    loggers: list[Logger] = (),
) -> FitResult:
    """EM: theta = argmax (1/N) sum_n E_{z ~ p(z|x_n)}[log p_theta(x_n, z)].

    Closed-form EM for a :class:`~lvmkit.models.GaussianMixture` (the module itself), or
    generic EM for any Pyro model function (``gmm.model`` too). Both stop once the mean
    log-likelihood changes by less than ``tol`` between iterations (for an importance E-step,
    whose estimates are noisy, between the means of the last 5 iterations and the 5 before), or
    after ``max_iter`` iterations with a ConvergenceWarning (``result.converged`` says which).
    Generic EM's M-step is partial (``m_steps`` gradient steps), so a small change can also
    mean a slow M-step: raise ``lr`` or ``m_steps``, or lower ``tol``, to be sure.

    Generic EM runs one E-step per batch of ``batch_size``, then ``m_steps`` gradient steps
    (Adam) on the expected complete-data log-likelihood with that posterior held fixed. Every
    sample site must sit in ``pyro.plate("data", N)``. The settings of one kind of EM given to
    the other are refused.

    When to prefer it: when the E-step is exact (enumerable discrete latents of moderate
    cardinality) EM needs no guide and every iteration raises the likelihood. With continuous
    latents the importance E-step is only as good as its proposal, and the prior proposes poorly
    beyond a few latent dims (its log p(x) estimate then converges to a biased value); prefer
    ``fit`` with an amortized guide there, or pass a good ``guide``.

    Parameters
    ----------
    model : GaussianMixture or callable
        The mixture module (closed-form EM on x (N, D), in x's dtype), or a Pyro model
        function (generic EM).
    data : Tensor of shape (N, ...), tuple of such tensors, or Dataset
    guide : callable, optional
        Generic EM's proposal for an importance E-step (fixed: EM does not train it); without
        one, the prior.
    e_step : {"auto", "enum", "importance"}, optional
        "enum" sums over every value of the (discrete) latents, exactly; "importance" draws
        ``num_samples`` z per datapoint and self-normalises the weights p(x, z) / q(z | x);
        "auto" (the default) picks "enum" when every latent site has enumerable support.
    num_samples : int, optional
        Draws per datapoint of an importance E-step (default 64).
    hard : bool, optional
        Keep only the most probable z (hard EM).
    max_iter : int
        Iterations at most.
    tol : float
        The change in mean log-likelihood that counts as converged.
    m_steps : int, optional
        Gradient steps per M-step (default 10).
    lr : float, optional
        The M-step's Adam learning rate (default 0.01).
    batch_size : int, optional
        Datapoints per E-step (default: all of them).
    device : str
        "auto", "cpu", "cuda" or "cuda:N".
    seed : int
        Seeds the draws (and closed-form EM's ``init``).
    init : {"kmeans", "k-means++", "random", "random_from_data"} or None
        Closed-form EM's start (scikit-learn's); None: the mixture's current parameters.
    params : FitResult or dict, optional
        Generic EM's start: what ``fit`` or ``em`` returned, or a dict of ``pyro.param`` names
        to values; None: Pyro's global parameter store as it is (inside ``result.scope()``:
        the fit's values). A ``pyro.param`` with no value there starts from its initial value,
        with a warning naming it when other values were given. Modules (``pyro.module``)
        start from their own weights.
    checkpoint_dir, resume, overwrite, progress, callbacks, loggers
        As for ``fit``: both kinds write a checkpoint every iteration and resume exactly.

    Returns
    -------
    FitResult
        ``losses``: -log p(x) per datapoint at each iteration's E-step (exact for a mixture
        and for enumeration, an importance-sampled estimate otherwise); ``info["e_step"]``:
        "closed-form", "enum" or "importance".
    """
    check_count("max_iter", max_iter)
    generic = dict(guide=guide, e_step=e_step, num_samples=num_samples, hard=hard,
                   m_steps=m_steps, lr=lr, batch_size=batch_size, params=params)  # fmt: skip
    loop = dict(epochs=max_iter, seed=seed, checkpoint_dir=checkpoint_dir, resume=resume,
                overwrite=overwrite, progress=progress, callbacks=callbacks,
                loggers=loggers)  # fmt: skip
    if isinstance(model, GaussianMixture):
        _refuse("closed-form EM of a GaussianMixture", generic, "lvmkit.em(gmm.model, x)")
        x = torch.as_tensor(data, device=resolve_device(device))
        if not x.is_floating_point():
            raise TypeError(f"EM fits floating-point data, got {x.dtype}: pass x.double()")
        # in float64, as scikit-learn: float32 statistics lose tight clusters far from the mean
        algorithm = MixtureEM(model, device=x.device, tol=tol, init=init, seed=seed)
        result = run(algorithm, x.double(), **loop)
        model.to(dtype=x.dtype)
        return result
    _refuse("generic EM", {"init": None if init == "kmeans" else init}, "a GaussianMixture")
    given = {k: v for k, v in generic.items() if v is not None and k != "batch_size"}
    algorithm = GenericEM(model, tol=tol, device=device, **given)
    return run(algorithm, data, batch_size=batch_size, **loop)


def _refuse(what: str, settings: dict, other: str) -> None:
    """ValueError naming the first setting given that ``what`` does not use."""
    for name, value in settings.items():
        if value is not None:
            raise ValueError(
                f"{what} does not use {name} (it would be ignored): leave it out, or pass "
                f"{other} for the EM that does"
            )
