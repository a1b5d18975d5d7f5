"""Leaf helpers about Pyro programs: plates and sites, the traces of guide-then-model particles,
the modules behind a model, eval mode, and devices. Every other inference module builds on these.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor

from lvmkit.core.checks import check_particles
from lvmkit.core.processes import resolve_device  # noqa: F401 (here too, for its users)

DATA_PLATE = "data"


def is_plate_site(site) -> bool:
    """A plate's own bookkeeping site (its subsample indices) in a trace or message."""
    return type(site["fn"]).__name__ == "_Subsample"


def is_latent(site) -> bool:
    """An unobserved sample site that is a random variable (not a plate's bookkeeping)."""
    return site["type"] == "sample" and not site["is_observed"] and not is_plate_site(site)


def _cell_value(cell):
    try:
        return cell.cell_contents
    except ValueError:  # a closure variable not assigned yet
        return None


def modules_behind(*fns) -> list[torch.nn.Module]:
    """The distinct nn.Modules behind model/guide callables: a module itself, the owner of a
    bound method (``lvm.model``), and the modules a plain function holds in its closure or
    names as globals (a user's ``def model(x): pyro.module("dec", dec)``)."""
    found = {}
    for fn in fns:
        candidates = [fn, getattr(fn, "__self__", None)]
        code = getattr(fn, "__code__", None)
        if code is not None:
            candidates += [_cell_value(c) for c in fn.__closure__ or ()]
            candidates += [fn.__globals__.get(name) for name in code.co_names]
        for obj in candidates:
            if isinstance(obj, torch.nn.Module):
                found[id(obj)] = obj
    return list(found.values())


@contextmanager
def evaluating(*fns):
    """Put the modules behind ``fns`` in eval mode inside, and give each its own mode back."""
    modes = [(m, m.training) for m in modules_behind(*fns)]
    try:
        for module, _ in modes:
            module.eval()
        yield
    finally:
        for module, was_training in modes:
            module.train(was_training)


@contextmanager
def fitted_params(params=None):
    """Run model and guide against fitted parameters: those of ``params`` (a FitResult, a
    parameter-store state like ``FitResult.param_state``, or a dict of ``pyro.param`` names to
    values, such as ``FitResult.params`` or values of your own), or the global store when None. A
    ``pyro.param`` site with no value there is initialised afresh, which after a fit is almost
    always a mistake: warn about it, naming the sites, and take such values out of the store
    again afterwards, so that every call says so and the store stays as it was.

    A module registered with ``pyro.module`` always runs with its own weights: a dict's entries
    for them ("name$$$weight") are compared with those, and a warning names any that differ
    (weights saved from a fit and not loaded back into the module)."""
    state, given = param_state(params), module_weights(params)
    if given and not hasattr(params, "param_state"):  # a FitResult's state is left whole
        state = {k: {n: v for n, v in d.items() if n not in given} for k, d in state.items()}
    store = pyro.get_param_store()
    with store.scope(state) if state is not None else nullcontext():
        before = set(store.keys())
        try:
            yield
        finally:
            created = [n for n in store.keys() if n not in before]
            ignored = unused_module_weights(given, store)
            for name in created:  # the store (the user's, or the fit's) stays as it was
                del store[name]
    if ignored:
        warn_unused_module_weights(ignored, stacklevel=4, fit=hasattr(params, "param_state"))
    # a module's parameters (pyro.module, "name$$$...") keep the module's own values
    fresh = sorted(n for n in created if MODULE_SEPARATOR not in n)
    if fresh:
        warnings.warn(
            f"pyro.param site(s) {fresh} had no value here and were initialised "
            "afresh: to use fitted values pass params=result (what lvmkit.fit returned), or run "
            "inside result.scope()",
            stacklevel=3,
        )


MODULE_SEPARATOR = "$$$"  # Pyro's "module$$$parameter" names of pyro.module weights
STATE_KEYS = {"params", "constraints"}


def module_weights(params) -> dict:
    """The entries of ``params`` that name pyro.module weights: a plain dict's, or the copies a
    FitResult took as its fit ended (the module may have been trained again since; empty for
    a store state, which holds the modules' tensors themselves)."""
    params = params.params if hasattr(params, "param_state") else params
    if not isinstance(params, dict) or set(params) == STATE_KEYS:
        return {}
    return {n: v for n, v in params.items() if MODULE_SEPARATOR in n}


def unused_module_weights(given: dict, store) -> list[str]:
    """The names in ``given`` whose values differ from the module weights ``store`` holds
    after a run (pyro.module registers each module's own tensors)."""

    def same(a, b) -> bool:
        a, b = a.detach(), torch.as_tensor(b).detach()
        return a.shape == b.shape and torch.equal(a.cpu(), b.to(a.dtype).cpu())

    return sorted(n for n, v in given.items() if n in store and not same(store[n], v))


