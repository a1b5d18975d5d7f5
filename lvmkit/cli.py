"""The command line, ``lvmkit fit | sample | complete | evaluate | diagnose | demo``: flags and
files. It calls only the built-in model contract (``lvmkit.models.base``) and library functions."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch

from lvmkit import data as lvdata
from lvmkit.core.files import check_writable, run_lock, write_text
from lvmkit.core.processes import group, process_device, set_threads
from lvmkit.data import BUNDLED, DATASETS
from lvmkit.diagnostics import (
    MIN_PSIS_DRAWS,
    convergence,
    convergence_plot,
    diagnose,
    encode,
    image_grid,
    linear_probe,
    loss_curve,
    probe_problem,
    reconstructions,
    sample_counts,
    save_figure,
)
from lvmkit.inference import NonFiniteLossError, em, evaluate, fit
from lvmkit.inference.evaluation import DEFAULT_SAMPLES, scores_discrete
from lvmkit.inference.likelihood import loss_bits_per_dim
from lvmkit.inference.programs import resolve_device
from lvmkit.models import MODELS, build_model
from lvmkit.models.registry import settings_help
from lvmkit.runs import (
    KEY_HELP,
    apply_settings,
    data_checksum,
    default_config,
    load_run,
    parse_settings,
    read_config,
    read_json,
    save_model,
    write_config,
)

MODEL_LINES = "\n".join(f"  {name:5} {entry.description}" for name, entry in MODELS.items())
EXAMPLES = f"""\
models:
{MODEL_LINES}

examples:
  lvmkit demo                                   # Gaussian-decoder LVM on the bundled digits
  lvmkit fit lvm --data digits --epochs 50 --out runs/lvm
  lvmkit fit gmm --data digits                  # 10 components, z summed out exactly
  lvmkit fit gmm --data digits --inference em   # the same mixture, fitted by EM
  lvmkit fit lvm --data mnist5k --set model.z_dim=16 --set fit.elbo=iwae   # 28x28 digits
  lvmkit fit lvm --data mnist --config run.toml --device cuda   # downloaded once, cached
  lvmkit fit lvm --data rows.npz --image-shape 1,28,28   # flat rows; x_train/x_test kept
  lvmkit fit lvm --help                         # lvm's settings with defaults and help
  lvmkit fit lvm --out runs/lvm --epochs 100 --resume   # continue a run to 100 epochs
  lvmkit sample runs/lvm                        # writes runs/lvm/samples.png
  lvmkit complete runs/lvm                      # fills in the bottom half of test digits
  lvmkit evaluate runs/lvm --num-samples 1000   # importance-sampled log p(x) on the test split
  lvmkit evaluate runs/lvm --data other.npz --split test   # on other data's test part
  lvmkit diagnose runs/lvm                      # report.html, diagnostics.json, posterior.nc

run.toml holds up to three tables, each optional; unknown keys are an error:
  [data]  name = "digits", split_seed = 0, val_fraction = 0.1, image_shape = [1, 28, 28]
  [model] the model's settings, e.g. z_dim = 8, likelihood = "categorical", net = "conv"
  [fit]   epochs = 100, batch_size = 64, lr = 1e-3, optimizer = "adam", elbo = "elbo",
          num_samples = 1, patience = 20, seed = 0, device = "auto", jit = false
