"""The objectives ``fit`` minimises, on one base that also plugs into ``pyro.infer.SVI``.

``Objective`` subclasses Pyro's ``ELBO``: a subclass writes ``differentiable_loss`` and gets
``loss`` and ``loss_and_grads``. ``make_elbo(name, num_samples)`` builds one by name.

``ReparamELBO``: the ELBO in one pass for reparameterized guides, falling back to Pyro's Trace_ELBO
otherwise. Trace_ELBO records full traces of guide and model (a trace handler, a replay handler,
node copies, a pruned copy of each trace) and then walks them. When every guide site can be
reparameterized, none of that is needed: one handler can draw the guide's values, replay them in the
model and add up scaled, masked log-densities as it goes. It computes the same estimate with the
same random draws; on a 784-400-20 VAE step it saves a quarter of Pyro's overhead
(benchmarks/svi_overhead.py). Anything else (a discrete or non-reparameterized guide site, a model
latent the guide lacks, an enumerated site) is handed to Trace_ELBO, which is exact there.
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import is_identically_one, scale_and_mask
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.infer.elbo import ELBO
from pyro.poutine.messenger import Messenger
from torch import Tensor

from lvmkit.core.checks import check_count
from lvmkit.inference.draws import WRAPPERS
from lvmkit.inference.importance import log_weights
from lvmkit.inference.programs import (
    is_latent,
    is_plate_site,
    max_plate_nesting,
    particle_traces,
    per_datapoint,
    unguided_latents,
)


class Objective(ELBO):
    """Base of lvmkit's objectives: a subclass defines ``differentiable_loss`` (a scalar to
    minimise, summed over the batch); ``loss`` and ``loss_and_grads`` follow, so an objective
    also works as the loss of ``pyro.infer.SVI``.

    Parameters
    ----------
    num_samples : int
        Particles per datapoint.
    """

    def __init__(self, num_samples: int = 1):
        super().__init__(num_particles=num_samples)
        self.num_samples = num_samples

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        raise NotImplementedError

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The loss as a float, without gradients."""
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("lvmkit objectives compute their loss without Pyro's traces")

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """The loss, with its gradients accumulated into the parameters (``pyro.infer.SVI``)."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return float(loss.detach())


class _Unsupported(Exception):
    """This model/guide pair needs Trace_ELBO."""


def _log_prob_sum(msg) -> Tensor:
    """Sum of a site's scaled, masked log-density over all its elements, in few autograd nodes.

    Every op here is a node that backward visits too; on a small net they cost as much as the
    arithmetic. Without a mask the sum of an Independent's log_prob is its base's summed at once,
    which skips the reshape and the per-event sum that Independent adds.
    """
    fn, value, scale, mask = msg["fn"], msg["value"], msg["scale"], msg["mask"]
    if mask is not None or (isinstance(scale, Tensor) and scale.dim() > 0):
        return scale_and_mask(fn.log_prob(value), scale, mask).sum()
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    total = fn.log_prob(value).sum()
    return total if is_identically_one(scale) else total * scale


def _total(terms: list[Tensor]) -> Tensor | float:
    """terms[0] + terms[1] + ..., without a node for a leading zero."""
    return sum(terms[1:], terms[0]) if terms else 0.0


class _GuidePass(Messenger):
    """Run the guide; keep each site's value and add up log q."""

    def __init__(self):
        super().__init__()
        self.values: dict[str, Tensor] = {}
        self.log_q: list[Tensor] = []  # one summed term per site

    def _pyro_sample(self, msg):
        if is_plate_site(msg):
            return
        if msg["is_observed"] or not msg["fn"].has_rsample or msg["infer"].get("enumerate"):
            raise _Unsupported(msg["name"])

    def _pyro_post_sample(self, msg):
        # plates' subsample indices too: the model reuses them
        self.values[msg["name"]] = msg["value"]
        if is_plate_site(msg):
            return
        self.log_q.append(_log_prob_sum(msg))


