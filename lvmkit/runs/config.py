"""The settings of a run: ``config.toml``'s [data], [model] and [fit] tables, their defaults,
types and ranges, and how ``--set`` assignments and TOML files update them."""

from __future__ import annotations

import json
import math
import sys
import types
import typing
from pathlib import Path

from lvmkit.core.files import write_text
from lvmkit.inference.elbo import ELBOS
from lvmkit.inference.tracking import LOGGERS
from lvmkit.inference.trainer import OPTIMIZERS
from lvmkit.models import MODELS
from lvmkit.models.registry import config_fields

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# val_fraction: of the train part where the data carry a split, else of all (a tenth is test).
# image_shape: (C, H, W) that flat rows (N, C*H*W) of a .npy/.npz are read as.
# levels: pixel levels of integer data beyond 8 bits (None: as the file implies).
DATA_DEFAULTS = {
    "name": "digits",
    "split_seed": 0,
    "val_fraction": 0.1,
    "image_shape": None,
    "levels": None,
}
FIT_DEFAULTS = {
    "inference": "svi",  # or "em": closed-form EM, for models that have it (gmm)
    "epochs": 100,
    "batch_size": 64,
    "lr": 1e-3,
    "optimizer": "adam",
    "elbo": "elbo",
    "num_samples": 1,
    "patience": None,
    "restore_best": None,  # None: restore the best validation epoch when patience is set
    "seed": 0,
    "device": "auto",
    "jit": False,
    "threads": "auto",  # torch threads per process: the cores not busy, shared out
    "log": [],  # experiment trackers: "tensorboard", "mlflow" (lvmkit[tracking])
    "tracking_uri": None,  # MLflow's store; None: MLFLOW_TRACKING_URI, else ./mlflow.db
}
# One line on each [data] and [fit] key, for ``lvmkit fit NAME --help``.
KEY_HELP = {
    "name": "'digits', 'mnist5k', 'mnist', 'fashion-mnist', 'cifar10', or a path",
    "split_seed": "seed of the random split (data without a split of their own)",
    "val_fraction": "validation share: of the train part where the data carry a split",
    "image_shape": "C, H, W that flat rows (N, C*H*W) of a .npy/.npz are read as",
    "levels": "pixel levels of integer data beyond 8 bits",
    "inference": "svi, em (closed-form EM, for gmm) or adversarial (gan): which algorithm fits "
    "the model",
    "epochs": "passes over the training data, or EM iterations at most (resuming: the total)",
    "batch_size": "datapoints per gradient step (over all processes under torchrun)",
    "lr": "learning rate",
    "optimizer": "adam, adamw or sgd",
    "elbo": "elbo, meanfield (analytic KL), iwae (num_samples draws), enum, stl (the ELBO, "
    "sticking-the-landing gradient) or dreg (IWAE, doubly reparameterized gradient; "
    "num_samples >= 2)",
    "num_samples": "draws of z per datapoint in the objective",
    "patience": "stop after this many epochs without a better validation loss",
    "restore_best": "end with the best validation epoch's parameters (default: with patience)",
    "seed": "seed of the fit's draws and batch order",
    "device": "auto, cpu, cuda or cuda:N",
    "jit": "run the steps from a trace of the loss: false, true, or auto (where it can)",
    "threads": "torch threads per process (default: the cores not busy, shared out)",
    "log": "experiment trackers to log to: tensorboard (RUN/tensorboard), mlflow, or both "
    "([\"tensorboard\", \"mlflow\"]); pip install 'lvmkit[tracking]'",
    "tracking_uri": "MLflow tracking URI (default: MLFLOW_TRACKING_URI, else "
    "sqlite:///mlflow.db in the working directory)",
}
RENAMED = {"num_particles": "num_samples"}  # keys older runs wrote -> their names now
# The types of the [data] and [fit] keys ([model] keys take their config dataclass's), and which
# numbers must be above 0 (other numbers must be at least 0; seeds may be anything).
TABLE_TYPES = {
    "data": {
        "name": str,
        "split_seed": int,
        "val_fraction": float,
        "image_shape": tuple[int, ...] | None,
        "levels": int | None,
    },
    "fit": {
        "inference": str,
        "epochs": int,
        "batch_size": int,
        "lr": float,
        "optimizer": str,
        "elbo": str,
        "num_samples": int,
        "patience": int | None,
        "restore_best": bool | None,
        "seed": int,
        "device": str,
        "jit": bool | str,
        "threads": int | str | None,
        "log": tuple[str, ...],
        "tracking_uri": str | None,
    },
}
POSITIVE = {"epochs", "batch_size", "lr", "num_samples", "patience", "levels"}
SEEDS = {"seed", "split_seed"}
CHOICES = {
    "elbo": set(ELBOS),
    "optimizer": set(OPTIMIZERS),
    "inference": {"svi", "em", "adversarial"},
    "log": set(LOGGERS),
}  # NumPy takes seeds in 0 .. 2**32 - 1


