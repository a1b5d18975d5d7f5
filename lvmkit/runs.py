"""Run directories: the settings of a run (``config.toml``), its fitted model (``model.pt``),
and ``load_run``, which gives a finished run back as Python objects.

A run directory holds config.toml ([data], [model], [fit] tables), model.pt (the built-in model's
name, config and weights, and the data it was split from), summary.json, metrics.jsonl,
checkpoint.pt and pictures; ``lvmkit evaluate`` and ``lvmkit diagnose`` add their files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from lvmkit import data as lvdata
from lvmkit.core.files import (
    CheckpointError,
    checksum,
    load_checkpoint,
    save_checkpoint,
    write_text,
)
from lvmkit.inference.elbo import ELBOS
from lvmkit.inference.trainer import OPTIMIZERS
from lvmkit.models import MODELS
from lvmkit.models.registry import config_fields, rebuild

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
}
# One line on each [data] and [fit] key, for ``lvmkit fit NAME --help``.
KEY_HELP = {
    "name": "'digits', 'mnist5k', 'mnist', 'fashion-mnist', 'cifar10', or a path",
    "split_seed": "seed of the random split (data without a split of their own)",
    "val_fraction": "validation share: of the train part where the data carry a split",
    "image_shape": "C, H, W that flat rows (N, C*H*W) of a .npy/.npz are read as",
    "levels": "pixel levels of integer data beyond 8 bits",
    "epochs": "passes over the training data (with --resume: the total to reach)",
    "batch_size": "datapoints per gradient step (over all processes under torchrun)",
    "lr": "learning rate",
    "optimizer": "adam, adamw or sgd",
    "elbo": "elbo, meanfield (analytic KL), iwae (num_samples draws) or enum",
    "num_samples": "draws of z per datapoint in the objective",
    "patience": "stop after this many epochs without a better validation loss",
    "restore_best": "end with the best validation epoch's parameters (default: with patience)",
    "seed": "seed of the fit's draws and batch order",
    "device": "auto, cpu, cuda or cuda:N",
    "jit": "run the steps from a trace of the loss",
    "threads": "torch threads per process (default: the cores not busy, shared out)",
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
        "jit": bool,
        "threads": int | str | None,
    },
}
POSITIVE = {"epochs", "batch_size", "lr", "num_samples", "patience", "levels"}
SEEDS = {"seed", "split_seed"}
CHOICES = {"elbo": set(ELBOS), "optimizer": set(OPTIMIZERS)}  # NumPy takes seeds in 0 .. 2**32 - 1


def default_config(model_name: str) -> dict:
    """The defaults of a run of this model: {data, model, fit} tables."""
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose one of {sorted(MODELS)}")
    cls = MODELS[model_name].cls
    fit = {**FIT_DEFAULTS, "elbo": cls.default_elbo, "num_samples": cls.default_samples}
    return {"data": dict(DATA_DEFAULTS), "model": config_fields(model_name), "fit": fit}


def read_config(path: Path | None, model_name: str) -> dict:
    """The run's config: defaults, updated by the TOML file; unknown tables or keys are errors."""
    config = default_config(model_name)
    if path is None:
        return config
    if Path(path).is_dir():
        raise ValueError(f"--config {path} is a folder; give a TOML file such as run.toml")
    try:
        with open(path, "rb") as f:
            loaded = tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"no config file at {path}") from None
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
        for key, value in values.items():
            problem = _value_problem(key, value, types[key], defaults.get(key))
            if problem:
                raise ValueError(f"{source}: [{table}] {key} = {value!r}: {problem}")
        config[table].update(values)
    return config


