"""``diagnose(model, data) -> Report``: what a report says about a fitted built-in model.

The report is built by the section functions in ``SECTIONS``, in order. Each takes the shared
``Context``, may add numbers to ``ctx.results`` and pictures to ``ctx.figures``, and returns a
``Section`` (or None where it does not apply). A new diagnostic is one function and one entry.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm import tqdm

from lvmkit.core.checks import check_count
from lvmkit.core.rng import seeded
from lvmkit.data import ImageData, scale
from lvmkit.diagnostics.convergence import convergence, convergence_plot, label, sample_counts
from lvmkit.diagnostics.gaussian_code import amortization_gap, kl_per_dimension, mutual_information
from lvmkit.diagnostics.plots import bars, histogram, image_grid, latent_space
from lvmkit.diagnostics.posteriors import MIN_PSIS_DRAWS, khat_bands, posterior, psis_khat
from lvmkit.diagnostics.quality import sample_quality
from lvmkit.diagnostics.report import Report, Section
from lvmkit.diagnostics.representation import active_units, encode, probe_problem
from lvmkit.inference.likelihood import dequantized_levels
from lvmkit.models.base import check_builtin

UNRELIABLE_SHARE = 0.3  # above this share of k-hat > 0.7 the report says what to do next
TRAVERSED_DIMS = 6  # rows of the traversal picture: the dimensions with the most KL
# An MI estimate within this share of its ceiling log N is reported as saturated.
MI_SATURATED = 0.9
QUALITY_SAMPLES = 200  # samples the classifier scores


@dataclass
class Context:
    """What the sections share: the model, the data, settings, and what earlier sections found."""

    model: object
    data: ImageData
    x: Tensor  # the data in model units
    xs: Tensor  # the images the posterior diagnostics look at: the first num_images of x
    summary: dict
    evaluation: dict | None
    num_samples: int
    seed: int
    ais_steps: int | None = None
    reference: ImageData | None = None  # what the sample-quality classifier learns from
    results: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)
    found: dict = field(default_factory=dict)  # tensors later sections reuse


def _training(ctx: Context) -> Section:
    ctx.results["summary"] = ctx.summary
    return Section("Training", [(k, v, "") for k, v in ctx.summary.items()], "the fit's summary")


def _likelihood(ctx: Context) -> Section | None:
    if ctx.evaluation is None:
        return None
    ctx.results["evaluation"] = ctx.evaluation
    rows = [(k, v, "") for k, v in ctx.evaluation.items() if k != "convergence"]
    for r in ctx.evaluation.get("convergence", []):
        how = (
            f"AIS {r['num_samples']}x{r['steps']}"
            if r["method"] == "ais"
            else (f"IS K={r['num_samples']}")
        )
        bits = f", {r['bits_per_dim']:.4f} bits/dim" if "bits_per_dim" in r else ""
        mc = "no" if r.get("mc_stderr") is None else f"± {r['mc_stderr']:.3f}"
        rows.append((how, r["mean"], f"{mc} Monte Carlo error{bits}"))
    return Section("Likelihood", rows, "on the test split (lvmkit evaluate)")


def _trust(ctx: Context) -> Section:
    """PSIS k-hat of the guide's importance weights."""
    xs, model = ctx.xs, ctx.model
    idata = posterior(model.model, model.guide, xs, num_samples=ctx.num_samples, seed=ctx.seed)
    ctx.found["posterior"] = idata
    khat = psis_khat(idata)
    bands = khat_bands(khat)
    ctx.results["khat_bands"] = bands
    ctx.figures["khat.png"] = histogram(khat, xlabel="PSIS k-hat", lines=(0.5, 0.7))
    rows = [(band, share, f"share of the {len(xs)} images") for band, share in bands.items()]
    if bands["unreliable (>0.7)"] > UNRELIABLE_SHARE:
        rows.append(
            (
                "what next",
                "",
                "q(z|x) is narrower than p(z|x) or misses part of it for many images: an "
                "importance-sampled log p(x) is then biased low and needs far more samples. "
                "Measure log p(x) by AIS instead (lvmkit.ais; lvmkit evaluate RUN --method "
                "ais), train with elbo='iwae' (more samples widen q), give the encoder more "
                "capacity, or check a few images against NUTS (lvmkit.nuts)",
            )
        )
    note = (
        f"k-hat of the importance weights p(x,z)/q(z|x), {ctx.num_samples} draws per image; "
        "above 0.7 the guide misses part of the posterior"
    )
    return Section("Can the guide be trusted? (PSIS k-hat, Yao et al. 2018)", rows, note)


