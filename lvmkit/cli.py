"""The command line, ``lvmkit fit | sample | complete | evaluate | diagnose | demo``: it parses
flags, calls the library (``lvmkit.runs``), prints what was written and formats errors as one
line. The library is imported only once a command runs: help and argument errors answer fast."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

EXAMPLES = """\
examples:
  lvmkit demo                                   # Gaussian-decoder LVM on the bundled digits
  lvmkit fit --help                             # the models, and the flags of a fit
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
  [fit]   inference = "svi", epochs = 100, batch_size = 64, lr = 1e-3, optimizer = "adam",
          elbo = "elbo", num_samples = 1, patience = 20, seed = 0, device = "auto", jit = false
"""
DEMO_EPOCHS = 200
# Flags that are short for a setting: flag name -> (table, key).
SHORT_FLAGS = {
    "data": ("data", "name"),
    "val_fraction": ("data", "val_fraction"),
    "image_shape": ("data", "image_shape"),
    **{k: ("fit", k) for k in ("epochs", "batch_size", "lr", "seed", "device", "jit", "threads")},
    "inference": ("fit", "inference"),
}
# How the library's words for arguments read on the command line.
FLAG_WORDS = {"resume=True": "--resume", "overwrite=True": "--overwrite",
              "leave config out": "leave --config out", "out folder": "--out folder",
              "inference 'em'": "--inference em", "config file ": "--config ",
              "setting '": "--set '"}  # fmt: skip


def _fit_help(argv: list[str]) -> str:
    """The epilog of ``lvmkit fit --help``: the models, and a named model's settings (this
    imports the models, so it is built only when help is asked for)."""
    from lvmkit.models import MODELS
    from lvmkit.models.registry import settings_help
    from lvmkit.runs.config import KEY_HELP, default_config

    width = max(map(len, MODELS))
    lines = ["models:", *(f"  {n:{width}} {e.description}" for n, e in MODELS.items()), ""]
    named = argv[1] if len(argv) > 1 and argv[1] in MODELS else None
    if named:
        lines.append(settings_help(named))
        for table in ("fit", "data"):
            lines.append(f"[{table}] settings (--set {table}.KEY=VALUE):")
            for key, value in default_config(named)[table].items():
                shown = "none" if value is None else json.dumps(value)
                lines.append(f"  {key} = {shown}\n      {KEY_HELP[key]}")
    return "\n".join(lines) + f"\n\n{EXAMPLES}"


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
    value = int(text) if text.isdigit() else 0
    if text != "auto" and value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of threads, or auto")
    return text if text == "auto" else value


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


def _parser(argv: list[str]) -> argparse.ArgumentParser:
    """The command line; ``lvmkit fit [NAME] --help`` lists the models and NAME's settings."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="lvmkit", epilog=EXAMPLES, formatter_class=fmt,
                                     description="Fit, evaluate and inspect latent variable "
                                     "models.")  # fmt: skip
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _fit_parser(sub, argv)
    _run_parsers(sub)
    return parser


