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

import torch
from pyro.distributions.util import is_identically_one, scale_and_mask
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.infer.elbo import ELBO
from pyro.poutine.messenger import Messenger
from torch import Tensor

from lvmkit.core.checks import check_count
from lvmkit.inference.importance import log_weights
from lvmkit.inference.programs import is_plate_site, max_plate_nesting


class Objective(ELBO):
    """Base of lvmkit's objectives: a subclass defines ``differentiable_loss`` (a scalar to
    minimise, summed over the batch); ``loss`` and ``loss_and_grads`` follow, so an objective
    also works as the loss of ``pyro.infer.SVI``."""

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
    """-ELBO with ``num_samples`` particles; Trace_ELBO's estimate, computed in one pass."""

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
    Every sample site must sit inside ``pyro.plate("data", N)``."""

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


ELBOS = {
    "elbo": ReparamELBO,  # Trace_ELBO's estimate in one pass (falls back to it when needed)
    "meanfield": lambda k: TraceMeanField_ELBO(num_particles=k),  # analytic KL where available
    "iwae": IWAELoss,  # per-datapoint importance-weighted bound (Burda et al. 2016)
    "enum": lambda k: TraceEnum_ELBO(num_particles=k),  # sums out enumerated discrete latents
}


def make_elbo(name: str, num_samples: int = 1):
    """The objective called ``name`` (one of ELBOS) with ``num_samples`` particles."""
    if name not in ELBOS:
        raise ValueError(f"unknown elbo {name!r}; choose one of {sorted(ELBOS)}")
    check_count("num_samples", num_samples)
    return ELBOS[name](num_samples)
