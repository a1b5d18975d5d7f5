"""``fit_run``: fit a built-in model into a run directory (create, resume or refuse it; write its
config, model, summary, metrics and pictures), the same for Python callers and ``lvmkit fit``."""

from __future__ import annotations

import json
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lvmkit import data as lvdata
from lvmkit.core.files import check_writable, run_lock, write_text
from lvmkit.core.processes import barrier, group, process_device, rank, set_threads
from lvmkit.data import BUNDLED, DATASETS
from lvmkit.diagnostics import encode, linear_probe, loss_curve, probe_problem, save_figure
from lvmkit.inference import FitResult, em, fit
from lvmkit.inference.adversarial import fit_adversarial
from lvmkit.inference.elbo import make_elbo
from lvmkit.inference.evaluation import scores_discrete
from lvmkit.inference.likelihood import loss_bits_per_dim
from lvmkit.inference.programs import resolve_device
from lvmkit.inference.tracking import MLflowLogger
from lvmkit.models import MODELS, build_model
from lvmkit.runs.config import (
    USED_BY,
    apply_settings,
    read_config,
    unused_settings,
    write_config,
)
from lvmkit.runs.directory import data_checksum, save_model
from lvmkit.runs.pictures import write_pictures
from lvmkit.runs.tracking import (
    MLFLOW_RECORD,
    TENSORBOARD_DIR,
    kl_callbacks,
    run_loggers,
    tracker_files,
)

RUN_FILES = ("config.toml", "checkpoint.pt", "model.pt")  # a folder holding one holds a run
RUN_OUTPUTS = (*RUN_FILES, "metrics.jsonl", "summary.json", "losses.png", "samples.png")
# every file a fit writes into its folder: one a user put there is not replaced unasked
WRITES = (*RUN_OUTPUTS, "completions.png", "reconstructions.png", MLFLOW_RECORD, TENSORBOARD_DIR)
# Settings a resume may change: neither epochs nor jit changes what is computed, and the data
# may have moved (the checkpoint's fingerprint of them refuses other data).
RESUME_MAY_CHANGE = {("fit", "epochs"), ("fit", "jit"), ("fit", "threads"), ("fit", "log"),
                     ("fit", "tracking_uri"), ("data", "name")}  # fmt: skip


@dataclass
class FittedRun:
    """What ``fit_run`` did: the fit, and the files it wrote (none but the checkpoint and
    metrics when it was interrupted).

    Parameters
    ----------
    path : Path
        The run directory.
    result : FitResult
    summary : dict, optional
        summary.json's content (None when interrupted).
    written : list of Path
    main : bool
        False under torchrun on a rank other than 0, which writes nothing.
    """

    path: Path
    result: FitResult
    summary: dict | None = None
    written: list[Path] = field(default_factory=list)
    main: bool = True  # False under torchrun on a rank other than 0, which writes nothing

    @property
    def interrupted(self) -> bool:
        return self.result.interrupted