def _fit_parser(sub, argv: list[str]) -> None:
    """``lvmkit fit``'s flags."""
    asks_help = argv[:1] == ["fit"] and ("-h" in argv or "--help" in argv)
    epilog = _fit_help(argv) if asks_help else EXAMPLES
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("fit", help="fit a built-in model", epilog=epilog, formatter_class=fmt)
    p.add_argument("model", help="a built-in model (lvmkit fit --help lists them)")
    p.add_argument("--data", help="a named dataset (digits, mnist5k, mnist, fashion-mnist, "
                   "cifar10) or a path (IDX files, .npy/.npz, PNG folder)")  # fmt: skip
    p.add_argument("--config", type=Path, help="a TOML file with [data], [model], [fit] tables")
    p.add_argument("--epochs", type=_positive(int), help="epochs, or EM iterations at most")
    p.add_argument("--batch-size", type=_positive(int), help="datapoints per step (SVI)")
    p.add_argument("--lr", type=_positive(float), help="learning rate (SVI)")
    p.add_argument("--seed", type=int, help="seed of the initial weights, draws and order")
    p.add_argument("--val-fraction", type=_fraction,
                   help="validation share: of the train part if the data carry a split "
                   "(default 0.1)")  # fmt: skip
    p.add_argument("--image-shape", type=_shape,
                   help="read flat rows (N, D) as images C,H,W, e.g. 1,28,28")  # fmt: skip
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--out", type=Path, help="run directory (default runs/MODEL)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in OUT with its own settings")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace a run already in OUT")
    p.add_argument("--jit", action=argparse.BooleanOptionalAction, default=None,
                   help="run the steps from a trace of the loss (for a model whose Python "
                   "keeps no state between calls)")  # fmt: skip
    p.add_argument("--inference", choices=["svi", "em", "adversarial"],
                   help="svi (default), em for gmm, adversarial for gan")  # fmt: skip
    p.add_argument("--set", action="append", metavar="TABLE.KEY=VALUE",
                   help="a setting, as in the TOML: --set model.z_dim=16 --set fit.elbo=iwae "
                   "(repeatable)")  # fmt: skip
    p.add_argument("--threads", type=_threads,
                   help="torch threads per process (default auto: the cores not busy, shared "
                   "out)")  # fmt: skip
    p.add_argument("--nproc", type=_positive(int), default=1,
                   help="data-parallel processes on this machine (as torchrun would start "
                   "them)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_parsers(sub) -> None:
    """The flags of the commands that use a run: sample, complete, diagnose, evaluate, demo."""
    pictures = {"sample": "write RUN/samples.png from a fitted model",
                "complete": "fill in the bottom half of test images: completions.png"}  # fmt: skip
    for name, help_ in pictures.items():
        s = sub.add_parser(name, help=help_)
        s.add_argument("run", type=Path, help="a run directory written by lvmkit fit")
        s.add_argument("--n", type=_positive(int), default=64 if name == "sample" else 8)
        s.add_argument("--seed", type=int, default=0)
    g = sub.add_parser("diagnose", help="report.html, diagnostics.json, posterior.nc for a run")
    g.add_argument("run", type=Path, help="a run directory written by lvmkit fit")
    # at least diagnostics.MIN_PSIS_DRAWS: PSIS fits a tail to the largest ~3 sqrt(K) weights
    g.add_argument("--num-samples", type=_positive(int, 10), default=200,
                   help="draws of q(z|x) per image")  # fmt: skip
    g.add_argument("--num-images", type=_positive(int), default=100,
                   help="test images the posterior diagnostics use")  # fmt: skip
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    e = sub.add_parser("evaluate", help="log p(x) and bits/dim on the test split")
    e.add_argument("run", type=Path, help="a run directory written by lvmkit fit")
    e.add_argument("--method", choices=["importance", "ais"], default=None,
                   help="importance sampling with the model's encoder (the default), or AIS "
                   "from it; a GAN: AIS from the prior")  # fmt: skip
    e.add_argument("--num-samples", type=_positive(int),
                   help="importance samples per image (default 1000), AIS chains (default "
                   "16), or a flow's dequantizations per image (default 8)")  # fmt: skip
    e.add_argument("--steps", type=_positive(int), default=100,
                   help="AIS temperatures (default 100)")  # fmt: skip
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--data", help="score other data (a path or a name) instead of the run's")
    e.add_argument("--split", choices=["train", "val", "test"],
                   help="which part to score (default test; with --data, the file's own "
                   "split)")  # fmt: skip
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    d = sub.add_parser("demo", help="the Gaussian-decoder LVM on digits, under a minute on CPU")
    d.add_argument("--out", type=Path, default=Path("runs/demo"))
    d.add_argument("--epochs", type=_positive(int), default=DEMO_EPOCHS)
    d.add_argument("--no-progress", action="store_true")


def _settings(args) -> dict:
    """--set assignments and the short flags, as {table: {key: value}}."""
    from lvmkit.runs import parse_settings

    settings = parse_settings(args.set or [])
    for flag, (table, key) in SHORT_FLAGS.items():
        if getattr(args, flag) is not None:
            settings.setdefault(table, {})[key] = getattr(args, flag)
    if args.data is not None and not args.data.strip():
        raise ValueError("--data is empty; give 'digits' or a path to your data")
    return settings


def _fit(model: str, out: Path, progress: bool, **options) -> int:
    from lvmkit.runs import fit_run

    done = fit_run(model, out, progress=progress, **options)
    if done.interrupted and done.main:
        print(f"interrupted after {done.result.epochs} epochs; checkpoint: "
              f"{done.result.checkpoint}\ncontinue with: lvmkit fit {model} --out {out} "
              "--resume", file=sys.stderr)  # fmt: skip
        return 130
    if not done.main:  # under torchrun, a process other than rank 0: it writes nothing
        return 130 if done.interrupted else 0
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in done.summary.items()}
    print(f"fitted {model}: {json.dumps(shown)}\nrun directory: {out}")
    _print_files(done.written)
    return 0


