"""EM, the one entry point: closed-form for a Gaussian mixture, generic for any Pyro model.

``em(gmm, x)`` with a :class:`~lvmkit.models.GaussianMixture` runs its exact E-step and
closed-form M-step (``mixture_em.fit_em``). ``em(model, data)`` with a Pyro model function
maximises the expected complete-data log-likelihood by gradient steps (the M-step), with an exact
(enumerated) or importance-sampled E-step.
"""

from __future__ import annotations

import math
import os
import time
import warnings

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import config_enumerate
from sklearn.exceptions import ConvergenceWarning
from torch import Tensor

from lvmkit.core.processes import all_reduce_sum, shard
from lvmkit.data import as_dataset
from lvmkit.inference.elbo import Objective
from lvmkit.inference.loop import FitResult
from lvmkit.inference.mixture_em import fit_em
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

    def __init__(self, e_step: str, num_samples: int, hard: bool, proposal, size: int = 0):
        super().__init__(num_samples)
        self.kind, self.hard = e_step, hard
        self.proposal = proposal  # a guide, or None to propose from the model's prior
        self.nesting: int | None = None
        self.values, self.weights = None, None
        self.adapted: dict[str, tuple[Tensor, Tensor]] = {}  # site -> loc, scale (size, ...)
        self.seen = torch.zeros(size, dtype=torch.bool)  # datapoints with an adapted proposal

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