def run_config(model_name: str, out, *, settings=None, config=None, resume=False,
               overwrite=False) -> tuple[dict, bool]:  # fmt: skip
    """The settings of a fit of ``model_name`` into ``out``, and whether it continues a run
    there: a resumed run's own config.toml, else the defaults and the TOML file ``config``; then
    ``settings``. Refuses to replace a run unless ``resume`` or ``overwrite``, and on resume any
    change but those in RESUME_MAY_CHANGE.

    Parameters
    ----------
    model_name : str
    out : str or Path
    settings : dict, optional
        ``{table: {key: value}}``.
    config : str or Path, optional
    resume, overwrite : bool

    Returns
    -------
    tuple of (dict, bool)
    """
    out, settings = Path(out), {t: dict(v) for t, v in (settings or {}).items()}
    if resume and overwrite:
        raise ValueError("resume=True and overwrite=True contradict each other; pass one")
    if out.exists() and not out.is_dir():
        raise ValueError(f"out {out} is a file; give a folder for the run")
    held = [n for n in RUN_FILES if (out / n).exists()]
    if not held and (not str(out).strip() or out.resolve() == Path.cwd().resolve()):
        raise ValueError(
            f"out {str(out)!r} is the current folder, where a run would write among your own "
            "files; give a folder for the run, e.g. runs/lvm"
        )
    # under torchrun rank 0 alone decides (the others may find the files it has begun to write)
    if held and not (resume or overwrite) and rank() == 0:
        raise ValueError(
            f"{out} holds a run already ({', '.join(held)}): continue it with resume=True, "
            "replace it with overwrite=True, or give another out folder"
        )
    others = [n for n in WRITES if (out / n).exists()]
    if others and not held and not overwrite and rank() == 0:
        raise ValueError(
            f"{out} holds files a fit would write over ({', '.join(others)}) but no run; move "
            "them, give another out folder, or overwrite=True to replace them"
        )
    if resume and not (out / "checkpoint.pt").exists() and (out / "model.pt").exists():
        raise ValueError(
            f"{out} holds a finished run without its checkpoint.pt, so it cannot be continued; "
            "overwrite=True replaces it, or give another out folder"
        )
    resumed = resume and (out / "config.toml").exists()
    if resumed and config is not None:
        raise ValueError(
            f"resume=True continues {out} with its own config.toml; leave config out (or start "
            "a new run in another folder)"
        )
    base = read_config(out / "config.toml" if resumed else config, model_name)
    name = settings.get("data", {}).get("name")
    if name is not None and name not in (*BUNDLED, *DATASETS) and Path(name).expanduser().exists():
        # a run is evaluated and resumed from anywhere: keep where its data are, absolutely
        settings["data"]["name"] = str(Path(name).expanduser().resolve())
    if resumed:
        _refuse_changes(base, settings, out)
    full = apply_settings(base, settings, model_name, "settings")
    unused = unused_settings(full, model_name)
    if unused:
        fcfg = full["fit"]
        given = ", ".join(f"{k} = {fcfg[k]!r}" for k in unused)
        raise ValueError(
            f"[fit] {given}: not used by inference {fcfg['inference']!r} (it would be recorded "
            "and ignored); leave it out"
        )
    if resume and not any((out / n).exists() for n in ("config.toml", "checkpoint.pt")):
        raise ValueError(
            f"resume=True: {out} holds no run (no config.toml or checkpoint.pt); check the "
            "folder's name, or leave resume=True out to start a new run there"
        )
    if resume and not (out / "checkpoint.pt").exists():  # begun, stopped before a checkpoint
        warnings.warn(f"{out} holds no checkpoint to resume; starting it afresh", stacklevel=2)
        resume = False
    return full, resume


def _refuse_changes(config: dict, settings: dict, out: Path) -> None:
    """ValueError naming a setting the resumed run was fitted with otherwise (keys its
    inference does not use are left to ``unused_settings``, which says so)."""
    used = USED_BY[config["fit"]["inference"]]
    for table, values in settings.items():
        for key, value in values.items():
            if table == "fit" and key not in used and key != "inference":
                continue
            was = config.get(table, {}).get(key, value)
            same = list(was) == list(value) if isinstance(was, (list, tuple)) else was == value
            if (table, key) not in RESUME_MAY_CHANGE and not same:
                raise ValueError(
                    f"{out} was fitted with [{table}] {key} = {was!r}, not {value!r}: resume it "
                    "without that setting (only epochs, jit, threads, log, tracking_uri and where "
                    "the data are may change), or start a new run in another folder"
                )