def _settled(ctx: Context) -> Section | None:
    """log p(x) of the first images by importance sampling as K grows, and by AIS."""
    model = ctx.model
    if model.density != "importance":
        return None
    data = model.prepare(ctx.data[: len(ctx.xs)])
    ks = sample_counts(ctx.num_samples)
    rows = convergence(model.model, model.guide, data, ks=ks, ais_steps=ctx.ais_steps)
    ctx.results["convergence"] = [r.row() for r in rows]
    ctx.figures["settled.png"] = convergence_plot(rows)
    table = []
    for r in rows:
        bits = f", {r.bits_per_dim:.4f} bits/dim" if r.bits_per_dim is not None else ""
        mc = "n/a" if math.isnan(r.mc_stderr) else f"± {r.mc_stderr:.3f}"  # K = 1: no spread
        note = f"± {r.stderr:.3f} over images, {mc} Monte Carlo{bits}"
        table.append((label(r), r.mean, f"{note}; {r.seconds:.1f} s"))
    best = rows[len(ks) - 1]
    note = f"log p(x) in nats per image, {len(ctx.xs)} images"
    if ctx.ais_steps:
        annealed = rows[-1]
        gap = annealed.mean - best.mean
        noise = 2 * math.hypot(annealed.mc_stderr, best.mc_stderr)
        verdict = (
            f"AIS lies {gap:.2f} nats above IS at K={best.num_samples}: the importance-sampled "
            "estimate is loose here, so compare models by AIS"
            if gap > noise
            else f"IS at K={best.num_samples} agrees with AIS within Monte Carlo error"
        )
        table.append(("reading", round(gap, 4), verdict))
    return Section("Has log p(x) settled? (K and AIS)", table, note)


def _collapse(ctx: Context) -> Section:
    """KL per dimension, active units, mutual information; traversals of the busiest dims."""
    model, xs = ctx.model, ctx.xs
    kl = kl_per_dimension(model, xs)
    units, _ = active_units(model, ctx.x)
    mi = mutual_information(model, xs, seed=ctx.seed)
    ceiling = math.log(len(xs))
    ctx.results.update(kl_per_dim=kl.tolist(), active_units=units, mutual_information=mi)
    ctx.results["mutual_information_ceiling"] = ceiling
    z_dim = model.config.z_dim
    mi_reading = f"nats, at most log {len(xs)} = {ceiling:.2f}"
    if mi >= MI_SATURATED * ceiling:
        mi_reading += (
            "; at its ceiling: the codes tell these images apart, and with N images the "
            "estimate cannot say by how much more (diagnose more images: num_images, "
            "--num-images)"
        )
    rows = [
        ("active units", f"{units} / {z_dim}", "dims with Cov_x E[z|x] > 0.01"),
        ("KL, total", float(kl.sum()), "nats per image the code carries"),
        ("I_q(x; z)", mi, mi_reading),
    ]
    ctx.figures["kl_per_dim.png"] = bars(kl, xlabel="latent dimension", ylabel="KL (nats)")
    ctx.figures["traversals.png"] = _traversals(model, kl, ctx.seed)
    codes = encode(model, ctx.data)
    ctx.figures["latent_space.png"] = latent_space(codes, ctx.data.y)
    return Section("Did the code collapse?", rows)


def _traversals(model, kl: Tensor, seed: int):
    """Rows: the dimensions with the most KL, each moved from -2.5 to 2.5, the others at 0
    (seeded: a PixelCNN decoder's E[x|z] is a draw)."""
    z_dim = model.config.z_dim
    dims = kl.argsort(descending=True)[: min(z_dim, TRAVERSED_DIMS)].tolist()
    values = torch.linspace(-2.5, 2.5, 8)
    z = torch.zeros(len(dims), 8, z_dim)
    for row, j in enumerate(dims):
        z[row, :, j] = values
    device = next(model.parameters()).device
    with seeded(seed, device):
        images = model.to_images(model.decode_mean(z.reshape(-1, z_dim).to(device)))
    labels = [f"z{j}  KL {float(kl[j]):.2f}" for j in dims]
    title = "latent traversals (rows: the dimensions with the most KL)"
    return image_grid(images, nrow=len(dims), title=title, row_labels=labels)