"""
DEMO_EPOCHS = 200


def save_completions(model, x, path: Path, extra=()) -> Path:
    """A grid: data, the given top halves, completions (rows of len(x) images)."""
    known = model.top_half_known(x)
    filled = model.complete(x, known, *extra)
    rows = [x, torch.where(known, x, torch.zeros_like(x)), filled]
    images = torch.cat([model.to_images(r) for r in rows])
    title = "data / given (top half) / completion"
    return save_figure(image_grid(images, nrow=3, title=title), path)


def write_pictures(model, test: lvdata.ImageData, out: Path) -> list[Path]:
    """Samples, reconstructions and completions, each where the model can make them."""
    torch.manual_seed(0)
    paths = []
    if model.can_sample:
        grid = image_grid(model.sample_images(64), title="samples")
        paths.append(save_figure(grid, out / "samples.png"))
    x, *extra = model.inputs(test)
    if model.can_reconstruct:
        shown = [model.to_images(t) for t in (x[:16], model.reconstruct(x[:16]))]
        paths.append(save_figure(reconstructions(*shown), out / "reconstructions.png"))
    if model.can_complete:
        extra = [e[:8] for e in extra]
        paths.append(save_completions(model, x[:8], out / "completions.png", extra))
    return paths


def run_fit(
    model_name: str,
    config: dict,
    out: Path,
    *,
    resume: bool,
    progress: bool,
    inference: str = "svi",
) -> int:
    """Fit a built-in model; write the run directory. Returns the exit code."""
    dcfg, fcfg = config["data"], config["fit"]
    resolve_device(fcfg["device"])  # a device this machine lacks is refused before any file
    dataset = lvdata.load(dcfg["name"], image_shape=dcfg["image_shape"], levels=dcfg["levels"])
    train, val, test = lvdata.train_val_test(dataset, dcfg["val_fraction"], seed=dcfg["split_seed"])
    torch.manual_seed(fcfg["seed"])  # the nets' initial weights
    model = build_model(model_name, dataset.image_shape, dataset.levels, config["model"])
    if inference == "em" and not model.closed_form_em:
        with_em = [name for name, entry in MODELS.items() if entry.cls.closed_form_em]
        raise ValueError(
            f"--inference em is for {', '.join(with_em)} here (closed-form EM); for other "
            "models use lvmkit.em in Python"
        )
    if dataset.y is not None and model.can_encode and probe_problem(dataset.y):
        print(f"lvmkit: no linear probe: {probe_problem(dataset.y)}", file=sys.stderr)
    train_data, val_data = model.prepare(train), model.prepare(val)
    model.initialize(train_data, seed=fcfg["seed"])
    check_writable(*(out / name for name in RUN_OUTPUTS))  # before the fit, not after it
    set_threads(fcfg["threads"])
    main = group(resolve_device(process_device(fcfg["device"]))).main  # torchrun: rank 0 writes
    # a second process fitting into ``out`` is refused, naming this one
    with run_lock(out) if main else nullcontext():
        return _fit_into(
            model_name,
            model,
            config,
            out,
            dataset,
            (train_data, val_data, test),
            resume=resume,
            progress=progress,
            inference=inference,
            main=main,
        )


def _fit_into(
    model_name, model, config, out, dataset, splits, *, resume, progress, inference, main=True
):
    """run_fit's second half: fit and write the run directory, holding its lock. Under
    torchrun every process fits; rank 0 (``main``) writes the files."""
    dcfg, fcfg = config["data"], config["fit"]
    fcfg = {k: v for k, v in fcfg.items() if k != "threads"}  # set for the process already
    fcfg["device"] = process_device(fcfg["device"])
    train_data, val_data, test = splits
    if not resume and main:  # a resumed run's file is rewritten only once the checkpoint took it
        write_config(config, out / "config.toml")

    if inference == "em":  # closed-form EM, in float64 as scikit-learn
        result = em(
            model,
            train_data.double(),
            max_iter=fcfg["epochs"],  # at most; it stops when the log-likelihood settles
            device=fcfg["device"],
            seed=fcfg["seed"],
        )
        model.float()
    else:
        result = fit(
            model.model,
            model.guide,
            train_data,
            val_data=val_data,
            checkpoint_dir=out,
            resume=resume,
            overwrite=not resume,  # lvmkit fit refused a run in ``out`` without --overwrite
            progress=progress,
            **fcfg,
        )
        if resume and main:
            write_config(config, out / "config.toml")  # its epochs, or where the data now are
    if not main:
        return 130 if result.interrupted else 0
    rows = []
    for i, loss in enumerate(result.losses):
        row = {"epoch": i + 1, "loss": loss}
        if i < len(result.val_losses):
            row["val_loss"] = result.val_losses[i]
        rows.append(json.dumps(row) + "\n")
    write_text(out / "metrics.jsonl", "".join(rows))
    if result.interrupted:
        print(
            f"interrupted after {result.epochs} epochs; checkpoint: {result.checkpoint}\n"
            f"continue with: lvmkit fit {model_name} --out {out} --resume",
            file=sys.stderr,
        )
        return 130

    model.cpu().eval()
    data_info = {
        "name": dcfg["name"],
        "split_seed": dcfg["split_seed"],
        "val_fraction": dcfg["val_fraction"],
        "image_shape": list(dataset.image_shape),
        "levels": dataset.levels,
        "sha256": data_checksum(dataset),  # evaluate and diagnose refuse data changed since
    }
    save_model(model, model_name, data_info, out / "model.pt")
    summary = {
        "model": model_name,
        "inference": inference,
        "data": dcfg["name"],
        "epochs": result.epochs,
        "train_loss": result.losses[-1],
        "elapsed_s": result.elapsed,
        "device": result.device,
    }
    summary["model_epoch"] = result.params_epoch  # the epoch whose parameters model.pt holds
    if result.val_losses:
        summary["val_loss"] = result.val_losses[result.params_epoch - 1]  # model.pt's epoch's
        summary["best_epoch"] = result.best_epoch
        summary["best_val_loss"] = result.val_losses[result.best_epoch - 1]
        if scores_discrete(model, val_data):
            # the loss on the data's own scale: bits/dim of a bound on the discrete likelihood
            summary["val_bits_per_dim"] = loss_bits_per_dim(summary["val_loss"], val_data)
    if dataset.y is not None and model.can_encode and not probe_problem(dataset.y):
        summary["linear_probe_accuracy"] = linear_probe(encode(model, dataset), dataset.y)
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    paths = [
        out / "config.toml",
        out / "metrics.jsonl",
        *([result.checkpoint] if result.checkpoint else []),
        out / "model.pt",
        out / "summary.json",
        save_figure(loss_curve(result.losses, result.val_losses), out / "losses.png"),
    ]
    paths += write_pictures(model, test, out)
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}
    print(f"fitted {model_name}: {json.dumps(shown)}")
    print(f"run directory: {out}")
    for p in paths:
        print(f"  {p}")
    return 0


def run_sample(path: Path, n: int, seed: int) -> int:
    """Write RUN/samples.png: n draws from a fitted model."""
    model = load_run(path).model
    check_writable(path / "samples.png")
    torch.manual_seed(seed)
    out = save_figure(image_grid(model.sample_images(n), title="samples"), path / "samples.png")
    print(f"wrote {out}")
    return 0


def run_complete(path: Path, n: int, seed: int) -> int:
    """Write RUN/completions.png: the bottom halves of n test images filled in."""
    run = load_run(path)
    check_writable(path / "completions.png")
    torch.manual_seed(seed)
    x, *extra = run.model.inputs(run.test_data())
    out = save_completions(run.model, x[:n], path / "completions.png", [e[:n] for e in extra])
    print(f"wrote {out}")
    return 0


def run_evaluate(
    path: Path,
    num_samples: int | None,
    seed: int,
    progress: bool = True,
    data: str | None = None,
    split: str | None = None,
    method: str = "importance",
    steps: int = 100,
) -> int:
    """log p(x) into RUN/evaluation.json: exact where the model can say it, importance-sampled
    with the model's guide otherwise. On the run's own test part by default; ``data`` scores
    another file (its ``split`` part where it carries a split, else all of it)."""
    run = load_run(path)
    if data is None:
        parts = dict(zip(("train", "val", "test"), run.splits(), strict=True))
        split = split or "test"
        if split not in parts:
            raise ValueError(f"--split {split!r}: the run's data have parts {list(parts)}")
        scored = parts[split]
    else:
        scored = run.load_data(data)
        if scored.splits:
            split = split or "test"
            scored = scored.part(split)
        elif split is not None:
            raise ValueError(f"--split {split}: {data} carries no split; leave --split out")
        else:
            split = "all"
    # the run's own test part goes to evaluation.json (the report reads it); other data or
    # parts to files of their own, so that none replaces another
    own = data is None and split == "test"
    name = f"{Path(data).stem}-{split}" if data is not None else split
    out = path / ("evaluation.json" if own else f"evaluation-{name}.json")
    check_writable(out)
    if scored.image_shape != tuple(run.data["image_shape"]):
        raise ValueError(
            f"{data}: images of shape {scored.image_shape}, but the run's model takes "
            f"{tuple(run.data['image_shape'])}"
        )
    model = run.model
    num_samples = num_samples or DEFAULT_SAMPLES[method]
    common = dict(seed=seed, progress=progress)
    if model.density == "importance":  # log p(x) as K grows, then the estimate asked for
        prepared = model.prepare(scored)
        largest = DEFAULT_SAMPLES["importance"] if method == "ais" else num_samples
        rows = convergence(
            model.model,
            model.guide,
            prepared,
            ks=sample_counts(largest),
            ais_steps=steps if method == "ais" else None,
            ais_chains=num_samples,
            discrete=scores_discrete(model, prepared),
            **common,
        )
        ll = rows[-1]
    else:
        rows = []
        ll = evaluate(model, scored, method=method, num_samples=num_samples, **common)
    est = {"log_likelihood": ll.mean, "stderr": ll.stderr, "mc_stderr": ll.mc_stderr}
    # the keys say what they are; the unit, once (bits_per_dim, where defined, is in bits)
    est |= {"unit": "nats per datapoint", "exact": ll.exact, "method": ll.method}
    if not ll.exact:
        est["num_samples"] = ll.num_samples
    if ll.steps is not None:
        est["steps"] = ll.steps
    if ll.bits_per_dim is not None:
        est["bits_per_dim"] = ll.bits_per_dim
    if rows:
        est["convergence"] = [r.row() for r in rows]
    est["data"], est["split"] = data or run.data["name"], split
    if group().main:  # under torchrun every process scored its share; rank 0 writes
        write_text(out, json.dumps(est, indent=2) + "\n")
        shown = {k: v for k, v in est.items() if k != "convergence"}
        print(f"{json.dumps(shown)}\nwrote {out}")
        if rows:
            picture = out.with_name(out.stem.replace("evaluation", "convergence") + ".png")
            save_figure(convergence_plot(rows), picture)
            for r in rows:
                print(f"  {r}")
            print(f"wrote {picture}")
    return 0


def run_diagnose(
    path: Path, num_samples: int = 200, num_images: int = 100, seed: int = 0, progress: bool = True
) -> int:
    """report.html, diagnostics.json and (for models with a Gaussian code) posterior.nc."""
    run = load_run(path)
    evaluation = read_json(path / "evaluation.json")
    check_writable(*(path / n for n in ("report.html", "diagnostics.json", "posterior.nc")))
    report = diagnose(
        run.model,
        run.test_data(),
        summary=run.summary,
        evaluation=evaluation,
        num_samples=num_samples,
        num_images=num_images,
        seed=seed,
        title=f"lvmkit report: {path.name}",
        progress=progress,
    )
    pictures = ("losses.png", "samples.png", "reconstructions.png", "completions.png")
    report.figures = {n: path / n for n in pictures if (path / n).exists()} | report.figures
    page = report.save(path)
    written = [page, path / "diagnostics.json"]
    written += [path / "posterior.nc"] if report.posterior is not None else []
    written += [path / name for name, fig in report.figures.items() if not isinstance(fig, Path)]
    print(f"report: {page}")
    for p in written[1:]:
        print(f"  {p}")
    return 0


def _positive(kind, minimum=None):
    """An argparse type: a number of ``kind`` above 0 (and at least ``minimum``)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text} must be above 0")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"{text} must be at least {minimum}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _threads(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of threads, or auto")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} must lie strictly between 0 and 1")
    return value


