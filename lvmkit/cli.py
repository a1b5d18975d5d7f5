"""The command line, ``lvmkit fit | sample | complete | demo``: the only module that knows files,
flags and run directories."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

from lvmkit import data as lvdata
from lvmkit.diagnostics import (
    encode,
    linear_probe,
    save_image_grid,
    save_loss_curve,
    save_reconstructions,
)
from lvmkit.inference import (
    CheckpointError,
    NonFiniteLossError,
    fit,
    load_checkpoint,
    resolve_device,
)
from lvmkit.inference.checkpoint import save_checkpoint
from lvmkit.inference.em import fit_em
from lvmkit.inference.importance import log_likelihood
from lvmkit.models import MODELS, build_model
from lvmkit.models.registry import config_fields, rebuild

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MODEL_LINES = "\n".join(f"  {name:5} {MODELS[name][3]}" for name in MODELS)
EXAMPLES = f"""\
models:
{MODEL_LINES}

examples:
  lvmkit demo                                   # Gaussian-decoder LVM on the bundled digits
  lvmkit fit lvm --data digits --epochs 50 --out runs/lvm
  lvmkit fit gmm --data digits                  # 10 components, z summed out exactly
  lvmkit fit gmm --data digits --inference em   # the same mixture, fitted by EM
  lvmkit fit lvm --data train-images-idx3-ubyte.gz --config run.toml --device cuda
  lvmkit fit lvm --out runs/lvm --epochs 100 --resume   # continue a run to 100 epochs
  lvmkit sample runs/lvm                        # writes runs/lvm/samples.png
  lvmkit complete runs/lvm                      # fills in the bottom half of test digits
  lvmkit evaluate runs/lvm --num-samples 1000   # importance-sampled log p(x) on the test split

run.toml holds up to three tables, each optional; unknown keys are an error:
  [data]  name = "digits", split_seed = 0
  [model] the model's settings, e.g. z_dim = 8, likelihood = "categorical", net = "conv"
  [fit]   epochs = 100, batch_size = 64, lr = 1e-3, optimizer = "adam", elbo = "elbo",
          num_particles = 1, patience = 20, seed = 0, device = "auto", jit = false
