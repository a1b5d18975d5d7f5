"""Run directories: a run's fitted model (``model.pt``) and ``load_run``, which gives a finished
run back as Python objects.

A run directory holds config.toml ([data], [model], [fit] tables), model.pt (the built-in model's
name, config and weights, and the data it was split from), summary.json, metrics.jsonl,
checkpoint.pt and pictures; evaluation and diagnosis add their files.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from lvmkit import data as lvdata
from lvmkit.core.files import (
    CheckpointError,
    checksum,
    load_checkpoint,
    lock_holder,
    save_checkpoint,
)
from lvmkit.models import MODELS
from lvmkit.models.registry import rebuild
from lvmkit.runs.config import DATA_DEFAULTS, read_config


def save_model(model, model_name: str, data: dict, path: Path) -> Path:
    """Write a fitted built-in model (name, config, weights) and where its data came from to
    ``path``, atomically.

    Parameters
    ----------
    model : BuiltinModel
    model_name : str
    data : dict
        Name, split_seed, val_fraction, image_shape, levels, sha256.
    path : Path

    Returns
    -------
    Path
    """
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
    """A finished run: its fitted model (in eval mode, on the CPU), its settings and results.

    Parameters
    ----------
    path : Path
        The run directory.
    name : str
        The built-in model's registered name.
    model : BuiltinModel
    config : dict
        The ``[data]``, ``[model]`` and ``[fit]`` tables of config.toml.
    summary : dict, optional
        summary.json's content.
    data : dict
        Where the data came from and how they were split (name, split_seed, val_fraction,
        image_shape, levels, sha256).
    """

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
                "differs): give the data it was fitted on, or score these as other data "
                "(evaluate_run's data, lvmkit evaluate --data)"
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
    """Rebuild the built-in model of a run directory from its model.pt (config and weights).

    Parameters
    ----------
    path : str or Path
        A run directory written by ``lvmkit fit`` or ``fit_run``.

    Returns
    -------
    Run
    """
    path = Path(path)
    if not (path / "model.pt").is_file():
        holder = lock_holder(path)
        if holder is not None:
            raise ValueError(
                f"{path} is being fitted by another lvmkit process (pid {holder}); wait for it "
                "to finish"
            )
        if (path / "checkpoint.pt").is_file():
            raise ValueError(
                f"{path} holds a run that did not finish (a checkpoint, no model.pt): resume it "
                f"(lvmkit.runs.fit_run with resume, or lvmkit fit MODEL --out {path} --resume)"
            )
        raise ValueError(
            f"{path} is not a finished run (no model.pt in it); give the folder a finished "
            "fit wrote (fit_run's out, lvmkit fit's --out)"
        )
    file = path / "model.pt"
    try:
        state = load_checkpoint(file)
    except CheckpointError as err:
        if not (path / "checkpoint.pt").is_file():
            raise
        raise CheckpointError(
            f"{err}; the run's checkpoint.pt can write it again: move model.pt away and "
            f"resume the run (lvmkit.runs.fit_run with resume, or lvmkit fit MODEL --out {path} "
            "--resume)"
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
    """A JSON file a command wrote (summary.json, evaluation.json).

    Parameters
    ----------
    path : Path

    Returns
    -------
    dict or None
        None where there is no such file.
    """
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); delete it, or write it again with the "
            "lvmkit command that made it"
        ) from None