class _ModelPass(Messenger):
    """Run the model on the guide's values; add up log p."""

    def __init__(self, values: dict[str, Tensor]):
        super().__init__()
        self.values = values
        self.log_p: list[Tensor] = []

    def _pyro_sample(self, msg):
        if msg["is_observed"] or (is_plate_site(msg) and msg["name"] not in self.values):
            return
        if msg["name"] not in self.values or msg["infer"].get("enumerate"):
            raise _Unsupported(msg["name"])
        msg["value"] = self.values[msg["name"]]
        msg["done"] = True

    def _pyro_post_sample(self, msg):
        if is_plate_site(msg):
            return
        self.log_p.append(_log_prob_sum(msg))


class ReparamELBO(Objective):
    """-ELBO with ``num_samples`` particles; Trace_ELBO's estimate, computed in one pass.

    Parameters
    ----------
    num_samples : int
        Particles per datapoint.
    """

    def __init__(self, num_samples: int = 1):
        super().__init__(num_samples)
        self.fallback = Trace_ELBO(num_particles=num_samples)
        self.use_fallback: bool | None = None  # decided on the first call

    def _particle(self, model, guide, args) -> Tensor:
        with _GuidePass() as g:
            guide(*args)
        with _ModelPass(g.values) as m:
            model(*args)
        return _total(g.log_q) - _total(m.log_p)

    def differentiable_loss(self, model, guide, *args) -> Tensor:
        if self.use_fallback:
            return self.fallback.differentiable_loss(model, guide, *args)
        try:
            particles = [self._particle(model, guide, args) for _ in range(self.num_samples)]
        except _Unsupported:
            self.use_fallback = True
            return self.fallback.differentiable_loss(model, guide, *args)
        self.use_fallback = False
        return particles[0] if self.num_samples == 1 else _total(particles) / self.num_samples


class IWAELoss(Objective):
    """The importance-weighted bound with K = ``num_samples`` particles, as a loss:
    -sum_n log mean_k w_kn, per datapoint as in Burda et al. 2016 (Pyro's ``RenyiELBO(alpha=0)``
    takes the log-mean-exp of a whole batch's weight, a far looser bound). K = 1 is the ELBO.
    Every sample site must sit inside ``pyro.plate("data", N)``.

    Parameters
    ----------
    num_samples : int
        K.
    """

    def __init__(self, num_samples: int = 1):
        super().__init__(num_samples)
        self._plate_nesting: int | None = None  # found on the first call

    def differentiable_loss(self, model, guide, *args) -> Tensor:
        if self._plate_nesting is None:
            self._plate_nesting = max_plate_nesting(model, guide, *args)
        lw = log_weights(
            model, guide, *args, num_samples=self.num_samples, plate_nesting=self._plate_nesting
        )  # (K, N)
        bound = torch.logsumexp(lw, dim=0) - math.log(self.num_samples)  # (N,)
        return -bound.sum()


class STLELBO(Objective):
    """-ELBO with the "sticking the landing" gradient (Roeder et al. 2017): log q(z) counts with
    q's parameters held fixed, so the encoder's gradient keeps the path through z and drops the
    score term, whose mean is zero and which alone stays noisy at the exact posterior. The value
    is the ELBO's, from the same draws; the model's gradient is the ELBO's. Every guide site
    must be reparameterized. log q at the held draw is computed anew (a flow posterior's
    density there runs its inverse).

    Parameters
    ----------
    num_samples : int
        Particles per datapoint.
    """

    def _particle(self, model, guide, args) -> Tensor:
        with _GuidePass() as g:
            guide(*args)
        with _ModelPass(g.values) as m:
            model(*args)
        held = {name: v.detach() for name, v in g.values.items()}
        with _ModelPass(held) as fixed:  # the guide again at the detached draw: log q's
            guide(*args)  # score term alone
        log_q_fixed = _total(fixed.log_p)
        return _total(g.log_q) - log_q_fixed + log_q_fixed.detach() - _total(m.log_p)

    def differentiable_loss(self, model, guide, *args) -> Tensor:
        try:
            particles = [self._particle(model, guide, args) for _ in range(self.num_samples)]
        except _Unsupported as site:
            raise ValueError(
                f"elbo='stl' needs every latent site reparameterized and guided; site {site} is "
                "not (a discrete, enumerated or unguided latent): use elbo='elbo'"
            ) from None
        return _total(particles) / self.num_samples