def fit_run(model_name: str, out, *, settings=None, config=None, resume=False, overwrite=False,
            progress=True) -> FittedRun:  # fmt: skip
    """Fit the built-in model ``model_name`` and write the run directory ``out``: config.toml,
    checkpoint.pt, model.pt, summary.json, metrics.jsonl and pictures.

    Parameters
    ----------
    model_name : str
        A registered built-in model ("lvm", "gmm", ...).
    out : str or Path
        The run directory.
    settings : dict, optional
        ``{table: {key: value}}`` over the defaults and ``config``, e.g.
        ``{"fit": {"epochs": 50, "inference": "em"}}``.
    config : str or Path, optional
        A TOML file with [data], [model], [fit] tables.
    resume, overwrite : bool
        Continue the run in ``out`` (only epochs, jit, threads, the trackers and where the data
        are may change), or replace it; without either, a run there is refused.
    progress : bool
        A progress bar.

    Returns
    -------
    FittedRun
        The FitResult, summary.json's contents and the files written (none but the checkpoint
        and metrics when interrupted; under torchrun, nothing on ranks other than 0).
    """
    out = Path(out)
    existed = out.exists()  # a refused new run removes the folder only if it made it
    config, resume = run_config(model_name, out, settings=settings, config=config,
                                resume=resume, overwrite=overwrite)  # fmt: skip
    dcfg, fcfg = config["data"], config["fit"]
    resolve_device(fcfg["device"])  # a device this machine lacks is refused before any file
    loggers = run_loggers(_recorded(config), out, resume)  # so is a tracker not installed
    if fcfg["inference"] == "svi":  # so is an objective with too few samples (dreg: K >= 2)
        make_elbo(fcfg["elbo"], fcfg["num_samples"])
    dataset = lvdata.load(dcfg["name"], image_shape=dcfg["image_shape"], levels=dcfg["levels"])
    splits = lvdata.train_val_test(dataset, dcfg["val_fraction"], seed=dcfg["split_seed"])
    torch.manual_seed(fcfg["seed"])  # the nets' initial weights
    model = build_model(model_name, dataset.image_shape, dataset.levels, config["model"])
    adversarial = model.default_inference == "adversarial"
    if (fcfg["inference"] == "adversarial") != adversarial:
        raise ValueError(
            f"{model_name} is trained by inference 'adversarial' alone (it has no guide for "
            "svi): leave inference out, or set it to 'adversarial'"
            if adversarial
            else f"inference 'adversarial' trains a GAN (gan); fit {model_name} by "
            f"'{model.default_inference}'"
        )
    if fcfg["inference"] == "em" and not model.closed_form_em:
        with_em = [name for name, entry in MODELS.items() if entry.cls.closed_form_em]
        raise ValueError(
            f"inference 'em' is for {', '.join(with_em)} here (closed-form EM); for other "
            "models use lvmkit.em in Python"
        )
    if dataset.y is not None and model.can_encode and probe_problem(dataset.y):
        warnings.warn(f"no linear probe: {probe_problem(dataset.y)}", stacklevel=2)
    check_writable(*(out / name for name in RUN_OUTPUTS))  # before the fit, not after it
    set_threads(fcfg["threads"])
    g = group(resolve_device(process_device(fcfg["device"])))  # torchrun: rank 0 writes
    try:
        with run_lock(out) if g.main else nullcontext():  # a second process here is refused
            try:
                result = _fit(model, config, out, splits, resume=resume, progress=progress,
                              main=g.main, loggers=loggers)  # fmt: skip
            except BaseException:
                if g.main and not resume and not (out / "checkpoint.pt").exists():
                    (out / "config.toml").unlink(missing_ok=True)  # a run that never began
                raise
            if not g.main:
                done = FittedRun(out, result, main=False)
            else:
                write_text(out / "metrics.jsonl", _metrics(result))
                written = [out / "metrics.jsonl", result.checkpoint]
                done = FittedRun(out, result, written=written)
                if not result.interrupted:
                    done = _write_run(model_name, model, config, out, dataset, splits, result)
                    done.written += tracker_files(out)
                    results = [f for f in done.written if f != result.checkpoint]
                    for logger in loggers:
                        if isinstance(logger, MLflowLogger):
                            logger.log_artifacts(*results)
    except BaseException:
        if g.main and not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # the folder this refused run made, empty once its lock is gone
        raise
    # the processes leave together: a group torn down while another still works aborts it
    barrier(g)
    return done