def _print_files(paths, first: str = "") -> None:
    if first:
        print(f"{first}{paths[0]}")
        paths = paths[1:]
    for p in paths:
        print(f"  {p}")


def _run(args, argv: list[str]) -> int:
    progress = not getattr(args, "no_progress", False)
    if args.command == "demo":
        from lvmkit.runs import diagnose_run

        settings = {"fit": {"epochs": args.epochs}}
        code = _fit("lvm", args.out, progress, settings=settings, overwrite=True)
        if code == 0:  # the demo ends with the report
            _print_files(diagnose_run(args.out, progress=progress), first="report: ")
        return code
    if args.command in ("sample", "complete"):
        from lvmkit.runs import write_completions, write_samples

        write = write_samples if args.command == "sample" else write_completions
        print(f"wrote {write(args.run, args.n, args.seed)}")
        return 0
    if args.command == "diagnose":
        from lvmkit.runs import diagnose_run

        written = diagnose_run(args.run, num_samples=args.num_samples,
                               num_images=args.num_images, seed=args.seed,
                               progress=progress)  # fmt: skip
        _print_files(written, first="report: ")
        return 0
    if args.command == "evaluate":
        from lvmkit.inference.likelihood import describe
        from lvmkit.runs import evaluate_run

        est, written = evaluate_run(args.run, num_samples=args.num_samples, seed=args.seed,
                                    progress=progress, data=args.data, split=args.split,
                                    method=args.method, steps=args.steps)  # fmt: skip
        if written:
            print(describe({"mean": est["log_likelihood"], "num_samples": 1, **est}))
            if est.get("bound"):
                print(f"  the bound: {est['bound']}")
            for row in est.get("convergence", []):
                print(f"  {describe(row)}")
            print("\n".join(f"wrote {p}" for p in written))
        return 0
    from lvmkit.core.processes import launch_local, launched

    out, options = (
        args.out or Path("runs") / args.model,
        dict(
            settings=_settings(args),
            config=args.config,
            resume=args.resume,
            overwrite=args.overwrite,
        ),
    )
    if args.nproc > 1 and not launched():
        from lvmkit.runs import run_config

        run_config(args.model, out, **options)  # bad settings: said once, before any worker
        return launch_local(args.nproc, argv)
    return _fit(args.model, out, progress, **options)


def main(argv: list[str] | None = None) -> int:
    """The ``lvmkit`` command; returns its exit code (2 for bad input, 1 if training diverged,
    130 if interrupted). Warnings print as one line each, like its errors."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser(argv).parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        try:
            return _run(args, argv)
        except KeyboardInterrupt:  # before the fit's own handler: nothing begun is kept
            print("lvmkit: interrupted outside training (no file is left half-written); run "
                  "the command again (fit: with --resume once OUT holds a checkpoint.pt)",
                  file=sys.stderr)  # fmt: skip
            return 130
        except FloatingPointError as err:  # NonFiniteLossError
            if args.debug:
                raise
            print(f"lvmkit: training diverged: {err}", file=sys.stderr)
            return 1
        except (ValueError, TypeError, OSError, ImportError) as err:  # bad input, a missing extra
            if args.debug:
                raise
            print(f"lvmkit: error: {_error_line(err)}", file=sys.stderr)
            return 2


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"lvmkit: {category.__name__}: {message}", file=sys.stderr)


def _error_line(err: Exception) -> str:
    """One line for an error, in the command line's words: an OSError as what happened to
    which file and what to check."""
    if isinstance(err, OSError) and err.strerror and err.filename:
        return (
            f"{err.filename}: {err.strerror.lower()}; check that the path is right and that you "
            "may write there (--debug shows where it happened)"
        )
    text = str(err)
    for words, flag in FLAG_WORDS.items():
        text = text.replace(words, flag)
    return "--" + text if text.startswith("out ") else text  # the argument, named as a flag


if __name__ == "__main__":
    sys.exit(main())