# The [fit] keys each algorithm uses; a run records only these, and refuses the others.
EVERY_ALGORITHM = {"inference", "epochs", "seed", "device", "threads", "log", "tracking_uri"}
USED_BY = {
    "svi": set(FIT_DEFAULTS),
    "em": EVERY_ALGORITHM,
    "adversarial": EVERY_ALGORITHM | {"batch_size", "lr"},
}


def unused_settings(config: dict, model_name: str) -> list[str]:
    """The [fit] keys ``config`` sets away from their defaults that its inference does not
    use (they would be recorded and ignored)."""
    fit, defaults = config["fit"], default_config(model_name)["fit"]
    used = USED_BY[fit["inference"]]
    return sorted(k for k, v in fit.items() if k not in used and v != defaults.get(k, v))


def default_config(model_name: str) -> dict:
    """The defaults of a run of this model.

    Parameters
    ----------
    model_name : str
        A registered built-in model.

    Returns
    -------
    dict
        ``{"data": {...}, "model": {...}, "fit": {...}}``.
    """
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose one of {sorted(MODELS)}")
    cls = MODELS[model_name].cls
    fit = {**FIT_DEFAULTS, "inference": cls.default_inference, "lr": cls.default_lr,
           "elbo": cls.default_elbo, "num_samples": cls.default_samples}  # fmt: skip
    return {"data": dict(DATA_DEFAULTS), "model": config_fields(model_name), "fit": fit}


def read_config(path: Path | None, model_name: str) -> dict:
    """The run's config: the defaults updated by a TOML file; unknown tables or keys are errors.

    Parameters
    ----------
    path : Path, optional
        A TOML file with ``[data]``, ``[model]``, ``[fit]`` tables (None: the defaults).
    model_name : str

    Returns
    -------
    dict
    """
    config = default_config(model_name)
    if path is None:
        return config
    if Path(path).is_dir():
        raise ValueError(f"config file {path} is a folder; give a TOML file such as run.toml")
    if Path(path).exists() and not Path(path).is_file():  # /dev/zero, a pipe: endless reads
        raise ValueError(f"config file {path} is not a regular file; give a TOML file")
    if Path(path).exists() and Path(path).stat().st_size > 2**20:
        raise ValueError(f"config file {path} is over 1 MiB, no config; give a TOML file")
    try:
        with open(path, "rb") as f:
            loaded = tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"config file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid TOML: {err}") from None
    for table, values in loaded.items():
        if table not in config:
            raise ValueError(f"{path}: unknown table [{table}]; valid tables are {list(config)}")
        if not isinstance(values, dict):
            raise ValueError(
                f"{path}: {table} = {values!r} should be a table: a line [{table}] followed by "
                "key = value lines"
            )
    return apply_settings(config, loaded, model_name, f"{path}")