def _fit(model, config, out, splits, *, resume, progress, main, loggers) -> FitResult:
    """The fit itself, by the config's inference; config.toml written as it starts (a resumed
    run's once the checkpoint took it)."""
    fcfg = {k: v for k, v in config["fit"].items() if k in USED_BY[config["fit"]["inference"]]}
    inference = fcfg.pop("inference")
    for key in ("threads", "log", "tracking_uri"):  # set for the process, and in loggers
        fcfg.pop(key)
    fcfg["device"] = process_device(fcfg["device"])
    train, val, _ = splits
    train_data = model.prepare(train)
    if not resume and main:
        write_config(_recorded(config), out / "config.toml")
    loop = dict(checkpoint_dir=out, resume=resume, overwrite=not resume, progress=progress,
                loggers=loggers, callbacks=kl_callbacks(model, model.prepare(val), loggers))
    if inference == "em":  # closed-form EM, in float64 as scikit-learn
        epochs = fcfg.pop("epochs")
        result = em(model, train_data.double(), max_iter=epochs, **fcfg, **loop)
        model.float()
    elif inference == "adversarial":
        result = fit_adversarial(model, train_data, **fcfg, **loop)
    else:
        model.initialize(train_data, seed=fcfg["seed"])
        result = fit(model.model, model.guide, train_data, val_data=model.prepare(val),
                     **fcfg, **loop)  # fmt: skip
    if resume and main:
        write_config(_recorded(config), out / "config.toml")  # its epochs, or where data are
    return result


def _recorded(config: dict) -> dict:
    """The config as the run records it: the [fit] keys its inference uses, no others."""
    used = USED_BY[config["fit"]["inference"]]
    return {**config, "fit": {k: v for k, v in config["fit"].items() if k in used}}


def _metrics(result: FitResult) -> str:
    rows = []
    for i, loss in enumerate(result.losses):
        row = {"epoch": i + 1, "loss": loss}
        if i < len(result.val_losses):
            row["val_loss"] = result.val_losses[i]
        rows.append(json.dumps(row) + "\n")
    return "".join(rows)


def _write_run(model_name, model, config, out, dataset, splits, result) -> FittedRun:
    """model.pt, summary.json and the pictures of a finished fit."""
    dcfg = config["data"]
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
    summary = _summary(model_name, model, config, dataset, model.prepare(splits[1]), result)
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    written = [
        out / "config.toml",
        out / "metrics.jsonl",
        *([result.checkpoint] if result.checkpoint else []),
        out / "model.pt",
        out / "summary.json",
        save_figure(loss_curve(result.losses, result.val_losses), out / "losses.png"),
    ]
    written += write_pictures(model, splits[2], out)
    return FittedRun(out, result, summary, written)


def _summary(model_name, model, config, dataset, val_data, result: FitResult) -> dict:
    summary = {
        "model": model_name,
        "inference": config["fit"]["inference"],
        "data": config["data"]["name"],
        "epochs": result.epochs,
        "train_loss": result.losses[-1],
        "elapsed_s": result.elapsed,
        "device": result.device,
        "model_epoch": result.params_epoch,  # the epoch whose parameters model.pt holds
    }
    if result.converged is not None:  # EM: whether its stopping rule was met
        summary["converged"] = result.converged
    if result.val_losses:
        summary["val_loss"] = result.val_losses[result.params_epoch - 1]  # model.pt's epoch's
        summary["best_epoch"] = result.best_epoch
        summary["best_val_loss"] = result.val_losses[result.best_epoch - 1]
        if scores_discrete(model, val_data):
            # the loss on the data's own scale: bits/dim of a bound on the discrete likelihood
            summary["val_bits_per_dim"] = loss_bits_per_dim(summary["val_loss"], val_data)
    if dataset.y is not None and model.can_encode and not probe_problem(dataset.y):
        summary["linear_probe_accuracy"] = linear_probe(encode(model, dataset), dataset.y)
    return summary