def warn_unused_module_weights(names: list[str], stacklevel: int, fit: bool = False) -> None:
    what, fix = (  # a fit's modules changed since (trained again), or weights never loaded
        (f"the modules behind pyro.module parameters {names} have changed since the fit "
         "passed as params ended (trained again?)", "give each fit modules of its own, or "
         "load its weights back (result.params)") if fit else
        (f"params holds weights of pyro.module parameters {names} that differ from the "
         "modules' own", "load them into the module (module.load_state_dict), or pass "
         "params=result (what lvmkit.fit returned, whose modules are the trained ones)")
    )  # fmt: skip
    warnings.warn(f"{what}; the model and guide ran with the modules' weights: pyro.module "
                  f"takes no weights from params. To use them, {fix}", stacklevel=stacklevel)


def param_state(params) -> dict | None:
    """A parameter-store state for ``params``: a FitResult's, a state as is, or one made from a
    dict of names to (constrained) values, which ``pyro.param`` then returns unchanged."""
    if params is None or hasattr(params, "param_state"):
        return getattr(params, "param_state", None)
    if not isinstance(params, dict):
        raise ValueError(
            f"params must be what lvmkit.fit returned, or a dict of pyro.param names to values; "
            f"got {type(params).__name__}"
        )
    if set(params) == STATE_KEYS:  # a store state (FitResult.param_state)
        return params
    values = {}
    for name, value in params.items():
        try:
            values[name] = torch.as_tensor(value).detach()
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"params[{name!r}] is not a tensor or a number: {err}") from None
    real = torch.distributions.constraints.real
    return {"params": values, "constraints": dict.fromkeys(values, real)}


def place(*fns, device: str | torch.device | None = None) -> torch.device:
    """Where to evaluate model/guide callables: ``device`` (their modules are moved there), or,
    when None, where their modules' parameters already are (CPU if they have none)."""
    modules = modules_behind(*fns)
    if device is None:
        params = (p for m in modules for p in m.parameters())
        return next(params, torch.empty(0)).device
    device = resolve_device(device)
    for module in modules:
        module.to(device)
    return device


def on_device(device: torch.device):
    """A context in which ``torch.zeros(...)`` inside a user's model lands on ``device``."""
    return device if device.type != "cpu" else nullcontext()


def _outside_data_plate(name: str) -> ValueError:
    return ValueError(
        f"site {name!r} is not inside pyro.plate({DATA_PLATE!r}, N): importance weights per "
        "datapoint need every sample site in the data plate, found by that name (a plate over "
        f"the datapoints named otherwise must be renamed {DATA_PLATE!r}). A global latent (one "
        "value for all datapoints, e.g. a regression weight) has no per-datapoint posterior "
        "here: sample it with lvmkit.nuts, or make it a pyro.param"
    )


def trace_once(model, guide, *args):
    """The guide's trace and the model's replayed on it, run once, blocked, without gradients:
    (guide_trace, model_trace). This is where lvmkit first runs a user's program: a guide
    draw of the wrong shape, a guide site the model lacks, data of another dtype than the
    nets', a model without ``pyro.plate("data")`` or with one sized otherwise than the batch
    are each a ValueError saying so."""
    with torch.no_grad(), poutine.block():
        guide_tr = None
        try:
            guide_tr = poutine.trace(guide).get_trace(*args)
            model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args)
        except (ValueError, RuntimeError) as err:
            explained = _explain(err, model, guide, guide_tr, args)
            if explained is None:
                raise
            raise explained from err
    for name, site in model_tr.nodes.items():
        if is_latent(site) and name in guide_tr.nodes:
            _check_draw_shape(name, site)
    extra = [  # an autoguide's auxiliary sites (the "_unconstrained" draws) have no model site
        n for n, site in guide_tr.nodes.items()
        if is_latent(site) and n not in model_tr.nodes and not site["infer"].get("is_auxiliary")
    ]  # fmt: skip
    if extra:
        raise ValueError(
            f"the guide samples {extra[0]!r}, which the model has no site for: its log q would "
            "count with no log p against it; remove it from the guide (or add it to the model)"
        )
    _check_data_plate_size(model_tr, args)
    if not any(
        f.name == DATA_PLATE
        for site in model_tr.nodes.values()
        for f in site.get("cond_indep_stack", ())
    ):
        raise ValueError(
            f"the model has no pyro.plate({DATA_PLATE!r}, N): lvmkit splits losses, draws and "
            "estimates per datapoint by that plate; put the per-datapoint sites in "
            f"`with pyro.plate({DATA_PLATE!r}, x.shape[0]):`"
        )
    return guide_tr, model_tr


