"""The trackers a run logs to ([fit] log): TensorBoard event files in RUN/tensorboard; an
MLflow run with the config as parameters and the run's files as artifacts, whose id
RUN/mlflow.json keeps so that a resumed fit continues it; and, for a model with a Gaussian
code, each epoch's KL of q(z|x) from p(z) per latent dimension on validation images."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lvmkit.core.files import write_text
from lvmkit.diagnostics.gaussian_code import kl_per_dimension
from lvmkit.inference.tracking import Logger, MLflowLogger, TensorBoardLogger, absolute_uri

TENSORBOARD_DIR = "tensorboard"
MLFLOW_RECORD = "mlflow.json"
KL_IMAGES = 256  # validation images the KL per dimension is averaged over


class RunMLflowLogger(MLflowLogger):
    """An MLflowLogger whose parameters are the run's config (its config.toml, as the run
    began), and which records its MLflow run and store in the run folder as it starts."""

    def __init__(self, record: Path, **options):
        super().__init__(**options)
        self.record = record

    def start(self, settings: dict, first_step: int) -> None:
        super().start({}, first_step)  # the config holds the loop's settings
        kept = {"run_id": self.run_id, "tracking_uri": self.tracking_uri}
        write_text(self.record, json.dumps(kept) + "\n")


class KLPerDimension:
    """A callback that adds ``kl_per_dim`` (one number per latent dim) to each epoch's metrics
    of a model with ``encode`` and p(z) = N(0, I)."""

    def __init__(self, model, x: torch.Tensor):
        self.model, self.x = model, x

    def __call__(self, metrics: dict) -> None:
        if metrics["event"] == "epoch":
            metrics["kl_per_dim"] = kl_per_dimension(self.model, self.x).tolist()


def run_loggers(config: dict, out: Path, resume: bool) -> list[Logger]:
    """The loggers [fit] log names, for the run in ``out``. A resume continues the MLflow run
    RUN/mlflow.json records, in its store, unless another store is given."""
    names, uri, loggers = config["fit"]["log"], config["fit"]["tracking_uri"], []
    if uri is not None and "mlflow" not in names:
        raise ValueError(
            f"[fit] tracking_uri = {uri!r} is for the mlflow tracker, which [fit] log does not "
            "name: add it (--set fit.log=mlflow), or leave tracking_uri out"
        )
    if "tensorboard" in names:
        loggers.append(TensorBoardLogger(out / TENSORBOARD_DIR))
    if "mlflow" in names:
        record = out / MLFLOW_RECORD
        kept = json.loads(record.read_text()) if resume and record.exists() else {}
        same = uri is None or absolute_uri(uri) == kept.get("tracking_uri")
        run_id = kept.get("run_id") if same else None
        uri = kept.get("tracking_uri") if uri is None else uri
        loggers.append(RunMLflowLogger(record, tracking_uri=uri, run_name=out.name,
                                       run_id=run_id, params=config))  # fmt: skip
    return loggers


def tracker_files(out: Path) -> list[Path]:
    """What the trackers wrote into the run folder."""
    return [p for p in (out / MLFLOW_RECORD, out / TENSORBOARD_DIR) if p.exists()]


def kl_callbacks(model, val, loggers: list[Logger]) -> list:
    """The KL-per-dimension callback where there are loggers and the model has a Gaussian
    code, else none."""
    if not loggers or not getattr(model, "gaussian_code", False):
        return []
    x = val.batch(torch.arange(min(KL_IMAGES, len(val))))[0]
    return [KLPerDimension(model, x)]