def apply_settings(config: dict, tables: dict, model_name: str, source: str) -> dict:
    """``config`` updated by ``tables`` ({table: {key: value}}), each value checked against the
    config's types and ranges; errors name ``source`` (a file, or --set) and the key."""
    config = {table: dict(values) for table, values in config.items()}
    for table, values in tables.items():
        if table not in config:
            raise ValueError(f"{source}: unknown table [{table}]; valid tables are {list(config)}")
        values = {RENAMED.get(k, k): v for k, v in values.items()}  # older runs' files read
        unknown = sorted(set(values) - set(config[table]))
        if unknown:
            raise ValueError(
                f"{source}: unknown key(s) {unknown} in [{table}]; valid keys are "
                f"{sorted(config[table])}"
            )
        types = TABLE_TYPES.get(table) or typing.get_type_hints(MODELS[model_name].cls.config_class)
        defaults = default_config(model_name)[table]
        if table == "fit" and isinstance(values.get("log"), str):  # --set fit.log=tensorboard
            values["log"] = [name.strip() for name in values["log"].split(",")]
        for key, value in values.items():
            problem = _value_problem(key, value, types[key], defaults.get(key))
            if problem:
                raise ValueError(f"{source}: [{table}] {key} = {value!r}: {problem}")
        config[table].update(values)
    return config


def parse_settings(assignments: list[str]) -> dict:
    """``--set`` assignments as tables: values are TOML (``16``, ``0.5``, ``[64, 64]``,
    ``true``); a bare word is a string.

    Parameters
    ----------
    assignments : list of str
        ``["model.z_dim=16", "fit.elbo=iwae"]``.

    Returns
    -------
    dict
        ``{"model": {"z_dim": 16}, "fit": {"elbo": "iwae"}}``.
    """
    tables: dict = {}
    for text in assignments:
        target, eq, value = text.partition("=")
        table, dot, key = target.strip().partition(".")
        if not eq or not dot or not key:
            raise ValueError(f"setting {text!r}: write TABLE.KEY=VALUE, e.g. model.z_dim=16")
        try:
            parsed = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value.strip()  # a bare word: iwae, conv, cuda:0
        tables.setdefault(table, {})[key] = parsed
    return tables


def _conforms(value, hint) -> bool:
    """Whether a TOML value fits a type hint (int, float, str, bool, tuples, unions, None)."""
    if hint is type(None):
        return value is None
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_conforms(value, h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(_conforms(v, args[0]) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _value_problem(key: str, value, hint, default) -> str | None:
    """What is wrong with a config value, or None."""
    if not _conforms(value, hint):
        wanted = str(hint) if typing.get_args(hint) else getattr(hint, "__name__", str(hint))
        return f"expected {wanted}, got {type(value).__name__} {value!r}"
    numbers = value if isinstance(value, (list, tuple)) else [value]
    numbers = [v for v in numbers if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not all(math.isfinite(v) for v in numbers):
        return "must be a finite number"
    positive = (
        key in POSITIVE
        or isinstance(value, (list, tuple))
        or (isinstance(default, int) and not isinstance(default, bool) and default > 0)
    )
    if key in SEEDS and not 0 <= value < 2**32:
        return "must be a seed in 0 .. 2**32 - 1"
    if any(v < 0 or (positive and v == 0) for v in numbers):
        return "must be above 0" if positive else "must be at least 0"
    if isinstance(value, str) and not value:
        return "must not be empty"
    if key in CHOICES and not set(value if key == "log" else [value]) <= CHOICES[key]:
        return f"must be one of {sorted(CHOICES[key])}" + (", or a list of them" * (key == "log"))
    if key == "threads" and isinstance(value, str) and value != "auto":
        return "must be a positive int or 'auto'"
    if key == "jit" and isinstance(value, str) and value != "auto":
        return "must be true, false or 'auto'"
    if key == "levels" and value is not None and value < 2:
        return "must be at least 2 (the number of values a pixel takes)"
    if key == "val_fraction" and not 0 < value < 1:
        return "must lie strictly between 0 and 1"
    if key == "image_shape" and value is not None and (len(value) != 3 or value[0] not in (1, 3)):
        return "must be [C, H, W] with C = 1 or 3"
    return None


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def write_config(config: dict, path: Path) -> None:
    """Write the resolved config as TOML (None values are left out: TOML has no null).

    Parameters
    ----------
    config : dict
    path : Path
    """
    lines = []
    for table, values in config.items():
        lines.append(f"[{table}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
        lines.append("")
    write_text(path, "\n".join(lines))