def _shape(text: str) -> list[int]:
    try:
        shape = [int(v) for v in text.split(",")]
    except ValueError:
        shape = []
    if len(shape) != 3 or shape[0] not in (1, 3) or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give C,H,W with C = 1 or 3, e.g. 1,28,28")
    return shape


def _parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line; ``lvmkit fit NAME --help`` lists NAME's settings too."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="lvmkit",
        description="Fit, evaluate and inspect latent variable models.",
        epilog=EXAMPLES,
        formatter_class=fmt,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    named = argv[1] if len(argv) > 1 and argv[0] == "fit" and argv[1] in MODELS else None
    epilog = EXAMPLES
    if named:
        tables = [settings_help(named)]
        for table in ("fit", "data"):
            tables.append(f"[{table}] settings (--set {table}.KEY=VALUE):")
            for key, value in default_config(named)[table].items():
                shown = "none" if value is None else json.dumps(value)
                tables.append(f"  {key} = {shown}\n      {KEY_HELP[key]}")
        epilog = "\n".join(tables) + f"\n\n{EXAMPLES}"
    p = sub.add_parser("fit", help="fit a built-in model", epilog=epilog, formatter_class=fmt)
    p.add_argument("model", help=f"one of {sorted(MODELS)}")
    p.add_argument(
        "--data",
        help="a named dataset (digits, mnist5k, mnist, fashion-mnist, cifar10) or a path "
        "(IDX files, .npy/.npz, PNG folder)",
    )
    p.add_argument("--config", type=Path, help="a TOML file with [data], [model], [fit] tables")
    p.add_argument("--epochs", type=_positive(int))
    p.add_argument("--batch-size", type=_positive(int))
    p.add_argument("--lr", type=_positive(float))
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--val-fraction",
        type=_fraction,
        help="validation share: of the train part if the data carry a split (default 0.1)",
    )
    p.add_argument(
        "--image-shape", type=_shape, help="read flat rows (N, D) as images C,H,W, e.g. 1,28,28"
    )
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--out", type=Path, help="run directory (default runs/MODEL)")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in OUT with its own settings"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a run already in OUT")
    p.add_argument(
        "--jit", action="store_true", default=None, help="run the steps from a trace of the loss"
    )
    p.add_argument(
        "--inference", default="svi", choices=["svi", "em"], help="svi (default), or em for gmm"
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="TABLE.KEY=VALUE",
        help="a setting, as in the TOML: --set model.z_dim=16 --set fit.elbo=iwae (repeatable)",
    )
    p.add_argument(
        "--threads",
        type=_threads,
        help="torch threads per process (default auto: the cores not busy, shared out)",
    )
    p.add_argument(
        "--nproc",
        type=_positive(int),
        default=1,
        help="data-parallel processes on this machine (as torchrun would start them)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    for name, help_ in [
        ("sample", "write RUN/samples.png from a fitted model"),
        ("complete", "fill in the bottom half of test images: completions.png"),
    ]:
        s = sub.add_parser(name, help=help_)
        s.add_argument("run", type=Path, help="a run directory written by lvmkit fit")
        s.add_argument("--n", type=_positive(int), default=64 if name == "sample" else 8)
        s.add_argument("--seed", type=int, default=0)
    g = sub.add_parser("diagnose", help="report.html, diagnostics.json, posterior.nc for a run")
    g.add_argument("run", type=Path, help="a run directory written by lvmkit fit")
    g.add_argument(
        "--num-samples",
        type=_positive(int, MIN_PSIS_DRAWS),
        default=200,
        help="draws of q(z|x) per image",
    )
    g.add_argument(
        "--num-images",
        type=_positive(int),
        default=100,
        help="test images the posterior diagnostics use",
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    e = sub.add_parser("evaluate", help="log p(x) and bits/dim on the test split")
    e.add_argument("run", type=Path, help="a run directory written by lvmkit fit")
    e.add_argument(
        "--method",
        choices=["importance", "ais"],
        default="importance",
        help="importance sampling with the model's encoder (default), or AIS from it",
    )
    e.add_argument(
        "--num-samples",
        type=_positive(int),
        help="importance samples per image (default 1000), or AIS chains (default 16)",
    )
    e.add_argument(
        "--steps", type=_positive(int), default=100, help="AIS temperatures (default 100)"
    )
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--data", help="score other data (a path or a name) instead of the run's")
    e.add_argument(
        "--split",
        choices=["train", "val", "test"],
        help="which part to score (default test; with --data, the file's own split)",
    )
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    d = sub.add_parser("demo", help="the Gaussian-decoder LVM on digits, under a minute on CPU")
    d.add_argument("--out", type=Path, default=Path("runs/demo"))
    d.add_argument("--epochs", type=_positive(int), default=DEMO_EPOCHS)
    d.add_argument("--no-progress", action="store_true")
    return parser


RUN_FILES = ("config.toml", "checkpoint.pt", "model.pt")  # a folder holding one holds a run
RUN_OUTPUTS = (*RUN_FILES, "metrics.jsonl", "summary.json", "losses.png", "samples.png")


# Flags that are short for a setting: flag name -> (table, key).
SHORT_FLAGS = {
    "data": ("data", "name"),
    "val_fraction": ("data", "val_fraction"),
    "image_shape": ("data", "image_shape"),
    **{k: ("fit", k) for k in ("epochs", "batch_size", "lr", "seed", "device", "jit", "threads")},
}
# Settings a resume may change: neither epochs nor jit changes what is computed, and the data
# may have moved (the checkpoint's fingerprint of them refuses other data).
RESUME_MAY_CHANGE = {("fit", "epochs"), ("fit", "jit"), ("fit", "threads"), ("data", "name")}


def _fit_config(args, out: Path) -> dict:
    """The settings of ``lvmkit fit``: a resumed run's own config.toml, else the defaults and
    --config; then --set and the short flags, checked like the TOML. Refuses to replace a run
    unless --resume or --overwrite, and on resume any change to a setting but those in
    RESUME_MAY_CHANGE."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the run")
    held = [n for n in RUN_FILES if (out / n).exists()]
    # under torchrun rank 0 alone decides (the others may find the files it has begun to write)
    if held and not (args.resume or args.overwrite) and os.environ.get("RANK", "0") == "0":
        raise ValueError(
            f"{out} holds a run already ({', '.join(held)}): continue it with --resume, "
            "replace it with --overwrite, or give another --out"
        )
    if args.data is not None and not args.data.strip():
        raise ValueError("--data is empty; give 'digits' or a path to your data")
    run_config = out / "config.toml"
    if args.resume and not (out / "checkpoint.pt").exists() and (out / "model.pt").exists():
        raise ValueError(
            f"{out} holds a finished run without its checkpoint.pt, so it cannot be continued; "
            "--overwrite replaces it, or give another --out"
        )
    resumed = args.resume and run_config.exists()
    if resumed and args.config is not None:
        raise ValueError(
            f"--resume continues {out} with its own config.toml; leave --config out (or start "
            "a new run in another folder)"
        )
    config = read_config(run_config if resumed else args.config, args.model)
    settings = parse_settings(args.set or [])
    for flag, (table, key) in SHORT_FLAGS.items():
        if getattr(args, flag) is not None:
            settings.setdefault(table, {})[key] = getattr(args, flag)
    if settings.get("data", {}).get("name") is not None:
        name = settings["data"]["name"]
        if name not in (*BUNDLED, *DATASETS) and Path(name).expanduser().exists():
            # a run is evaluated and resumed from anywhere: keep where its data are, absolutely
            settings["data"]["name"] = str(Path(name).expanduser().resolve())
    if resumed:
        for table, values in settings.items():
            for key, value in values.items():
                was = config.get(table, {}).get(key, value)
                if (table, key) not in RESUME_MAY_CHANGE and not _same(was, value):
                    raise ValueError(
                        f"{out} was fitted with [{table}] {key} = {was!r}, not {value!r}: "
                        "resume it without that setting (only epochs, jit, threads and where "
                        "the data are may change), or start a new run in another folder"
                    )
    return apply_settings(config, settings, args.model, "--set" if args.set else "flags")


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def main(argv: list[str] | None = None) -> int:
    """The ``lvmkit`` command; returns its exit code (2 for bad input, 130 if interrupted).
    Warnings print as one line each, like its errors."""
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        return _main(argv)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"lvmkit: {category.__name__}: {message}", file=sys.stderr)


def _main(argv: list[str] | None) -> int:
    args = _parser(argv).parse_args(argv)
    progress = not getattr(args, "no_progress", False)
    try:
        if args.command == "demo":
            config = default_config("lvm")
            config["fit"]["epochs"] = args.epochs
            code = run_fit("lvm", config, args.out, resume=False, progress=progress)
            # the demo ends with the report
            return code or run_diagnose(args.out, progress=progress)
        if args.command == "sample":
            return run_sample(args.run, args.n, args.seed)
        if args.command == "complete":
            return run_complete(args.run, args.n, args.seed)
        if args.command == "diagnose":
            return run_diagnose(args.run, args.num_samples, args.num_images, args.seed, progress)
        if args.command == "evaluate":
            return run_evaluate(
                args.run,
                args.num_samples,
                args.seed,
                progress,
                args.data,
                args.split,
                method=args.method,
                steps=args.steps,
            )
        if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
            return _launch_local(args.nproc, argv if argv is not None else sys.argv[1:])
        out = args.out or Path("runs") / args.model
        config = _fit_config(args, out)
        if args.resume and not (out / "checkpoint.pt").exists():
            note = f"lvmkit: {out} holds no checkpoint to resume; starting a new run"
            print(note, file=sys.stderr)
            args.resume = False
        return run_fit(
            args.model,
            config,
            out,
            resume=args.resume,
            progress=progress,
            inference=args.inference,
        )
    except NonFiniteLossError as err:
        if args.debug:
            raise
        print(f"lvmkit: training diverged: {err}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as err:  # bad input of any kind, CheckpointError included;
        if args.debug:  # files that cannot be read or written
            raise
        print(f"lvmkit: error: {_error_line(err)}", file=sys.stderr)
        return 2


def _launch_local(nproc: int, argv: list[str]) -> int:
    """Run this ``lvmkit`` command as ``nproc`` data-parallel processes on this machine, with
    the environment torchrun gives its workers (RANK, WORLD_SIZE, MASTER_ADDR, ...). Started
    here rather than through torchrun so that a signal reaches each worker exactly once (each
    writes its part and stops cleanly) and the exit code is the workers' own (130 when
    interrupted); if one fails, the others are stopped rather than left waiting for it."""
    rest, skip = [], False
    for a in argv:  # the command without --nproc, which the workers must not act on again
        if skip or a == "--nproc" or a.startswith("--nproc="):
            skip = a == "--nproc" and not skip
            continue
        rest.append(a)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workers = []
    for rank in range(nproc):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}  # fmt: skip
        cmd = [sys.executable, "-m", "lvmkit.cli", *rest]
        workers.append(subprocess.Popen(cmd, env=env, start_new_session=True))

    def forward(signum, frame):
        for w in workers:
            if w.poll() is None:
                w.send_signal(signum)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while any(w.poll() is None for w in workers):
            failed = [w for w in workers if w.poll() not in (None, 0, 130)]
            if failed:  # the others would wait for it in their next collective call
                for w in workers:
                    if w.poll() is None:
                        w.kill()
            time.sleep(0.2)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    codes = [w.returncode for w in workers]
    return next((c for c in codes if c not in (0, 130)), codes[0])


def _error_line(err: Exception) -> str:
    """One line for an error: an OSError as what happened to which file and what to check."""
    if isinstance(err, OSError) and err.strerror and err.filename:
        return (
            f"{err.filename}: {err.strerror.lower()}; check that the path is right and that you "
            "may write there (--debug shows where it happened)"
        )
    return str(err)


if __name__ == "__main__":
    sys.exit(main())