"""

DATA_DEFAULTS = {"name": "digits", "split_seed": 0}
SPLIT = (0.8, 0.1, 0.1)  # train / validation / test fractions of every run
FIT_DEFAULTS = {
    "epochs": 100,
    "batch_size": 64,
    "lr": 1e-3,
    "optimizer": "adam",
    "elbo": "elbo",
    "num_particles": 1,
    "patience": None,
    "seed": 0,
    "device": "auto",
    "jit": False,
}
DEMO_EPOCHS = 200


def default_config(model_name: str) -> dict:
    """The defaults of a run of this model: {data, model, fit} tables."""
    model_cls = MODELS[model_name][0]
    fit_defaults = dict(FIT_DEFAULTS)
    fit_defaults["elbo"] = getattr(model_cls, "default_elbo", "elbo")
    fit_defaults["num_particles"] = getattr(model_cls, "default_particles", 1)
    return {"data": dict(DATA_DEFAULTS), "model": config_fields(model_name), "fit": fit_defaults}


def read_config(path: Path | None, model_name: str) -> dict:
    """The run's config: defaults, updated by the TOML file; unknown tables or keys are errors."""
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose one of {sorted(MODELS)}")
    config = default_config(model_name)
    if path is None:
        return config
    try:
        with open(path, "rb") as f:
            loaded = tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"no config file at {path}") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path} is not valid TOML: {err}") from None
    for table, values in loaded.items():
        if table not in config or not isinstance(values, dict):
            raise ValueError(f"{path}: unknown table [{table}]; valid tables are {list(config)}")
        unknown = sorted(set(values) - set(config[table]))
        if unknown:
            raise ValueError(
                f"{path}: unknown key(s) {unknown} in [{table}]; valid keys are "
                f"{sorted(config[table])}"
            )
        config[table].update(values)
    return config


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def write_config(config: dict, path: Path) -> None:
    """Write the resolved config as TOML (None values are left out: TOML has no null)."""
    lines = []
    for table, values in config.items():
        lines.append(f"[{table}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
        lines.append("")
    path.write_text("\n".join(lines))


def _images(model, x: torch.Tensor, image_shape) -> torch.Tensor:
    """Model-unit data -> (N, C, H, W) in [0, 1] for pictures."""
    x = x.reshape(len(x), *image_shape).float()
    levels = getattr(model.config, "levels", None)
    if getattr(model.config, "likelihood", None) in ("categorical", "logistic", "pixelcnn"):
        x = x / (levels - 1)
    return x


def draw_samples(model, n: int) -> torch.Tensor:
    """Samples from a built-in model, in model units (E[x|z] for the LVM, for a clear grid)."""
    if hasattr(model, "decode"):
        return model.sample(n, mean=True)
    if hasattr(model, "component"):
        return model.sample(n)[0]
    if hasattr(model, "prior_net"):
        raise ValueError("the conditional model generates given part of an image: use complete")
    return model.sample(n)


def split_inputs(prepared) -> tuple[torch.Tensor, tuple]:
    """A model's prepared data -> (images, the other inputs its methods take, e.g. classes)."""
    if isinstance(prepared, tuple):
        return prepared[0], prepared[1:]
    return getattr(prepared, "x", prepared), ()


def completions(model, x: torch.Tensor, image_shape, extra=()) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill in the bottom half of each image; returns (known mask, completed), model units."""
    known = torch.zeros(len(x), *image_shape, dtype=torch.bool)
    known[..., : image_shape[-2] // 2, :] = True
    known = known.reshape(x.shape)
    return known, model.complete(x, known, *extra)


def save_completions(model, x, image_shape, path: Path, extra=()) -> Path:
    """A grid: data, the given top halves, completions (rows of n images)."""
    known, filled = completions(model, x, image_shape, extra)
    shown = _images(model, torch.where(known, x, torch.zeros_like(x)), image_shape)
    rows = [_images(model, x, image_shape), shown, _images(model, filled, image_shape)]
    return save_image_grid(
        torch.cat(rows), path, nrow=3, title="data / given (top half) / completion"
    )


def write_pictures(model, test_x, image_shape, out: Path, extra=()) -> list[Path]:
    """Samples, reconstructions and completions, each where the model supports it."""
    torch.manual_seed(0)
    paths = []
    try:
        paths.append(
            save_image_grid(
                _images(model, draw_samples(model, 64), image_shape),
                out / "samples.png",
                title="samples",
            )
        )
    except ValueError:
        pass  # autoencoders and the conditional model have no unconditional samples
    if hasattr(model, "reconstruct"):
        x = test_x[:16]
        paths.append(
            save_reconstructions(
                _images(model, x, image_shape),
                _images(model, model.reconstruct(x), image_shape),
                out / "reconstructions.png",
            )
        )
    extra = tuple(e[:8] for e in extra)
    paths.append(save_completions(model, test_x[:8], image_shape, out / "completions.png", extra))
    return paths


class _EMRun:
    """An EM run, in the shape run_fit reads from a FitResult."""

    def __init__(self, result, elapsed: float, device: str):
        self.losses = [-b for b in result.lower_bounds]  # nats per datapoint, lower is better
        self.val_losses, self.best_epoch, self.interrupted = [], None, False
        self.epochs, self.elapsed, self.device = result.n_iter, elapsed, device
        self.checkpoint = None


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
    if inference == "em" and model_name != "gmm":
        raise ValueError("--inference em is for gmm here; for other models use lvmkit.em in Python")
    dcfg, fcfg = config["data"], config["fit"]
    dataset = lvdata.load(dcfg["name"])
    train, val, test = lvdata.split(dataset, SPLIT, seed=dcfg["split_seed"])
    torch.manual_seed(fcfg["seed"])  # the nets' initial weights
    model = build_model(model_name, dataset.image_shape, dataset.levels, config["model"])
    train_data, val_data = model.prepare(train), model.prepare(val)
    if hasattr(model, "initialize"):
        model.initialize(train_data, seed=fcfg["seed"])
    out.mkdir(parents=True, exist_ok=True)
    write_config(config, out / "config.toml")

    if inference == "em":  # closed-form EM, in float64 as scikit-learn
        t0 = time.perf_counter()
        device = resolve_device(fcfg["device"])
        em_result = fit_em(model, train_data.double().to(device), seed=fcfg["seed"])
        result = _EMRun(em_result, time.perf_counter() - t0, str(device))
        model.float()
    else:
        result = fit(
            model.model,
            model.guide,
            train_data,
            val_data=val_data,
            checkpoint_dir=out,
            resume=resume,
            progress=progress,
            **fcfg,
        )
    with open(out / "metrics.jsonl", "w") as f:
        for i, loss in enumerate(result.losses):
            row = {"epoch": i + 1, "loss": loss}
            if i < len(result.val_losses):
                row["val_loss"] = result.val_losses[i]
            f.write(json.dumps(row) + "\n")
    if result.interrupted:
        print(
            f"interrupted after {result.epochs} epochs; checkpoint: {result.checkpoint}\n"
            f"continue with: lvmkit fit {model_name} --out {out} --resume",
            file=sys.stderr,
        )
        return 130

    model.cpu().eval()
    save_checkpoint(
        {
            "kind": "model",
            "model": model_name,
            "config": dataclasses.asdict(model.config),
            "state_dict": model.state_dict(),
            "data": {
                "name": dcfg["name"],
                "split_seed": dcfg["split_seed"],
                "image_shape": list(dataset.image_shape),
            },
        },
        out / "model.pt",
    )
    summary = {
        "model": model_name,
        "inference": inference,
        "data": dcfg["name"],
        "epochs": result.epochs,
        "train_loss": result.losses[-1],
        "elapsed_s": result.elapsed,
        "device": result.device,
    }
    if result.val_losses:
        summary["val_loss"] = result.val_losses[result.best_epoch - 1]
        summary["best_epoch"] = result.best_epoch
    if dataset.y is not None and hasattr(model, "encode"):
        summary["linear_probe_accuracy"] = linear_probe(encode(model, dataset), dataset.y)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    test_x, extra = split_inputs(model.prepare(test))
    paths = [
        out / "config.toml",
        out / "metrics.jsonl",
        *([result.checkpoint] if result.checkpoint else []),
        out / "model.pt",
        out / "summary.json",
        save_loss_curve(result.losses, result.val_losses, out / "losses.png"),
    ]
    paths += write_pictures(model, test_x, dataset.image_shape, out, extra)
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}
    print(f"fitted {model_name}: {json.dumps(shown)}")
    print(f"run directory: {out}")
    for p in paths:
        print(f"  {p}")
    return 0


def load_run(run: Path):
    """(model, its saved data info) from a run directory's model.pt."""
    state = load_checkpoint(run / "model.pt")
    if state.get("kind") != "model" or state.get("model") not in MODELS:
        raise CheckpointError(f"{run / 'model.pt'} does not hold a built-in lvmkit model")
    model = rebuild(state["model"], state["config"])
    model.load_state_dict(state["state_dict"])
    return model.eval(), state["data"]


def _test_split(info: dict) -> lvdata.ImageData:
    """The test part of the split a run was fitted on (its data name and seed, from model.pt)."""
    return lvdata.split(lvdata.load(info["name"]), SPLIT, seed=info["split_seed"])[2]


def _test_inputs(model, info) -> tuple[torch.Tensor, tuple]:
    return split_inputs(model.prepare(_test_split(info)))


def run_sample(run: Path, n: int, seed: int) -> int:
    """Write RUN/samples.png: n draws from a fitted model."""
    model, info = load_run(run)
    torch.manual_seed(seed)
    path = save_image_grid(
        _images(model, draw_samples(model, n), info["image_shape"]),
        run / "samples.png",
        title="samples",
    )
    print(f"wrote {path}")
    return 0


def run_complete(run: Path, n: int, seed: int) -> int:
    """Write RUN/completions.png: the bottom halves of n test images filled in."""
    model, info = load_run(run)
    torch.manual_seed(seed)
    x, extra = _test_inputs(model, info)
    path = save_completions(
        model, x[:n], info["image_shape"], run / "completions.png", tuple(e[:n] for e in extra)
    )
    print(f"wrote {path}")
    return 0


def run_evaluate(run: Path, num_samples: int, seed: int) -> int:
    """log p(x) on the test split into RUN/evaluation.json: exact for a mixture, importance-
    sampled with the model's guide otherwise."""
    model, info = load_run(run)
    test = model.prepare(_test_split(info))
    if getattr(model.config, "kind", None) is not None:  # an autoencoder
        raise ValueError("an autoencoder defines no density p(x) to evaluate; fit an lvm instead")
    if hasattr(model, "component"):  # a mixture: log p(x) in closed form
        values = model.log_prob(test).double()
        est = {
            "log_likelihood": float(values.mean()),
            "stderr": float(values.std() / len(values) ** 0.5),
            "exact": True,
        }
    else:
        discrete = getattr(model.config, "likelihood", "") in (
            "bernoulli",
            "categorical",
            "logistic",
            "pixelcnn",
        )
        exact = not getattr(model, "has_latents", True)  # no latent: one "sample" is exact
        num_samples = 1 if exact else num_samples
        ll = log_likelihood(
            model.model, model.guide, test, num_samples=num_samples, seed=seed, discrete=discrete
        )
        est = {
            "log_likelihood": ll.mean,
            "stderr": ll.stderr,
            "exact": exact,
            "num_samples": num_samples,
        }
        if ll.bits_per_dim is not None:
            est["bits_per_dim"] = ll.bits_per_dim
    est["split"] = "test"
    path = run / "evaluation.json"
    path.write_text(json.dumps(est, indent=2) + "\n")
    print(f"{json.dumps(est)}\nwrote {path}")
    return 0


def _traversals(model, image_shape, path: Path) -> Path:
    """Each row moves one latent dimension from -2.5 to 2.5, the others at 0."""
    z_dim = model.config.z_dim
    rows = min(z_dim, 6)
    values = torch.linspace(-2.5, 2.5, 8)
    z = torch.zeros(rows, 8, z_dim)
    for j in range(rows):
        z[j, :, j] = values
    with torch.no_grad():
        images = model.obs.mean(model.decoder(z.reshape(-1, z_dim)))
    return save_image_grid(
        _images(model, images, image_shape),
        path,
        nrow=rows,
        title="latent traversals (rows: dimensions)",
    )


def _ppc(idata) -> dict:
    """Posterior predictive check of each image's mean intensity: p = P(T(x_rep) >= T(x)),
    replicated images weighted by their importance weights."""
    x_rep = torch.as_tensor(idata.posterior_predictive["x"].values[0])  # (K, N, ...)
    x_obs = torch.as_tensor(idata.observed_data["x"].values)  # (N, ...)
    log_w = torch.as_tensor(idata.sample_stats["log_importance_weight"].values[0])  # (K, N)
    t_rep, t_obs = x_rep.flatten(2).mean(-1), x_obs.flatten(1).mean(-1)
    p = (log_w.softmax(0) * (t_rep >= t_obs).double()).sum(0)
    return {
        "mean_p": float(p.mean()),
        "extreme_share": float(((p < 0.05) | (p > 0.95)).double().mean()),
    }


def run_diagnose(run: Path, num_samples: int = 200, seed: int = 0) -> int:
    """report.html, diagnostics.json and (for models with a Gaussian encoder) posterior.nc."""
    from lvmkit.diagnostics import (
        active_units,
        amortization_gap,
        khat_bands,
        kl_per_dimension,
        mutual_information,
        posterior,
        psis_khat,
    )
    from lvmkit.diagnostics.plots import save_bars, save_histogram, save_latent_space
    from lvmkit.diagnostics.report import write_report

    model, info = load_run(run)
    test = _test_split(info)
    x, _ = split_inputs(model.prepare(test))
    shape = info["image_shape"]
    summary_path, eval_path = run / "summary.json", run / "evaluation.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    results = {"summary": summary}
    sections = [("Training", [(k, v, "") for k, v in summary.items()], "from summary.json")]
    if eval_path.exists():
        evaluation = json.loads(eval_path.read_text())
        results["evaluation"] = evaluation
        sections.append(
            (
                "Likelihood",
                [(k, v, "") for k, v in evaluation.items()],
                "from evaluation.json (lvmkit evaluate)",
            )
        )
    images = [
        run / n
        for n in ("losses.png", "samples.png", "reconstructions.png", "completions.png")
        if (run / n).exists()
    ]
    if hasattr(model, "decoder") and hasattr(model, "prior_loc"):  # a Gaussian-encoder LVM
        torch.manual_seed(seed)
        xs = x[:100]
        idata = posterior(model.model, model.guide, xs, num_samples=num_samples, seed=seed)
        idata.to_netcdf(run / "posterior.nc")
        khat = psis_khat(idata)
        bands = khat_bands(khat)
        kl = kl_per_dimension(model, xs)
        units, _ = active_units(model, x)
        mi = mutual_information(model, xs, seed=seed)
        gap = amortization_gap(model, xs[:50], steps=100, seed=seed)
        ppc = _ppc(idata)
        z_dim = model.config.z_dim
        results.update(
            khat_bands=bands,
            kl_per_dim=kl.tolist(),
            active_units=units,
            mutual_information=mi,
            amortization=dataclasses.asdict(gap),
            ppc=ppc,
        )
        sections += [
            (
                "Can the guide be trusted? (PSIS k-hat, Yao et al. 2018)",
                [(band, share, "share of test images") for band, share in bands.items()],
                f"k-hat of the importance weights p(x,z)/q(z|x), {num_samples} draws per image; "
                "above 0.7 the guide misses part of the posterior",
            ),
            (
                "Did the code collapse?",
                [
                    ("active units", f"{units} / {z_dim}", "dims with Cov_x E[z|x] > 0.01"),
                    ("KL, total", float(kl.sum()), "nats per image the code carries"),
                    ("I_q(x; z)", mi, f"nats, at most log {len(xs)} = {math.log(len(xs)):.2f}"),
                ],
                "",
            ),
            (
                "What does amortization cost? (Cremer et al. 2018)",
                [
                    ("amortized ELBO", gap.amortized_elbo, "the encoder's q"),
                    ("refined ELBO", gap.refined_elbo, "q fitted to each image"),
                    ("log p(x)", gap.log_likelihood, "importance-sampled with the refined q"),
                    ("amortization gap", gap.amortization_gap, "nats lost to one encoder for all"),
                    ("approximation gap", gap.approximation_gap, "nats lost to a Gaussian q"),
                ],
                "per test image, on 50 images",
            ),
            (
                "Posterior predictive check",
                [
                    (
                        "mean p-value",
                        ppc["mean_p"],
                        "mean intensity of replicated vs observed images; near 0.5 is a match",
                    ),
                    ("extreme share", ppc["extreme_share"], "images with p < 0.05 or > 0.95"),
                ],
                "",
            ),
        ]
        codes = encode(model, test)
        images += [
            save_latent_space(codes, test.y, run / "latent_space.png"),
            _traversals(model, shape, run / "traversals.png"),
            save_histogram(khat, run / "khat.png", xlabel="PSIS k-hat", lines=(0.5, 0.7)),
            save_bars(kl, run / "kl_per_dim.png", xlabel="latent dimension", ylabel="KL (nats)"),
        ]
    else:
        sections.append(
            (
                "Posterior",
                [],
                "posterior diagnostics need a latent variable model "
                "with a Gaussian encoder (lvm, pixellvm)",
            )
        )
    (run / "diagnostics.json").write_text(json.dumps(results, indent=2) + "\n")
    report = write_report(run / "report.html", f"lvmkit report: {run.name}", sections, images)
    print(f"report: {report}")
    return 0


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="lvmkit",
        description="Fit, evaluate and inspect latent variable models.",
        epilog=EXAMPLES,
        formatter_class=fmt,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("fit", help="fit a built-in model", epilog=EXAMPLES, formatter_class=fmt)
    p.add_argument("model", help=f"one of {sorted(MODELS)}")
    p.add_argument("--data", help="'digits' or a path (IDX, .npy/.npz, PNG folder)")
    p.add_argument("--config", type=Path, help="a TOML file with [data], [model], [fit] tables")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--out", type=Path, help="run directory (default runs/MODEL)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument(
        "--jit", action="store_true", default=None, help="run the steps from a trace of the loss"
    )
    p.add_argument(
        "--inference", default="svi", choices=["svi", "em"], help="svi (default), or em for gmm"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    for name, help_ in [
        ("sample", "write RUN/samples.png from a fitted model"),
        ("complete", "fill in the bottom half of test images: completions.png"),
    ]:
        s = sub.add_parser(name, help=help_)
        s.add_argument("run", type=Path, help="a run directory written by lvmkit fit")
        s.add_argument("--n", type=int, default=64 if name == "sample" else 8)
        s.add_argument("--seed", type=int, default=0)
    g = sub.add_parser("diagnose", help="report.html, diagnostics.json, posterior.nc for a run")
    g.add_argument("run", type=Path, help="a run directory written by lvmkit fit")
    g.add_argument("--num-samples", type=int, default=200, help="draws of q(z|x) per image")
    g.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("evaluate", help="log p(x) and bits/dim on the test split")
    e.add_argument("run", type=Path, help="a run directory written by lvmkit fit")
    e.add_argument("--num-samples", type=int, default=1000, help="importance samples per image")
    e.add_argument("--seed", type=int, default=0)
    d = sub.add_parser("demo", help="the Gaussian-decoder LVM on digits, under a minute on CPU")
    d.add_argument("--out", type=Path, default=Path("runs/demo"))
    d.add_argument("--epochs", type=int, default=DEMO_EPOCHS)
    d.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``lvmkit`` command; returns its exit code (2 for bad input, 130 if interrupted)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            config = default_config("lvm")
            config["fit"]["epochs"] = args.epochs
            code = run_fit("lvm", config, args.out, resume=False, progress=not args.no_progress)
            return code or run_diagnose(args.out)  # the demo ends with the report
        if args.command == "sample":
            return run_sample(args.run, args.n, args.seed)
        if args.command == "complete":
            return run_complete(args.run, args.n, args.seed)
        if args.command == "diagnose":
            return run_diagnose(args.run, args.num_samples, args.seed)
        if args.command == "evaluate":
            return run_evaluate(args.run, args.num_samples, args.seed)
        config = read_config(args.config, args.model)
        if args.data:
            config["data"]["name"] = args.data
        for key in ("epochs", "batch_size", "lr", "seed", "device", "jit"):
            if getattr(args, key) is not None:
                config["fit"][key] = getattr(args, key)
        out = args.out or Path("runs") / args.model
        return run_fit(
            args.model,
            config,
            out,
            resume=args.resume,
            progress=not args.no_progress,
            inference=args.inference,
        )
    except NonFiniteLossError as err:
        print(f"lvmkit: training diverged: {err}", file=sys.stderr)
        return 1
    except ValueError as err:  # bad input of any kind, CheckpointError included
        print(f"lvmkit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