def _amortization(ctx: Context) -> Section:
    xs = ctx.xs[:50]  # refining q per image costs 100 gradient steps each
    gap = amortization_gap(ctx.model, xs, steps=100, seed=ctx.seed)
    # a density of dequantized pixels, on the scale of the discrete likelihood
    levels = dequantized_levels(ctx.model.prepare(ctx.data[:1]))
    shift = -xs[0].numel() * math.log(levels) if levels else 0.0
    found = dataclasses.asdict(gap)
    for key in ("amortized_elbo", "refined_elbo", "log_likelihood"):
        found[key] += shift
    ctx.results["amortization"] = found
    rows = [
        ("amortized ELBO", found["amortized_elbo"], "the encoder's q"),
        ("refined ELBO", found["refined_elbo"], "q fitted to each image"),
        ("log p(x)", found["log_likelihood"], "importance-sampled with the refined q"),
        ("amortization gap", gap.amortization_gap, "nats lost to one encoder for all"),
        ("approximation gap", gap.approximation_gap, "nats lost to a Gaussian q"),
    ]
    note = f"per image, on {len(xs)} images"
    if levels:
        note += (
            f"; the density of one dequantized draw minus {xs[0].numel()} log {levels}: on the "
            "scale of the discrete likelihood"
        )
    return Section("What does amortization cost? (Cremer et al. 2018)", rows, note)


def _ppc(ctx: Context) -> Section:
    """Posterior predictive check of each image's mean intensity: p = P(T(x_rep) >= T(x)),
    replicated images weighted by their importance weights."""
    idata = ctx.found["posterior"]
    x_rep = torch.as_tensor(idata.posterior_predictive["x"].values[0])  # (K, N, ...)
    x_obs = torch.as_tensor(idata.observed_data["x"].values)  # (N, ...)
    log_w = torch.as_tensor(idata.sample_stats["log_importance_weight"].values[0])  # (K, N)
    t_rep, t_obs = x_rep.flatten(2).mean(-1), x_obs.flatten(1).mean(-1)
    p = (log_w.softmax(0) * (t_rep >= t_obs).double()).sum(0)
    ppc = {
        "mean_p": float(p.mean()),
        "extreme_share": float(((p < 0.05) | (p > 0.95)).double().mean()),
    }
    ctx.results["ppc"] = ppc
    rows = [
        (
            "mean p-value",
            ppc["mean_p"],
            "mean intensity of replicated vs observed images; near 0.5 is a match",
        ),
        (
            "extreme share",
            ppc["extreme_share"],
            "images with p < 0.05 or > 0.95; about 0.10 when the model is calibrated",
        ),
    ]
    return Section("Posterior predictive check", rows)


def _needs_gaussian_code(section):
    """Run ``section`` only for models with a Gaussian code (``gaussian_code``)."""

    def run(ctx: Context) -> Section | None:
        return section(ctx) if ctx.model.gaussian_code else None

    run.__name__ = section.__name__
    return run


def _needs_guide(section):
    """Run ``section`` only for models whose guide q(z|x) the report can weigh
    (``posterior_guide``, or ``gaussian_code``, which implies it)."""

    def run(ctx: Context) -> Section | None:
        model = ctx.model
        return section(ctx) if model.posterior_guide or model.gaussian_code else None

    run.__name__ = section.__name__
    return run


def _no_posterior(ctx: Context) -> Section | None:
    """For a model without a Gaussian code: what its guide's codes still show (active units,
    the latent space), and which sections it lacks."""
    model = ctx.model
    if model.gaussian_code:
        return None
    note = (
        "KL per dimension, mutual information, traversals and the amortization gap need a "
        "latent variable model with a Gaussian code (gaussian_code: lvm and pixellvm with the "
        "normal prior, the Gaussian guide and one layer)"
    )
    if not (model.posterior_guide and model.can_encode):
        return Section("Posterior", [], note)
    units, _ = active_units(model, ctx.x)
    codes = encode(model, ctx.data)
    ctx.results["active_units"] = units
    ctx.figures["latent_space.png"] = latent_space(codes, ctx.data.y)
    reading = "dims with Cov_x E[z|x] > 0.01, E[z|x] as encode(x).mean gives it"
    return Section("Codes", [("active units", f"{units} / {codes.shape[1]}", reading)], note)


