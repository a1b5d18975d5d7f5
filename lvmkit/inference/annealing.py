"""Annealed importance sampling (Neal 2001) and bidirectional Monte Carlo (Grosse et al. 2015)
for any Pyro model whose latents are continuous or summed out by enumeration.

AIS anneals from a proposal q(z|x) (the guide, or the model's prior when there is none) to the
posterior through f_t(z) = q(z|x)^(1 - b_t) p(x, z)^b_t, 0 = b_0 < ... < b_T = 1, moving each
chain with HMC in the latents' unconstrained coordinates; each chain's log weight is
sum_t (b_t - b_(t-1)) [log p(x, z_(t-1)) - log q(z_(t-1)|x)], and log p(x) ~= log mean_k w_k,
a stochastic lower bound whose gap closes as T grows. Reverse AIS (b from 1 to 0), started from
an exact posterior draw, gives a stochastic upper bound: BDMC runs both on data simulated from
the model, whose latents are such draws, so the gap between them says how many temperatures
the model needs.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor

from lvmkit.core.checks import check_count, check_particles
from lvmkit.inference.likelihood import (
    LogLikelihood,
    estimate_per_batch,
    log_mean_weight,
)
from lvmkit.inference.programs import (
    DATA_PLATE,
    batch_rows,
    is_latent,
    per_datapoint,
    sum_out_enumerated,
)

TARGET_ACCEPT = 0.65  # HMC's acceptance rate the step size adapts towards (Wu et al. 2017)
MAX_STEPS = 10**7  # temperatures of one AIS path: its schedules take 8 bytes each per datapoint
PILOT_CHAINS = 4  # chains per datapoint of the run that tunes the step sizes


def sigmoid_schedule(steps: int, sharpness: float = 4.0) -> Tensor:
    """Inverse temperatures 0 = b_0 < ... < b_steps = 1, (steps + 1,) float64: a rescaled
    sigmoid, denser near both ends where the path changes fastest (Wu et al. 2017)."""
    s = torch.sigmoid(torch.linspace(-sharpness, sharpness, steps + 1, dtype=torch.float64))
    return (s - s[0]) / (s[-1] - s[0])


@dataclass
class _Latent:
    """A continuous latent site as the sampler sees it: moved in unconstrained coordinates."""

    transform: object  # unconstrained -> the site's support
    data_dim: int  # the data plate's dim in the site's batch shape (negative)
    event_dim: int  # event dims of the unconstrained value


class AnnealingPath:
    """The path from q(z|x) (or p(z)) to p(x, z) for one batch, K chains per datapoint: the
    log densities of each chain (K, N) at latents given in unconstrained coordinates.

    ``start`` are the latents' first values, drawn from the proposal: name -> (K, ..., N, ...).
    """

    def __init__(self, model, guide, args: tuple, *, num_chains: int, plate_nesting: int):
        self.model, self.guide, self.args = model, guide, args
        self.k, self.nesting = num_chains, plate_nesting
        check_particles(num_chains, batch_rows(args))
        with pyro.plate("particles", num_chains, dim=-plate_nesting - 1):
            proposal = poutine.trace(guide or model).get_trace(*args)
        self.latents, self.start = {}, {}
        for name, site in proposal.nodes.items():
            if not is_latent(site):
                continue
            support = site["fn"].support
            if support.is_discrete:
                if guide is None and site["infer"].get("enumerate") == "parallel":
                    continue  # summed out of both densities
                where = "the guide samples" if guide is not None else "the model samples"
                raise ValueError(
                    f"latent site {name!r} is discrete ({type(site['fn']).__name__}), and "
                    f"{where} it: AIS moves continuous latents only. Mark it "
                    "infer={'enumerate': 'parallel'} in the model (and leave it out of the "
                    "guide) so that it is summed out exactly"
                )
            transform = biject_to(support)
            data_dim = next(f.dim for f in site["cond_indep_stack"] if f.name == DATA_PLATE)
            start = transform.inv(site["value"]).detach()
            event_dim = start.dim() - len(site["fn"].batch_shape)
            self.latents[name] = _Latent(transform, data_dim, event_dim)
            self.start[name] = start
        # A guide with one latent site draws it from a distribution that no other latent can
        # change: kept, rather than the guide rerun (its encoder) at every density evaluation.
        sites = prune_subsample_sites(proposal).nodes.values()
        guided = [site for site in sites if site["type"] == "sample"]
        one = guide is not None and len(guided) == 1 and is_latent(guided[0])
        self.fixed_q = guided[0] if one else None
        if not self.latents:
            raise ValueError(
                "the model has no continuous latent to anneal over: its log p(x) is exact "
                "(every latent summed out); compute it with lvmkit.log_likelihood(model, guide, "
                "data, num_samples=1)"
            )

    def _per_chain(self, t: Tensor, latent: _Latent) -> Tensor:
        """A site-shaped tensor summed to one number per chain: (K, N)."""
        if latent.event_dim:
            t = t.sum(tuple(range(-latent.event_dim, 0)))
        b = t.dim()
        keep = (b - self.nesting - 1, b + latent.data_dim)  # the particle and data axes
        others = [d for d in range(b) if d not in keep]
        if others:
            t = t.sum(others, keepdim=True)
        return t.reshape(t.shape[keep[0]], t.shape[keep[1]]).expand(self.k, -1)

    def per_chain(self, tensors: dict[str, Tensor]) -> Tensor:
        """Summed over every site, one number per chain: (K, N)."""
        return sum(self._per_chain(t, self.latents[n]) for n, t in tensors.items())

    def chain_view(self, t: Tensor, like: Tensor, name: str) -> Tensor:
        """A per-datapoint (N,) or per-chain (K, N) tensor shaped to broadcast against site
        ``name``'s value ``like``."""
        latent = self.latents[name]
        b = like.dim() - latent.event_dim
        shape = [1] * like.dim()
        shape[b + latent.data_dim] = t.shape[-1]
        if t.dim() == 2:
            shape[b - self.nesting - 1] = t.shape[0]
        return t.reshape(shape)

    def _values(self, u: dict[str, Tensor]) -> poutine.Trace:
        """A trace holding the latents' values z(u), for model and guide to replay."""
        values = poutine.Trace()
        for name, latent in self.latents.items():
            z = latent.transform(u[name])
            values.add_node(name, type="sample", value=z, is_observed=False, infer={})
        return values

    def _fixed_q_at(self, values: poutine.Trace) -> poutine.Trace:
        """The guide's trace at ``values``, from its one latent site's kept distribution."""
        site = self.fixed_q
        keep = {k: v for k, v in site.items() if k not in ("log_prob", "unscaled_log_prob")}
        trace = poutine.Trace()
        trace.add_node(site["name"], **(keep | {"value": values.nodes[site["name"]]["value"]}))
        return trace

    def densities(self, u: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """log p(x, z), log q(z|x) and the log Jacobian of z(u), each (K, N), at the latents
        ``u`` in unconstrained coordinates (discrete latents marked for enumeration summed
        out of both densities)."""
        values = self._values(u)
        log_jac = 0.0
        for name, latent in self.latents.items():
            z = values.nodes[name]["value"]
            ladj = latent.transform.log_abs_det_jacobian(u[name], z)
            event_dim = ladj.dim() - (u[name].dim() - latent.event_dim)  # any left unsummed
            log_jac = log_jac + self._per_chain(ladj, _Latent(None, latent.data_dim, event_dim))
        first_enum = -self.nesting - 2
        with pyro.plate("particles", self.k, dim=-self.nesting - 1):
            model = poutine.enum(poutine.replay(self.model, trace=values), first_enum)
            model_tr = poutine.trace(model).get_trace(*self.args)
            if self.fixed_q is not None:
                guide_tr = self._fixed_q_at(values)
            elif self.guide is not None:
                guide_tr = poutine.trace(poutine.replay(self.guide, trace=values))
                guide_tr = guide_tr.get_trace(*self.args)
        log_p = sum_out_enumerated(per_datapoint(model_tr, self.nesting))
        if self.guide is None:  # the prior: the latents' own terms of the model
            log_q = per_datapoint(model_tr, self.nesting, latent_only=True)
            log_q = sum_out_enumerated(log_q)
        else:
            log_q = per_datapoint(guide_tr, self.nesting)
        log_jac = torch.as_tensor(log_jac).to(log_p)
        return tuple(t.expand(self.k, -1) for t in (log_p, log_q, log_jac.expand_as(log_p)))

    def target(self, u: dict[str, Tensor], beta: float):
        """At ``u``: log f_beta (K, N), log p - log q (K, N), and the gradient of log f_beta
        with respect to each latent (a dict shaped like ``u``)."""
        with torch.enable_grad():
            u = {n: v.detach().requires_grad_() for n, v in u.items()}
            log_p, log_q, log_jac = self.densities(u)
            log_f = beta * log_p + (1 - beta) * log_q + log_jac
            grads = torch.autograd.grad(log_f.sum(), list(u.values()), allow_unused=True)
        grads = {
            n: torch.zeros_like(v) if g is None else g
            for (n, v), g in zip(u.items(), grads, strict=True)
        }
        return log_f.detach(), (log_p - log_q).detach(), grads

    def nonfinite_site(self, u: dict[str, Tensor]) -> str:
        """The first site whose log density is not finite at ``u``, for an error message."""
        values = self._values(u)
        with pyro.plate("particles", self.k, dim=-self.nesting - 1):
            traces = [poutine.trace(poutine.replay(self.model, trace=values)).get_trace(*self.args)]
            if self.guide is not None:
                guide = poutine.replay(self.guide, trace=values)
                traces.append(poutine.trace(guide).get_trace(*self.args))
        for where, tr in zip(("model", "guide"), traces, strict=False):
            for name, site in tr.nodes.items():
                if (
                    site["type"] == "sample"
                    and not torch.isfinite(site["fn"].log_prob(site["value"])).all()
                ):
                    return f"site {name!r} of the {where}"
        return "no single site (the sum over sites)"


def anneal(
    path: AnnealingPath,
    u: dict[str, Tensor],
    betas: Tensor,
    *,
    leapfrog_steps: int,
    step_sizes: float | Tensor,
    tick=lambda n: None,
) -> tuple[Tensor, Tensor]:
    """Run the chains from ``u`` along ``betas`` (b_0, ..., b_T): each step adds
    (b_t - b_(t-1)) [log p - log q] at the current latents to the log weights, then (but for the
    last) moves them by one HMC transition leaving f_(b_t) invariant: ``leapfrog_steps``
    leapfrog steps with a fresh standard-normal momentum.

    step_sizes: a (T - 1, N) schedule, one step size per transition and datapoint, held fixed
        (as AIS's weights need: a step size chosen from the chains' own states would break
        each transition's invariance); or a number to start from and adapt, multiplying the
        step size after every transition by exp(rate - 0.65), rate being the datapoint's
        acceptance rate over its chains: what a pilot run does to make a schedule.
    Returns the log weights (K, N), which forward (0 -> 1) estimate log p(x) and reverse
    (1 -> 0) -log p(x), and the step sizes used (T - 1, N).
    """
    adapt = not torch.is_tensor(step_sizes)
    used, lw = [], None
    for t in range(1, len(betas)):
        beta = float(betas[t])
        # The first evaluation checks the data and the start against their supports; later
        # ones see the same data at moved latents, and skip Pyro's checks (~10% of the time).
        with contextlib.nullcontext() if t == 1 else pyro.validation_enabled(False):
            log_f, delta, grads = path.target(u, beta)
        if t == 1:
            _check_finite(path, u, log_f, delta, beta, t)
            lw = torch.zeros_like(delta)
            if adapt:
                eps = torch.full(delta.shape[1:], step_sizes, dtype=delta.dtype)
                eps = eps.to(delta.device)
        lw = lw + (beta - float(betas[t - 1])) * delta
        if t < len(betas) - 1:
            if not adapt:
                eps = step_sizes[t - 1]
            used.append(eps)
            u, rate = _hmc(path, u, beta, log_f, grads, eps, leapfrog_steps)
            if adapt:
                eps = eps * torch.exp(rate - TARGET_ACCEPT)
        tick(1)
    schedule = torch.stack(used) if used else lw.new_zeros(0, lw.shape[1])
    return lw, schedule


def tuned_step_sizes(model, guide, args, betas, *, plate_nesting, leapfrog_steps, step_size):
    """A step-size schedule (T - 1, N) from a pilot run of ``PILOT_CHAINS`` chains per
    datapoint that adapts as it goes; the estimate's own chains then follow it unchanged."""
    if len(betas) <= 2:  # no transition to tune
        return torch.zeros(0)
    pilot = AnnealingPath(model, guide, args, num_chains=PILOT_CHAINS, plate_nesting=plate_nesting)
    settings = dict(leapfrog_steps=leapfrog_steps, step_sizes=step_size)
    return anneal(pilot, pilot.start, betas, **settings)[1]


def _check_finite(path, u, log_f, delta, beta, t) -> None:
    """ValueError naming the temperature and the site where the path's densities are not
    finite at the chains' start."""
    if torch.isfinite(log_f).all() and torch.isfinite(delta).all():
        return
    site = path.nonfinite_site(u)
    raise ValueError(
        f"log p(x, z) or log q(z|x) is not finite at the start of the annealing path "
        f"(temperature {t}, beta={beta:.4g}) at {site}: the model must give every draw of "
        "the proposal a finite density (check the data lie in the likelihood's support and "
        "the proposal's draws in the prior's)"
    )


def _hmc(path, u, beta, log_f, grads, eps, leapfrog_steps):
    """One HMC transition per chain leaving f_beta invariant: (new latents, acceptance rate
    per datapoint (N,)). Proposals whose energy is not finite are rejected; so are those whose
    path left the reals (a NaN gradient on the way), evaluated at the start instead, as a
    distribution kept from the start may still check its values."""
    step = {n: path.chain_view(eps, v, n) for n, v in u.items()}
    momentum = {n: torch.randn_like(v) for n, v in u.items()}
    h0 = -log_f + 0.5 * path.per_chain({n: p.square() for n, p in momentum.items()})
    q = dict(u)
    p = {n: momentum[n] + 0.5 * step[n] * grads[n] for n in u}
    lost = torch.zeros_like(h0, dtype=torch.bool)  # (K, N)
    with pyro.validation_enabled(False):  # a diverging proposal may leave the support
        for i in range(leapfrog_steps):
            q = {n: q[n] + step[n] * p[n] for n in u}
            off = path.per_chain({n: (~torch.isfinite(v)).to(v.dtype) for n, v in q.items()})
            lost = lost | (off > 0)
            safe = {n: torch.where(path.chain_view(lost, v, n), u[n], v) for n, v in q.items()}
            new_log_f, _, new_grads = path.target(safe, beta)
            half = 0.5 if i == leapfrog_steps - 1 else 1.0
            p = {n: p[n] + half * step[n] * new_grads[n] for n in u}
    h1 = -new_log_f + 0.5 * path.per_chain({n: v.square() for n, v in p.items()})
    log_accept = (h0 - h1).nan_to_num(nan=-math.inf)
    accept = ~lost & torch.isfinite(h1) & (torch.rand_like(h0).log() < log_accept)  # (K, N)
    moved = {n: torch.where(path.chain_view(accept, u[n], n), q[n], u[n]) for n in u}
    return moved, accept.to(h0.dtype).mean(0)


def _check_settings(num_samples, steps, leapfrog_steps, step_size) -> Tensor:
    check_count("num_samples", num_samples)
    check_count("steps", steps)
    if steps > MAX_STEPS:  # the schedules alone would fill memory
        raise ValueError(
            f"steps must be at most {MAX_STEPS:,} (the literature anneals over 10^3 to 10^5), "
            f"got {steps:,}"
        )
    check_count("leapfrog_steps", leapfrog_steps)
    if not (isinstance(step_size, (int, float)) and 0 < step_size < math.inf):
        raise ValueError(f"step_size must be a positive number, got {step_size!r}")
    return sigmoid_schedule(steps)


def ais(
    model,
    data,
    *,
    guide=None,
    num_samples: int = 16,
    steps: int = 100,
    leapfrog_steps: int = 5,
    step_size: float = 0.05,
    batch_size: int = 128,
    discrete: bool | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    params=None,
) -> LogLikelihood:
    """log p(x) per datapoint by annealed importance sampling, for any Pyro model whose latents
    are continuous or marked ``infer={"enumerate": "parallel"}`` (summed out exactly).

    Each datapoint runs ``num_samples`` independent chains from ``guide``'s q(z|x) (the model's
    prior when None) through ``steps`` temperatures on a sigmoid schedule to p(x, z), each
    moved by HMC (``leapfrog_steps`` leapfrog steps). The step sizes, one per temperature and
    datapoint, come from a pilot run of 4 chains that starts at ``step_size`` and adapts towards
    65% acceptance; the estimate's chains then follow that schedule unchanged, so that every
    transition leaves its distribution invariant and the weights stay unbiased. ``steps=1`` is
    importance sampling with ``num_samples`` draws. Cost: about steps x (leapfrog_steps + 1) x
    (num_samples + 4) evaluations of model and guide with their gradients, per datapoint;
    memory that of one gradient pass over num_samples x batch_size datapoints. A stochastic
    lower bound on log p(x) in expectation; ``lvmkit.bdmc`` tells how many steps close the gap.

    Parameters
    ----------
    model : callable
        A Pyro program over a batch, every sample site in ``pyro.plate("data", N)``.
    data : Tensor of shape (N, ...), tuple of such tensors, or Dataset
        The model's arguments, batched along their first dim.
    guide : callable or None
        q(z|x), the chains' start; None starts them from the model's prior.
    num_samples : int
        Chains per datapoint.
    steps : int
        Temperatures T of the annealing schedule (``steps=1``: importance sampling).
    leapfrog_steps : int
        Leapfrog steps per HMC transition.
    step_size : float
        The pilot run's first step size.
    batch_size, discrete, seed, device, progress, params
        As for ``lvmkit.log_likelihood``: the same batches, seeding per batch, torchrun
        sharding, and fitted parameters.

    Returns
    -------
    LogLikelihood
        ``values`` (N,) in nats, ``method="ais"``, ``steps``; ``mc_errors`` (N,) from the
        chains' weights by the delta method.
    """
    betas = _check_settings(num_samples, steps, leapfrog_steps, step_size)

    def estimate(batch, nesting, tick):
        tuning = dict(plate_nesting=nesting, leapfrog_steps=leapfrog_steps, step_size=step_size)
        schedule = tuned_step_sizes(model, guide, batch, betas, **tuning)
        path = AnnealingPath(model, guide, batch, num_chains=num_samples, plate_nesting=nesting)
        settings = dict(leapfrog_steps=leapfrog_steps, step_sizes=schedule, tick=tick)
        return log_mean_weight(anneal(path, path.start, betas, **settings)[0])

    est = estimate_per_batch(
        model,
        guide,
        data,
        estimate,
        what="AIS",
        batch_size=batch_size,
        seed=seed,
        device=device,
        progress=progress,
        params=params,
        discrete=discrete,
        ticks_per_batch=steps,
        check_guide=guide is not None,
    )
    return est.summary(num_samples, "ais", steps=steps)