def parse_settings(assignments: list[str]) -> dict:
    """``["model.z_dim=16", "fit.elbo=iwae"]`` -> {"model": {"z_dim": 16}, "fit": {"elbo":
    "iwae"}}: values are TOML (``16``, ``0.5``, ``[64, 64]``, ``true``); a bare word is a string."""
    tables: dict = {}
    for text in assignments:
        target, eq, value = text.partition("=")
        table, dot, key = target.strip().partition(".")
        if not eq or not dot or not key:
            raise ValueError(f"--set {text!r}: write TABLE.KEY=VALUE, e.g. --set model.z_dim=16")
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
        return f"expected {getattr(hint, '__name__', str(hint))}, got {type(value).__name__}"
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
    if key in CHOICES and value not in CHOICES[key]:
        return f"must be one of {sorted(CHOICES[key])}"
    if key == "threads" and isinstance(value, str) and value != "auto":
        return "must be a positive int or 'auto'"
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
    """Write the resolved config as TOML (None values are left out: TOML has no null)."""
    lines = []
    for table, values in config.items():
        lines.append(f"[{table}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
        lines.append("")
    write_text(path, "\n".join(lines))


def save_model(model, model_name: str, data: dict, path: Path) -> Path:
    """Write a fitted built-in model (name, config, weights) and ``data`` (name, split_seed,
    image_shape) to ``path``, atomically."""
    state = {
        "kind": "model",
        "model": model_name,
        "config": dataclasses.asdict(model.config),
        "state_dict": model.state_dict(),
        "data": data,
    }
    return save_checkpoint(state, path)


@dataclass
class Run:
    """A finished run: its fitted model (in eval mode, on the CPU), its settings and results."""

    path: Path
    name: str  # the built-in model's registered name
    model: object
    config: dict  # config.toml's tables (defaults where the file is missing)
    summary: dict | None  # summary.json, if there is one
    data: dict  # what the model was fitted on: name, split_seed, val_fraction, image_shape

    def splits(self) -> tuple[lvdata.ImageData, lvdata.ImageData, lvdata.ImageData]:
        """The train, validation and test parts of the data the run was fitted on; a
        ValueError if those data changed since."""
        data = self.load_data(self.data["name"])
        stored = self.data.get("sha256")  # runs written before it was kept have none
        if stored is not None and data_checksum(data) != stored:
            raise ValueError(
                f"{self.data['name']} changed since {self.path} was fitted on it (its SHA-256 "
                "differs): give the data it was fitted on, or score these with --data"
            )
        return lvdata.train_val_test(
            data,
            self.data.get("val_fraction", DATA_DEFAULTS["val_fraction"]),
            seed=self.data["split_seed"],
        )

    def test_data(self) -> lvdata.ImageData:
        return self.splits()[2]

    def load_data(self, source) -> lvdata.ImageData:
        """Data from ``source`` read as this run's model takes them (flat rows as its images)."""
        image_shape = tuple(self.data["image_shape"])
        return lvdata.load(source, image_shape=image_shape, levels=self.data.get("levels"))


def data_checksum(data: lvdata.ImageData) -> str:
    """SHA-256 of a dataset's pixels, labels and split: what a run remembers of its data."""
    return checksum([data.x, data.y, sorted((data.splits or {}).items())])


def load_run(path: str | Path) -> Run:
    """Rebuild the built-in model of a run directory from its model.pt (config and weights)."""
    path = Path(path)
    if not (path / "model.pt").is_file():
        if (path / "checkpoint.pt").is_file():
            raise ValueError(
                f"{path} holds a run that did not finish (a checkpoint, no model.pt): continue "
                f"it with lvmkit fit MODEL --out {path} --resume"
            )
        raise ValueError(
            f"{path} is not a finished run (no model.pt in it); give the --out folder of a "
            "completed lvmkit fit"
        )
    file = path / "model.pt"
    try:
        state = load_checkpoint(file)
    except CheckpointError as err:
        if not (path / "checkpoint.pt").is_file():
            raise
        raise CheckpointError(
            f"{err}; the run's checkpoint.pt can write it again: move model.pt away and run "
            f"lvmkit fit MODEL --out {path} --resume"
        ) from None
    if state.get("kind") != "model" or not {"config", "state_dict", "data"} <= set(state):
        raise CheckpointError(f"{file} does not hold a built-in lvmkit model")
    name = state.get("model")
    if name not in MODELS:
        raise CheckpointError(
            f"{file} holds model {name!r}, which is not registered in this "
            "process: import the module that calls lvmkit.models.register_model for it first"
        )
    try:
        model = rebuild(name, state["config"])
        model.load_state_dict(state["state_dict"])
    except (TypeError, RuntimeError, ValueError) as err:  # settings or weights of another model
        raise CheckpointError(
            f"{file}: its weights do not fit the {name!r} model its settings describe "
            f"({str(err).splitlines()[0][:200]}); the file was written by other code or "
            "edited: fit the run again"
        ) from err
    config_path = path / "config.toml"
    config = read_config(config_path if config_path.exists() else None, name)
    return Run(path, name, model.eval(), config, read_json(path / "summary.json"), state["data"])


def read_json(path: Path) -> dict | None:
    """A JSON file a command wrote (summary.json, evaluation.json); None if there is none."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); delete it, or write it again with the "
            "lvmkit command that made it"
        ) from None