def _samples(ctx: Context) -> Section | None:
    """Classifier-based quality of the model's samples against the (labelled) images."""
    model, data = ctx.model, ctx.reference or ctx.data
    if not model.can_sample or data.y is None or probe_problem(data.y):
        return None
    with seeded(ctx.seed):
        samples = model.sample_images(QUALITY_SAMPLES)
    real = scale(data).x if data.levels is not None else data.x
    q = sample_quality(samples.cpu(), real, data.y, seed=ctx.seed)
    ctx.results["sample_quality"] = q.row()
    real_score = f"real images: {q.real_inception_score:.2f}"
    rows = [
        ("Inception score", f"{q.inception_score:.2f}", real_score),
        ("Fréchet distance", f"{q.frechet_distance:.2f}", "to the real images' features"),
        ("classifier accuracy", f"{q.classifier_accuracy:.3f}", "held out; both rest on it"),
    ]
    note = (
        f"{QUALITY_SAMPLES} samples scored by a classifier trained here on "
        f"{'the training images' if ctx.reference is not None else 'these images'} "
        "(lvmkit.diagnostics.sample_quality): compare models on the same data only"
    )
    return Section("How good are the samples?", rows, note)


SECTIONS = [
    _training,
    _likelihood,
    _needs_guide(_trust),
    _settled,
    _needs_gaussian_code(_collapse),
    _needs_gaussian_code(_amortization),
    _needs_guide(_ppc),
    _no_posterior,
    _samples,
]


def _images(model, data: ImageData, seed: int) -> Tensor:
    """The images in model units, as the diagnostics score them: one seeded dequantized draw
    where the model dequantizes (so that densities minus D log levels bound the discrete
    likelihood), the model's own inputs otherwise."""
    prepared = model.prepare(data)
    if dequantized_levels(prepared) is None:
        return model.inputs(data)[0]
    with seeded(seed):
        return prepared.batch(torch.arange(len(prepared)))[0]


def diagnose(
    model,
    data: ImageData,
    *,
    summary: dict | None = None,
    evaluation: dict | None = None,
    num_samples: int = 200,
    num_images: int = 100,
    seed: int = 0,
    ais_steps: int | None = 50,
    title: str = "lvmkit report",
    progress: bool = False,
    reference: ImageData | None = None,
) -> Report:
    """Diagnose a fitted built-in model on ``data`` (e.g. the test split): PSIS k-hat of its
    guide, collapse (KL per dimension, active units, mutual information), the amortization gap,
    a posterior predictive check, and their pictures, where the model has a Gaussian code; the
    quality of its samples by a classifier trained on ``data``, where it samples and ``data``
    has labels.

    Parameters
    ----------
    model : BuiltinModel
        A fitted built-in model (``lvmkit.load_run(path).model``).
    data : ImageData
        Images to diagnose on, with labels for the latent-space picture and sample quality.
    summary, evaluation : dict, optional
        The fit's summary and ``evaluate``'s figures, shown first.
    num_samples : int
        Draws of q(z|x) per image for k-hat and the posterior.
    num_images : int
        How many of the images (the first) k-hat, log p(x) as K grows, KL, mutual information
        (whose estimate cannot exceed log num_images) and the posterior check look at; the
        amortization gap looks at up to 50 of them, active units and the latent space at all.
    seed : int
        Seeds every draw.
    ais_steps : int, optional
        AIS temperatures (16 chains) for the yardstick beside importance sampling; None
        leaves AIS out.
    title : str
        The report's title.
    progress : bool
        A progress bar over the sections.
    reference : ImageData, optional
        Labelled images the sample-quality classifier learns from and the samples are
        compared with (the training split: more images, a better classifier); default ``data``.

    Returns
    -------
    Report
        Tables with a one-line reading each, figures, ``results`` (JSON-able numbers) and
        ``posterior`` (``arviz.InferenceData``); ``save(folder)`` writes them.
    """
    instead = "lvmkit.posterior, psis_khat and the other functions of lvmkit.diagnostics"
    check_builtin(model, data, "diagnose", instead)
    check_count("num_samples", num_samples, minimum=MIN_PSIS_DRAWS)
    check_count("num_images", num_images)
    x = _images(model, data, seed)
    xs = x[:num_images]
    ctx = Context(model, data, x, xs, summary or {}, evaluation, num_samples, seed, ais_steps,
                  reference)  # fmt: skip
    sections = []
    for section in tqdm(SECTIONS, desc="diagnose", unit="section", disable=not progress):
        found = section(ctx)
        if found is not None:
            sections.append(found)
    return Report(title, sections, ctx.figures, ctx.results, ctx.found.get("posterior"))