def _check_data_plate_size(model_tr, args: tuple) -> None:
    """ValueError unless ``pyro.plate("data")`` has as many elements as the batch has rows:
    a plate sized for the whole dataset (or subsampling inside it) would score a batch as if
    it were all of the data, and lvmkit scales batches itself."""
    rows = batch_rows(args)
    for site in model_tr.nodes.values():
        for f in site.get("cond_indep_stack", ()):
            size = getattr(f, "full_size", None) or f.size  # subsampled: the full size
            if f.name == DATA_PLATE and rows is not None and size != rows:
                raise ValueError(
                    f"pyro.plate({DATA_PLATE!r}) has {size} elements but the batch holds {rows} "
                    f"datapoints; size it by the batch, pyro.plate({DATA_PLATE!r}, x.shape[0]), "
                    "without subsample_size (lvmkit scales minibatches itself)"
                )


def _check_draw_shape(name: str, site) -> None:
    """ValueError unless the guide's draw at model site ``name`` fits the model's distribution
    there, as Pyro's check of a value does (broadcastable, event shape equal)."""
    fn, value = site["fn"], site["value"]
    want, shape = (*fn.batch_shape, *fn.event_shape), tuple(value.shape)
    event = tuple(fn.event_shape)
    fits = shape[len(shape) - len(event) :] == event and all(
        i == 1 or j == 1 or i == j for i, j in zip(reversed(shape), reversed(want), strict=False)
    )
    if not fits:
        raise ValueError(
            f"the guide draws site {name!r} with shape {shape} but the model's distribution "
            f"there has shape {want}; make the guide draw the model's shape (check its "
            ".to_event(...), .expand(...) and plates)"
        )


def _explain(err: Exception, model, guide, guide_tr, args: tuple) -> ValueError | None:
    """What made the first run of model and guide fail, where lvmkit can tell: data of
    another dtype than the nets' parameters, or a guide draw of another shape than the
    model's own draw at that site. None: not one of these."""
    modules = modules_behind(model, guide)
    weights = [p for m in modules for p in m.parameters() if p.is_floating_point()]
    if weights:
        wanted = weights[0].dtype
        other = [a.dtype for a in args if isinstance(a, torch.Tensor) and a.dtype != wanted]
        if other and "type" in str(err):  # torch's words for a dtype mismatch
            return ValueError(
                f"the model's nets hold {wanted} parameters but the data are {other[0]} "
                f"({str(err).splitlines()[0]}); convert the data with x.to({wanted}) (or the "
                "model with .to(dtype) to match them)"
            )
    if guide_tr is None:
        return None
    try:
        own = poutine.trace(model).get_trace(*args)  # the model's draws, from its prior
    except Exception:  # the model fails by itself: its own error says more
        return None
    for name, site in guide_tr.nodes.items():
        mine = own.nodes.get(name)
        if not is_latent(site) or mine is None or mine["type"] != "sample":
            continue
        shape, want = tuple(site["value"].shape), tuple(mine["value"].shape)
        if shape != want:
            return ValueError(
                f"the guide draws site {name!r} with shape {shape} but the model's own draw "
                f"there has shape {want}; make the guide draw the model's shape (check its "
                ".to_event(...), .expand(...) and plates)"
            )
    return None


def max_plate_nesting(model, guide, *args, check_guide: bool = True) -> int:
    """How many plate dims model and guide use (they are run once, blocked, without gradients).
    ValueError naming the first sample site that is not inside the data plate, and, with
    ``check_guide``, a model latent the guide neither samples nor leaves to enumeration."""
    return nesting_of(*trace_once(model, guide, *args), check_guide=check_guide)


def nesting_of(guide_tr, model_tr, *, check_guide: bool = True) -> int:
    """``max_plate_nesting`` from traces already taken (``trace_once``)."""
    for tr in (model_tr, guide_tr):  # the model's names first: they are the user's own
        for name, site in tr.nodes.items():
            in_data = any(f.name == DATA_PLATE for f in site.get("cond_indep_stack", ()))
            if site["type"] == "sample" and not is_plate_site(site) and not in_data:
                raise _outside_data_plate(name)
    if check_guide:  # before any vectorized run, whose errors say less
        check_unguided(model_tr, guide_tr)
    dims = [
        -frame.dim
        for tr in (guide_tr, model_tr)
        for site in tr.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized
    ]
    return max(dims, default=0)


def batch_rows(args: tuple) -> int:
    """The datapoints of a batch of model arguments: the first tensor's rows (1 if none)."""
    return next((len(a) for a in args if isinstance(a, torch.Tensor) and a.dim()), 1)


