"""Loggers of the loop's metrics to experiment trackers: TensorBoard event files and MLflow
tracking stores. ``run`` (and ``fit``, ``em``, ``fit_adversarial``) take them as ``loggers``:
it starts each with the fit's settings, hands it every step's and epoch's metrics after the
callbacks, and closes it when the fit ends or fails. Under torchrun only rank 0 logs."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import time
from pathlib import Path

EXTRA = "pip install 'lvmkit[tracking]'"
LOGGERS = ("tensorboard", "mlflow")  # the names [fit] log takes


def _require(module: str, package: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"{what} needs the {package} package, which is not installed: {EXTRA} "
            f"(or pip install {package})"
        ) from None


def scalars(metrics: dict) -> dict[str, float]:
    """The numbers of one step's or epoch's metrics under the names both trackers show:
    ``step/loss``; ``epoch/loss``, ``epoch/val_loss``, ``epoch/lr``, ``epoch/elapsed`` (seconds
    of fitting so far), ``epoch/kl_per_dim/3`` (one per latent dim), ``epoch/epoch``, ..."""
    event, out = metrics["event"], {}
    left_out = {"event", "step", "global_step", *(["epoch"] if event == "step" else [])}
    for key, value in metrics.items():
        if key in left_out or isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out[f"{event}/{key}"] = float(value)
        elif isinstance(value, list | tuple):
            out |= {f"{event}/{key}/{i}": float(v) for i, v in enumerate(value)}
    return out


def flat(settings: dict, prefix: str = "") -> dict[str, str]:
    """Nested settings as ``{"fit.lr": "0.001", ...}``, the flat strings trackers keep."""
    out = {}
    for key, value in settings.items():
        if value is None:  # unset: nothing to record
            continue
        if isinstance(value, dict):
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return out


class Logger:
    """What ``run`` asks of a logger: ``start(settings, first_step)`` once on rank 0 before the
    first step (``first_step``: the global step it resumes after, 0 for a fresh fit);
    ``__call__(metrics)`` per step and epoch (``loop.run``'s callbacks' dicts, with
    ``global_step``, the steps done so far, on both); ``close(status)`` at the end, "FINISHED",
    "KILLED" (interrupted by a signal) or "FAILED" (an error)."""

    def start(self, settings: dict, first_step: int) -> None:
        pass

    def __call__(self, metrics: dict) -> None:
        raise NotImplementedError

    def close(self, status: str = "FINISHED") -> None:
        """``status``: "FINISHED", "KILLED" (interrupted) or "FAILED" (an error)."""


class TensorBoardLogger(Logger):
    """Scalars in TensorBoard event files in ``log_dir`` (``tensorboard --logdir``): each
    step's loss and each epoch's metrics, all against the global step; the settings as text.
    A resumed fit purges what an unfinished session logged past its checkpoint.

    Parameters
    ----------
    log_dir : str or Path
    """

    def __init__(self, log_dir: str | Path):
        _require("tensorboard", "tensorboard", "TensorBoardLogger")
        self.log_dir, self.writer = Path(log_dir), None

    def start(self, settings: dict, first_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.log_dir), purge_step=first_step + 1)
        table = "\n".join(f"| {k} | {v} |" for k, v in flat(settings).items())
        self.writer.add_text("settings", "| setting | value |\n|---|---|\n" + table, first_step)

    def __call__(self, metrics: dict) -> None:
        for tag, value in scalars(metrics).items():
            self.writer.add_scalar(tag, value, metrics["global_step"])

    def close(self, status: str = "FINISHED") -> None:
        if self.writer is not None:
            self.writer.close()


class MLflowLogger(Logger):
    """A run in an MLflow tracking store: the fit's settings (and ``params``) as parameters,
    each step's and epoch's metrics against the global step (written once per epoch), and
    files by ``log_artifacts``. A local store's URI is made absolute as the run starts
    (``tracking_uri`` then says where it is, whatever the working directory later), and a new
    experiment in it keeps its artifacts beside it (``mlruns/`` next to the database).

    Parameters
    ----------
    tracking_uri : str, optional
        Any MLflow tracking URI (``sqlite:///runs/mlflow.db``, ``file:./mlruns``, a server's
        ``http://...``); None takes MLflow's own default (``MLFLOW_TRACKING_URI``, else
        ``sqlite:///mlflow.db`` in the working directory).
    experiment : str
        The experiment's name, made when the store lacks it.
    run_name : str, optional
    run_id : str, optional
        Continue this MLflow run (a resumed fit) instead of starting one.
    params : dict, optional
        More parameters to record (nested dicts are flattened: ``{"fit": {"lr": 1e-3}}`` ->
        ``fit.lr``).
    """

    def __init__(self, tracking_uri: str | None = None, *, experiment: str = "lvmkit",
                 run_name: str | None = None, run_id: str | None = None,
                 params: dict | None = None):  # fmt: skip
        _require("mlflow", "mlflow", "MLflowLogger")
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.run_id, self.params = run_id, dict(params or {})
        self.client, self.pending = None, []

    def start(self, settings: dict, first_step: int) -> None:
        import mlflow
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        self.tracking_uri = absolute_uri(self.tracking_uri or mlflow.get_tracking_uri())
        with quiet_logger("mlflow"), quiet_logger("alembic"):  # its database set-up notes
            self.client = mlflow.MlflowClient(self.tracking_uri)
            if self.run_id is not None:  # its parameters are set: MLflow refuses changing them
                try:
                    self.client.update_run(self.run_id, status="RUNNING")
                except MlflowException:
                    raise ValueError(
                        f"MLflow run {self.run_id} is not in the store {self.tracking_uri}: "
                        "give the store it was logged to (tracking_uri), or no run_id to start "
                        "a new MLflow run"
                    ) from None
                return
            found = self.client.get_experiment_by_name(self.experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(
                self.experiment, artifact_location=_artifacts_beside(self.tracking_uri)
            )  # fmt: skip
        run = self.client.create_run(experiment_id, run_name=self.run_name)
        self.run_id = run.info.run_id
        params = [Param(k, v[:6000]) for k, v in flat({**settings, **self.params}).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 in one batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def __call__(self, metrics: dict) -> None:
        from mlflow.entities import Metric

        stamp, step = int(time.time() * 1000), metrics["global_step"]
        self.pending += [Metric(k, v, stamp, step) for k, v in scalars(metrics).items()]
        if metrics["event"] == "epoch":
            self._flush()

    def _flush(self) -> None:
        for i in range(0, len(self.pending), 1000):  # MLflow's most metrics in one batch
            self.client.log_batch(self.run_id, metrics=self.pending[i : i + 1000])
        self.pending = []

    def close(self, status: str = "FINISHED") -> None:
        if self.client is not None:
            self._flush()
            self.client.set_terminated(self.run_id, status=status)

    def log_artifacts(self, *paths: str | Path) -> None:
        """Copy files, and folders with what they hold, into the run's artifacts (after
        ``close`` too)."""
        from mlflow import MlflowClient

        client = self.client or MlflowClient(self.tracking_uri)
        for path in map(Path, paths):
            if path.is_dir():
                client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
            else:
                client.log_artifact(self.run_id, str(path))


def absolute_uri(uri: str) -> str:
    """A local store's URI with an absolute path (``sqlite:///mlflow.db`` ->
    ``sqlite:////here/mlflow.db``; a plain path or ``file:`` likewise); others as they are."""
    if uri.startswith("sqlite:///"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).absolute())
    if uri.startswith("file:") or ("://" not in uri and not uri.startswith("databricks")):
        return Path(uri.removeprefix("file:")).absolute().as_uri()
    return uri


def _artifacts_beside(uri: str) -> str | None:
    """Where a new experiment in a local SQLite store keeps its files: ``mlruns/`` beside the
    database (MLflow's default is the working directory's); None leaves the store's own."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///") :]).parent / "mlruns").as_uri()


@contextlib.contextmanager
def quiet_logger(name: str):
    """A library's logger held at WARNING inside (its set-up notes unprinted)."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        log.setLevel(level)