class DReGLoss(Objective):
    """The importance-weighted bound with the doubly reparameterized gradient (Tucker et al.
    2019), as a loss: the value is IWAE's, -sum_n log mean_k w_kn, from the same draws; the
    model's gradient is IWAE's, sum_k w~_k d log p(x, z_k); the guide's is
    sum_k w~_k^2 d log w_k / dz_k dz_k/dphi (normalized weights w~), which drops the score
    terms whose noise grows with K. Needs K >= 2 and every latent site reparameterized and
    guided, inside ``pyro.plate("data", N)``.

    Generic over guides, it runs model and guide twice: at the draws z (the paths through z)
    and at the detached draws (the direct gradients, which are subtracted or kept).

    Parameters
    ----------
    num_samples : int
        K >= 2.
    """

    def __init__(self, num_samples: int = 2):
        if num_samples < 2:
            raise ValueError(
                f"elbo='dreg' with num_samples={num_samples}: the doubly reparameterized "
                "gradient weighs K >= 2 importance samples; set num_samples >= 2 (with one "
                "sample it is elbo='stl')"
            )
        super().__init__(num_samples)
        self._plate_nesting: int | None = None

    def differentiable_loss(self, model, guide, *args) -> Tensor:
        if self._plate_nesting is None:
            self._plate_nesting = max_plate_nesting(model, guide, *args)
        nesting, k = self._plate_nesting, self.num_samples
        guide_tr, model_tr = particle_traces(
            model, guide, args, num_samples=k, plate_nesting=nesting
        )
        held = {}
        for name, site in guide_tr.nodes.items():
            if is_latent(site):
                if not site["fn"].has_rsample:
                    raise ValueError(
                        f"elbo='dreg' needs every latent site reparameterized; guide site "
                        f"{name!r} is not: use elbo='iwae'"
                    )
                held[name] = site["value"].detach()
        unguided = [n for n, s in model_tr.nodes.items() if is_latent(s) and n not in held]
        if unguided:
            raise ValueError(
                f"elbo='dreg' needs every latent guided; the guide does not sample "
                f"{unguided[0]!r}: add it to the guide, or use elbo='iwae' (which sums out "
                "enumerated sites)"
            )
        with pyro.plate("particles", k, dim=-nesting - 1):
            log_q_held = per_datapoint(
                poutine.trace(poutine.condition(guide, held)).get_trace(*args), nesting
            )
            log_p_held = per_datapoint(
                poutine.trace(poutine.condition(model, held)).get_trace(*args), nesting
            )
        log_w = per_datapoint(model_tr, nesting) - per_datapoint(guide_tr, nesting)  # (K, N)
        path = log_w - log_p_held + log_q_held  # only the gradient through z; value 0
        w = torch.softmax(log_w.detach(), dim=0)
        surrogate = (w * log_p_held).sum() + (w.square() * path).sum()
        loss = -(torch.logsumexp(log_w, dim=0) - math.log(k)).sum()
        return loss.detach() - (surrogate - surrogate.detach())


