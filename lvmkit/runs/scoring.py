"""Scoring and inspecting a finished run: ``evaluate_run`` (log p(x) into evaluation.json) and
``diagnose_run`` (report.html, diagnostics.json, posterior.nc)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from lvmkit.core.files import check_writable, write_text
from lvmkit.core.processes import group
from lvmkit.diagnostics import convergence, convergence_plot, diagnose, sample_counts, save_figure
from lvmkit.inference import evaluate
from lvmkit.inference.evaluation import DEFAULT_SAMPLES, scores_discrete
from lvmkit.runs.directory import load_run, read_json


def _scored(run, data: str | None, split: str | None):
    """The data to score, the part's name, and the file the estimate goes to: the run's own
    test part goes to evaluation.json (the report reads it); other data or parts to files of
    their own, so that none replaces another."""
    if data is None:
        parts = dict(zip(("train", "val", "test"), run.splits(), strict=True))
        split = split or "test"
        if split not in parts:
            raise ValueError(f"split {split!r}: the run's data have parts {list(parts)}")
        scored = parts[split]
    else:
        scored = run.load_data(data)
        if scored.splits:
            split = split or "test"
            scored = scored.part(split)
        elif split is not None:
            raise ValueError(f"split {split!r}: {data} carries no split; leave split out")
        else:
            split = "all"
    own = data is None and split == "test"
    name = f"{Path(data).stem}-{split}" if data is not None else split
    out = run.path / ("evaluation.json" if own else f"evaluation-{name}.json")
    if scored.image_shape != tuple(run.data["image_shape"]):
        raise ValueError(
            f"{data}: images of shape {scored.image_shape}, but the run's model takes "
            f"{tuple(run.data['image_shape'])}"
        )
    return scored, split, out


def evaluate_run(path, *, num_samples: int | None = None, seed: int = 0, progress: bool = True,
                 data: str | None = None, split: str | None = None, method: str | None = None,
                 steps: int = 100) -> tuple[dict, list[Path]]:  # fmt: skip
    """log p(x) of the run's model into RUN/evaluation.json (``lvmkit evaluate``), in the way
    its family allows (see ``lvmkit.evaluate``); for a model with a guide also the estimate as
    K grows, into RUN/convergence.png.

    Parameters
    ----------
    path : str or Path
        The run directory.
    num_samples : int, optional
        Importance samples, AIS chains or a flow's dequantizations per image.
    seed : int
    progress : bool
    data : str, optional
        Score other data (a path or a name) instead of the run's own test part.
    split : {"train", "val", "test"}, optional
        Which part to score (default test; with ``data``, the file's own split where it has one,
        else all of it).
    method : {"importance", "ais"}, optional
        None: AIS for a GAN, importance sampling for a model with a guide.
    steps : int
        AIS temperatures.

    Returns
    -------
    tuple of (dict, list of Path)
        The estimate as evaluation.json holds it, and the files written.
    """
    run = load_run(path)
    scored, split, out = _scored(run, data, split)
    check_writable(out)
    model = run.model
    common = dict(seed=seed, progress=progress)
    rows = []
    if model.density == "importance":  # log p(x) as K grows, then the estimate asked for
        method = method or "importance"
        num_samples = num_samples or DEFAULT_SAMPLES[method]
        prepared = model.prepare(scored)
        largest = DEFAULT_SAMPLES["importance"] if method == "ais" else num_samples
        rows = convergence(model.model, model.guide, prepared, ks=sample_counts(largest),
                           ais_steps=steps if method == "ais" else None, ais_chains=num_samples,
                           discrete=scores_discrete(model, prepared), **common)  # fmt: skip
        ll = rows[-1]
    else:
        ll = evaluate(model, scored, method=method, num_samples=num_samples, steps=steps,
                      **common)  # fmt: skip
    est = {"log_likelihood": ll.mean, "stderr": ll.stderr, "mc_stderr": ll.mc_stderr}
    # the keys say what they are; the unit, once (bits_per_dim, where defined, is in bits)
    est |= {"unit": "nats per datapoint", "exact": ll.exact, "method": ll.method}
    if ll.method in ("importance", "ais", "dequantized"):
        est["num_samples"] = ll.num_samples
    if ll.method == "bound":
        est["bound"] = model.bound
    if ll.steps is not None:
        est["steps"] = ll.steps
    if ll.bits_per_dim is not None:
        est["bits_per_dim"] = ll.bits_per_dim
    if rows:
        est["convergence"] = [r.row() for r in rows]
    est["data"], est["split"] = data or run.data["name"], split
    est["model_epoch"] = run.summary.get("model_epoch")  # which fit it measured (resumes move on)
    written = []
    if group().main:  # under torchrun every process scored its share; rank 0 writes
        written.append(write_text(out, json.dumps(est, indent=2) + "\n"))
        if rows:
            picture = out.with_name(out.stem.replace("evaluation", "convergence") + ".png")
            written.append(save_figure(convergence_plot(rows), picture))
    return est, written


def diagnose_run(path, *, num_samples: int = 200, num_images: int = 100, seed: int = 0,
                 progress: bool = True) -> list[Path]:  # fmt: skip
    """report.html, diagnostics.json and (for models with a Gaussian code) posterior.nc in the
    run directory (``lvmkit diagnose``).

    Parameters
    ----------
    path : str or Path
        The run directory.
    num_samples, num_images, seed, progress
        As for ``lvmkit.diagnose``; its sample quality is measured with a classifier trained on
        the run's training split.

    Returns
    -------
    list of Path
        The files written, the report first.
    """
    path = Path(path)
    run = load_run(path)
    evaluation = read_json(path / "evaluation.json")
    if evaluation is not None and evaluation.get("model_epoch") != run.summary.get("model_epoch"):
        warnings.warn(
            f"{path / 'evaluation.json'} measured the model of epoch "
            f"{evaluation.get('model_epoch')}, and model.pt now holds epoch "
            f"{run.summary.get('model_epoch')}: left out of the report; run lvmkit evaluate "
            "again",
            stacklevel=2,
        )
        evaluation = None
    check_writable(*(path / n for n in ("report.html", "diagnostics.json", "posterior.nc")))
    train, _, test = run.splits()
    report = diagnose(run.model, test, summary=run.summary, evaluation=evaluation,
                      num_samples=num_samples, num_images=num_images, seed=seed,
                      title=f"lvmkit report: {path.name}", progress=progress,
                      reference=train)  # fmt: skip
    pictures = ("losses.png", "samples.png", "reconstructions.png", "completions.png")
    report.figures = {n: path / n for n in pictures if (path / n).exists()} | report.figures
    page = report.save(path)
    written = [page, path / "diagnostics.json"]
    written += [path / "posterior.nc"] if report.posterior is not None else []
    written += [path / name for name, fig in report.figures.items() if not isinstance(fig, Path)]
    return written