def particle_traces(model, guide, args, *, num_samples: int, plate_nesting: int):
    """Guide and replayed-model traces of ``num_samples`` particles, vectorized in a plate
    ("particles") left of the model's plates: (guide_trace, model_trace).

    Model latents the guide does not sample are enumerated where they are marked
    ``infer={"enumerate": "parallel"}`` (each in a dim left of the particles). ``plate_nesting``
    comes from ``max_plate_nesting``, which has refused (by name) any other latent the guide
    misses: drawing it from the prior would count its log p without its log q.
    """
    check_particles(num_samples, batch_rows(args))
    with pyro.plate("particles", num_samples, dim=-plate_nesting - 1):
        guide_tr = poutine.trace(guide).get_trace(*args)
        replayed = poutine.replay(model, trace=guide_tr)
        enumerated = poutine.enum(replayed, first_available_dim=-plate_nesting - 2)
        model_tr = poutine.trace(enumerated).get_trace(*args)
    return guide_tr, model_tr


def unguided_latents(guide_tr, model_tr) -> dict[str, bool]:
    """The model's latent sites the guide does not sample (traces from ``trace_once``) ->
    whether each is marked ``infer={"enumerate": "parallel"}``."""
    return {
        name: site["infer"].get("enumerate") == "parallel"
        for name, site in model_tr.nodes.items()
        if is_latent(site) and name not in guide_tr.nodes
    }


def check_unguided(model_tr, guide_tr) -> None:
    """ValueError naming a model latent that the guide neither samples nor leaves to
    enumeration, or an enumerated latent in a plate other than the data plate."""
    for name, site in model_tr.nodes.items():
        if not is_latent(site) or name in guide_tr.nodes:
            continue
        if site["infer"].get("enumerate") != "parallel":
            raise ValueError(
                f"latent site {name!r} is in the model but the guide does not sample it: add it "
                "to the guide, or, if it is discrete, mark it "
                "infer={'enumerate': 'parallel'} so that it is summed out exactly"
            )
        plates = [f.name for f in site["cond_indep_stack"] if f.vectorized]
        if set(plates) - {DATA_PLATE, "particles"}:
            raise ValueError(
                f"enumerated site {name!r} sits in plates {plates}: lvmkit sums enumerated "
                f"latents out per datapoint, so it may sit in pyro.plate({DATA_PLATE!r}) only"
            )


def per_datapoint(trace, plate_nesting: int, *, latent_only: bool = False) -> Tensor:
    """Sum of a trace's scaled log-probs per (particle, datapoint): (K or 1, N or 1), or, for a
    trace with enumerated sites, (E_m, ..., E_1, K or 1, N or 1): one dim per enumerated site,
    left of the particles, for the caller to sum out (``logsumexp``).

    Sites' batch shapes are right-aligned against (E..., K, ..., N, ...), with the particle dim
    at -plate_nesting-1; every plate dim but the data plate's is summed. ``latent_only`` skips
    observed sites.
    """
    trace = prune_subsample_sites(trace)  # drop the plates' own bookkeeping sites
    trace.compute_log_prob()
    sites = [
        (name, site)
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not (latent_only and site["is_observed"])
    ]
    rank = max([plate_nesting + 1] + [s["log_prob"].dim() for _, s in sites])
    enumerated = sum(s["infer"].get("_enumerate_dim") is not None for _, s in sites)
    if rank > plate_nesting + 1 + enumerated:
        name = next(n for n, s in sites if s["log_prob"].dim() == rank)
        raise ValueError(
            f"site {name!r} has batch dims that no pyro.plate declares (log-prob shape "
            f"{tuple(trace.nodes[name]['log_prob'].shape)}): put every batch dim in a plate, "
            "or fold event dims with .to_event(...)"
        )
    total = torch.zeros((1,) * (rank - plate_nesting + 1))
    for name, site in sites:
        frames = [f for f in site["cond_indep_stack"] if f.name == DATA_PLATE]
        if not frames:
            raise _outside_data_plate(name)
        lp = site["log_prob"]
        lp = lp.reshape((1,) * (rank - lp.dim()) + lp.shape)
        data_axis = rank + frames[0].dim
        other = [d for d in range(rank - plate_nesting, rank) if d != data_axis]
        total = total.to(lp) + (lp.sum(other) if other else lp)
    return total


def sum_out_enumerated(log_joint: Tensor) -> Tensor:
    """(E..., K, N) -> (K, N): the enumerated latents summed out of a per-datapoint joint."""
    if log_joint.dim() <= 2:
        return log_joint
    return log_joint.flatten(0, -3).logsumexp(0)