ELBOS = {
    "elbo": ReparamELBO,  # Trace_ELBO's estimate in one pass (falls back to it when needed)
    "meanfield": lambda k: TraceMeanField_ELBO(num_particles=k),  # analytic KL where available
    "iwae": IWAELoss,  # per-datapoint importance-weighted bound (Burda et al. 2016)
    "enum": lambda k: TraceEnum_ELBO(num_particles=k),  # sums out enumerated discrete latents
    "stl": STLELBO,  # the ELBO, sticking-the-landing gradient (Roeder et al. 2017)
    "dreg": DReGLoss,  # IWAE, doubly reparameterized gradient (Tucker et al. 2019)
}


def make_elbo(name: str, num_samples: int = 1):
    """The objective called ``name`` (one of ELBOS) with ``num_samples`` particles.

    Parameters
    ----------
    name : str
        "elbo", "meanfield", "iwae", "enum", "stl" or "dreg".
    num_samples : int

    Returns
    -------
    pyro.infer.ELBO
    """
    if name not in ELBOS:
        raise ValueError(f"unknown elbo {name!r}; choose one of {sorted(ELBOS)}")
    check_count("num_samples", num_samples)
    return ELBOS[name](num_samples)


def check_objective(name: str | None, guide_tr, model_tr) -> None:
    """ValueError where the objective ``name`` cannot score this model and guide (traces from
    ``trace_once``). A model latent the guide does not sample is summed out by "enum" (if
    marked for enumeration) and "iwae"; "elbo" and "meanfield" would draw it from its prior
    and count its log-prior with no log q against it, a wrong objective: refused, by name.
    "meanfield" also needs every KL in closed form."""
    if name == "meanfield":
        check_closed_form_kl(guide_tr, model_tr)
    if name not in ("elbo", "meanfield", "enum"):
        return  # "iwae", "stl" and "dreg" check for themselves; others know their own rules
    for site, marked in unguided_latents(guide_tr, model_tr).items():
        if name == "enum" and marked:
            continue
        fix = "" if name == "enum" else " and use elbo='enum' (or 'iwae')"
        raise ValueError(
            f"latent site {site!r} is in the model but the guide does not sample it, which "
            f"elbo={name!r} cannot score: add it to the guide, or, if it is discrete, mark it "
            f"infer={{'enumerate': 'parallel'}}{fix}"
        )


def check_closed_form_kl(guide_tr, model_tr) -> None:
    """ValueError naming a guided latent whose KL(q || p) has no closed form, for an objective
    that promises analytic KL ("meanfield"; Pyro's would estimate it silently instead), or a
    guide whose latents do not come in the model's order (Pyro's would warn and go on)."""
    for name, site in guide_tr.nodes.items():
        if not is_latent(site) or name not in model_tr.nodes:
            continue
        q, p = site["fn"], model_tr.nodes[name]["fn"]
        try:
            torch.distributions.kl_divergence(q, p)
        except NotImplementedError:
            raise ValueError(
                f"elbo='meanfield' computes KL(q || p) in closed form, and site {name!r} has "
                f"none (q: {_innermost(q)}, p: {_innermost(p)}, e.g. a learned mixture prior "
                "or a flow posterior): use elbo='elbo', which estimates it by Monte Carlo"
            ) from None
    # Pyro's own test of a mean-field guide: its latents come in the model's order (a guide
    # whose later site depends on an earlier one, such as q(z2 | z), turns it round)
    guided = [n for n, s in guide_tr.nodes.items() if is_latent(s) and n in model_tr.nodes]
    in_model = [n for n in model_tr.nodes if n in guided]
    if guided != in_model:
        raise ValueError(
            f"elbo='meanfield' needs a mean-field guide, sampling its latents in the model's "
            f"order {in_model}; this guide samples {guided} (e.g. a two-layer model's "
            "bottom-up q(z|x) q(z2|z), where one latent depends on another): use elbo='elbo'"
        )


def _innermost(fn) -> str:
    """A distribution's name under its expand / to_event / mask wrappers."""
    while isinstance(fn, WRAPPERS):
        fn = fn.base_dist
    return type(fn).__name__
