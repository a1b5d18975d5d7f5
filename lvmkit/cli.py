"""The command line, ``lvmkit fit | demo``: the only module that knows files, flags and runs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from lvmkit import data as lvdata
from lvmkit.diagnostics import save_image_grid, save_loss_curve, save_reconstructions
from lvmkit.inference import CheckpointError, NonFiniteLossError, fit, load_checkpoint
from lvmkit.inference.checkpoint import save_checkpoint
from lvmkit.models import GaussianLVM, GaussianLVMConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXAMPLES = """\
examples:
  lvmkit demo                                   # Gaussian-decoder LVM on the bundled digits
  lvmkit fit lvm --data digits --epochs 50 --out runs/lvm
  lvmkit fit lvm --data train-images-idx3-ubyte.gz --config run.toml --device cuda
  lvmkit fit lvm --out runs/lvm --resume        # continue an interrupted run

run.toml holds up to three tables, each optional; unknown keys are an error:
  [data]  name = "digits", split_seed = 0
  [model] z_dim = 8, hidden = [256, 256], min_scale = 0.03
  [fit]   epochs = 100, batch_size = 64, lr = 1e-3, optimizer = "adam", elbo = "elbo",
          num_particles = 1, patience = 20, seed = 0, device = "auto"
"""

# name -> (model class, config class, how its data is prepared)
MODELS = {"lvm": (GaussianLVM, GaussianLVMConfig, lvdata.scale)}

DATA_DEFAULTS = {"name": "digits", "split_seed": 0}
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
}
DEMO = {"data": {}, "model": {}, "fit": {"epochs": 200}}


def read_config(path: Path | None, model_name: str) -> dict:
    """The run's config: defaults, updated by the TOML file; unknown tables or keys are errors."""
    _, config_cls, _ = MODELS[model_name]
    config = {
        "data": dict(DATA_DEFAULTS),
        "model": {f.name: f.default for f in dataclasses.fields(config_cls)},
        "fit": dict(FIT_DEFAULTS),
    }
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


def build_model(model_name: str, model_config: dict, image_shape):
    model_cls, config_cls, _ = MODELS[model_name]
    values = {**model_config, "image_shape": tuple(image_shape)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return model_cls(config_cls(**values))


def run_fit(model_name: str, config: dict, out: Path, *, resume: bool, progress: bool) -> int:
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose one of {sorted(MODELS)}")
    dcfg, fcfg = config["data"], config["fit"]
    prepare = MODELS[model_name][2]
    dataset = prepare(lvdata.load(dcfg["name"]))
    train, val, test = lvdata.split(dataset, (0.8, 0.1, 0.1), seed=dcfg["split_seed"])
    torch.manual_seed(fcfg["seed"])  # the nets' initial weights
    lvm = build_model(model_name, config["model"], dataset.image_shape)
    out.mkdir(parents=True, exist_ok=True)
    write_config(config, out / "config.toml")

    fit_kwargs = {k: v for k, v in fcfg.items()}
    result = fit(
        lvm.model,
        lvm.guide,
        train,
        val_data=val,
        checkpoint_dir=out,
        resume=resume,
        progress=progress,
        **fit_kwargs,
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

    lvm.cpu().eval()
    save_checkpoint(
        {
            "kind": "model",
            "model": model_name,
            "config": dataclasses.asdict(lvm.config),
            "state_dict": lvm.state_dict(),
            "data": {"name": dataset.name},
        },
        out / "model.pt",
    )
    torch.manual_seed(fcfg["seed"])
    paths = [
        out / "config.toml",
        out / "metrics.jsonl",
        result.checkpoint,
        out / "model.pt",
        save_loss_curve(result.losses, result.val_losses, out / "losses.png"),
        save_image_grid(lvm.sample(64, mean=True), out / "samples.png", title="samples E[x|z]"),
        save_reconstructions(
            test.x[:16], lvm.reconstruct(test.x[:16]), out / "reconstructions.png"
        ),
    ]
    final = result.val_losses[-1] if result.val_losses else result.losses[-1]
    print(
        f"fitted {model_name} on {dcfg['name']} for {result.epochs} epochs in "
        f"{result.elapsed:.1f}s on {result.device}; validation loss {final:.3f} nats/datapoint"
    )
    print(f"run directory: {out}")
    for p in paths:
        print(f"  {p}")
    return 0


def load_run_model(run: Path):
    """Rebuild a fitted built-in model from a run directory's model.pt."""
    state = load_checkpoint(run / "model.pt")
    if state.get("kind") != "model" or state.get("model") not in MODELS:
        raise CheckpointError(f"{run / 'model.pt'} does not hold a built-in lvmkit model")
    model_cls, config_cls, _ = MODELS[state["model"]]
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items()}
    lvm = model_cls(config_cls(**cfg))
    lvm.load_state_dict(state["state_dict"])
    return lvm.eval()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lvmkit",
        description="Fit, evaluate and inspect latent variable models.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "fit",
        help="fit a built-in model",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    d = sub.add_parser("demo", help="the Gaussian-decoder LVM on digits, about a minute on CPU")
    d.add_argument("--out", type=Path, default=Path("runs/demo"))
    d.add_argument("--epochs", type=int)
    d.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            config = read_config(None, "lvm")
            for table, values in DEMO.items():
                config[table].update(values)
            if args.epochs:
                config["fit"]["epochs"] = args.epochs
            return run_fit("lvm", config, args.out, resume=False, progress=not args.no_progress)
        if args.model not in MODELS:
            raise ValueError(f"unknown model {args.model!r}; choose one of {sorted(MODELS)}")
        config = read_config(args.config, args.model)
        if args.data:
            config["data"]["name"] = args.data
        for key in ("epochs", "batch_size", "lr", "seed", "device"):
            if getattr(args, key) is not None:
                config["fit"][key] = getattr(args, key)
        out = args.out or Path("runs") / args.model
        return run_fit(args.model, config, out, resume=args.resume, progress=not args.no_progress)
    except NonFiniteLossError as err:
        print(f"lvmkit: training diverged: {err}", file=sys.stderr)
        return 1
    except ValueError as err:  # bad input of any kind, CheckpointError included
        print(f"lvmkit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