def em(
    model,
    data,
    *,
    guide=None,
    e_step: str = "auto",
    num_samples: int = 64,
    hard: bool = False,
    max_iter: int = 100,
    tol: float = 1e-3,
    m_steps: int = 10,
    lr: float = 1e-2,
    batch_size: int | None = None,
    device: str = "auto",
    seed: int = 0,
    init: str | None = "kmeans",
    params=None,
) -> FitResult:
    """EM: theta = argmax (1/N) sum_n E_{z ~ p(z|x_n)}[log p_theta(x_n, z)].

    Both stop once the mean log-likelihood changes by less than ``tol`` between iterations (for
    an importance E-step, whose estimates are noisy, between the means of the last 5 iterations
    and the 5 before), or after ``max_iter`` iterations with a ConvergenceWarning
    (``result.converged`` says which). Generic EM's M-step is partial (``m_steps`` gradient
    steps), so a small change can also mean a slow M-step: raise ``lr`` or ``m_steps``, or lower
    ``tol``, to be sure.

    model: a :class:`~lvmkit.models.GaussianMixture` (the module itself) for closed-form EM on
        x (N, D), in x's dtype, started by ``init`` (scikit-learn's "kmeans", "k-means++",
        "random", "random_from_data", drawn with ``seed``; or None: from the mixture's current
        parameters); or any Pyro model function (``gmm.model`` too) for generic EM, which
        starts from the values of ``params`` (what ``lvmkit.fit`` or ``em`` returned, or a
        dict of ``pyro.param`` names to values), or, when None, from Pyro's global parameter
        store as it is (inside ``result.scope()``: the fit's values); a ``pyro.param`` that
        has no value there starts from its initial value, with a warning naming it when other
        values were given. Modules (``pyro.module``) start from their own weights.
    Generic EM: ``e_step="enum"`` sums over every value of the (discrete) latents, exactly;
    "importance" draws ``num_samples`` z per datapoint from ``guide`` (a fixed proposal: EM does
    not train it) or, without one, from the prior, and self-normalises the weights
    p(x, z) / q(z | x); "auto" picks "enum" when every latent site has enumerable support.
    ``hard=True`` keeps only the most probable z (hard EM). Each iteration runs one E-step per
    batch, then ``m_steps`` gradient steps (Adam, ``lr``) on the expected complete-data
    log-likelihood with that posterior held fixed. Every sample site must sit in
    ``pyro.plate("data", N)``.

    When to prefer it: when the E-step is exact (enumerable discrete latents of moderate
    cardinality) EM needs no guide and every iteration raises the likelihood. With continuous
    latents the importance E-step is only as good as its proposal, and the prior proposes poorly
    beyond a few latent dims (its log p(x) estimate then converges to a biased value); prefer
    ``fit`` with an amortized guide there, or pass a good ``guide``.

    Returns a FitResult whose ``losses`` are -log p(x) per datapoint at each iteration's E-step
    (exact for a mixture and for enumeration, an importance-sampled estimate otherwise).
    """
    if isinstance(model, GaussianMixture):
        if guide is not None or e_step != "auto" or hard or batch_size is not None:
            raise ValueError(
                "a GaussianMixture is fitted by closed-form EM, which takes no guide, e_step, hard "
                "or batch_size; for generic EM on the mixture pass its Pyro program, "
                "lvmkit.em(gmm.model, x)"
            )
        if params is not None:
            raise ValueError(
                "a GaussianMixture keeps its parameters in the module: to continue from them "
                "pass init=None instead of params"
            )
        x = torch.as_tensor(data, device=resolve_device(device))
        # in float64, as scikit-learn: float32 statistics lose tight clusters far from the mean
        result = fit_em(model, x.double(), tol=tol, max_iter=max_iter, seed=seed, init=init)
        model.to(dtype=x.dtype)
        return result
    if init != "kmeans":
        raise ValueError(
            "init chooses the start of a GaussianMixture's closed-form EM; generic EM starts "
            "from the model's parameters as they are: leave init out"
        )
    if e_step not in E_STEPS:
        raise ValueError(f"unknown e_step {e_step!r}; choose one of {list(E_STEPS)}")
    t0 = time.perf_counter()
    device = resolve_device(device)
    dataset = as_dataset(data, "data").to(device)
    pyro.set_rng_seed(seed + int(os.environ.get("RANK", "0")))  # each process its own draws
    first = dataset.batch(torch.arange(min(len(dataset), batch_size or len(dataset))))
    if e_step != "importance":  # "auto" picks; an explicit "enum" must be possible
        picked = _pick_e_step(model, first)
        if e_step == "enum" and picked != "enum":
            raise ValueError(
                "e_step='enum' needs every latent site to have enumerable (discrete, finite) "
                "support; this model has a continuous one: use e_step='importance' or 'auto'"
            )
        e_step = picked
    objective = ExpectedLogJoint(e_step, num_samples, hard, guide, size=len(dataset))
    trainer = Trainer(model, guide or (lambda *a: None), elbo=objective, lr=lr, device=device)
    trainer.param_state = start = starting_params(params)  # copies: the user's stay as they are
    g = trainer.group  # under torchrun each process takes its share of every batch
    order = torch.Generator().manual_seed(seed)  # one batch order, the same on every process
    batch_size = batch_size or len(dataset)
    losses, converged = [], False
    window = 1 if e_step == "enum" else IMPORTANCE_WINDOW
    with trainer.scope():
        with torch.no_grad():  # parameters must exist before the first E-step
            objective.e_step(model, *first)
        fresh = sorted(set(pyro.get_param_store().keys()) - set(start["params"]))
        fresh = [n for n in fresh if MODULE_SEPARATOR not in n]
        if start["params"] and fresh:
            warnings.warn(
                f"pyro.param site(s) {fresh} had no value in the parameters EM started from and "
                "were initialised afresh: pass params= with values for them (what lvmkit.fit "
                "returned holds them all), or run inside that result's scope()",
                stacklevel=2,
            )
        for _ in range(max_iter):
            total = 0.0
            # one batch keeps the data's order: a per-datapoint guide may rely on it
            single = batch_size >= len(dataset)
            perm = (
                torch.arange(len(dataset))
                if single
                else torch.randperm(len(dataset), generator=order)
            )
            for start in range(0, len(dataset), batch_size):
                index = perm[start : start + batch_size]
                index = index[shard(len(index), g)].to(device)
                batch = dataset.batch(index)
                if len(index):  # under torchrun a short last batch leaves some with none
                    with torch.no_grad():
                        total += objective.e_step(model, *batch, index=index) * len(batch[0])
                for _ in range(m_steps):
                    trainer.step(*batch)
            summed = torch.tensor([total], dtype=torch.float64, device=device)
            all_reduce_sum([summed], g)
            losses.append(-float(summed[0]) / len(dataset))
            if _settled(losses, window, tol):
                converged = True
                break
    if not converged:
        change = abs(losses[-1] - losses[-2]) if len(losses) > 1 else "n/a"
        warnings.warn(
            f"EM did not converge in {max_iter} iterations (last change in mean log p(x) "
            f"{change} >= tol={tol}); raise max_iter or lr, loosen tol, or, for an importance "
            "E-step, raise num_samples (its estimate is noisy)",
            ConvergenceWarning,
            stacklevel=2,
        )
    return FitResult(
        losses=losses,
        val_losses=[],
        best_epoch=None,
        params_epoch=len(losses),
        elapsed=time.perf_counter() - t0,
        device=str(device),
        params=trainer.params(),
        param_state=trainer.param_state,
        method="em",
        e_step=e_step,
        converged=converged,
    )
