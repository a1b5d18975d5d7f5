"""Loggers to experiment trackers, read back with the trackers' own readers: TensorBoard's
EventAccumulator and MLflow's client on a real SQLite store (no mocks)."""

import sys

import pyro
import pyro.distributions as dist
import pytest
import torch

import lvmkit
from lvmkit.inference.tracking import scalars

tensorboard = pytest.importorskip("tensorboard")
mlflow = pytest.importorskip("mlflow")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def model(x):
    """A user's own model in the pyro.param style: x ~ N(mu, 1), mu a parameter."""
    mu = pyro.param("mu", torch.tensor(0.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def guide(x):
    pass


def tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}  # fmt: skip


def test_the_api_logs_every_step_and_epoch_to_both_trackers(tmp_path):
    x = torch.randn(20) + 3.0
    tb = lvmkit.TensorBoardLogger(tmp_path / "tb")
    ml = lvmkit.MLflowLogger(f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="own",
                             run_name="mu", params={"note": "a test"})  # fmt: skip
    pyro.clear_param_store()
    result = lvmkit.fit(model, guide, x, epochs=3, batch_size=10, lr=0.1, progress=False,
                        loggers=[tb, ml])  # fmt: skip

    logged = tensorboard_scalars(tmp_path / "tb")
    assert [step for step, _ in logged["step/loss"]] == [1, 2, 3, 4, 5, 6]
    assert [step for step, _ in logged["epoch/loss"]] == [2, 4, 6]  # at each epoch's last step
    assert "step/epoch" not in logged
    assert [v for _, v in logged["epoch/loss"]] == pytest.approx(result.losses, rel=1e-6)
    assert [v for _, v in logged["epoch/lr"]] == pytest.approx([0.1] * 3)
    assert [v for _, v in logged["epoch/epoch"]] == [1.0, 2.0, 3.0]

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(ml.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "mu"
    assert run.data.params["lr"] == "0.1" and run.data.params["note"] == "a test"
    assert run.data.params["algorithm"] == "svi" and run.data.params["batch_size"] == "10"
    history = client.get_metric_history(ml.run_id, "epoch/loss")
    assert [m.step for m in history] == [2, 4, 6]
    assert [m.value for m in history] == pytest.approx(result.losses, rel=1e-6)
    assert len(client.get_metric_history(ml.run_id, "step/loss")) == 6
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "notes.txt").write_text("kept")
    ml.log_artifacts(tmp_path / "files", tmp_path / "files" / "notes.txt")
    assert [a.path for a in client.list_artifacts(ml.run_id)] == ["files", "notes.txt"]
    assert [a.path for a in client.list_artifacts(ml.run_id, "files")] == ["files/notes.txt"]


def test_a_resumed_fit_continues_its_mlflow_run_and_its_event_files(tmp_path):
    x = torch.randn(12)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = lvmkit.MLflowLogger(uri)
    pyro.clear_param_store()
    lvmkit.fit(model, guide, x, epochs=2, batch_size=6, progress=False, checkpoint_dir=tmp_path,
               loggers=[first, lvmkit.TensorBoardLogger(tmp_path / "tb")])  # fmt: skip
    again = lvmkit.MLflowLogger(uri, run_id=first.run_id)
    pyro.clear_param_store()
    lvmkit.fit(model, guide, x, epochs=3, batch_size=6, progress=False, checkpoint_dir=tmp_path,
               resume=True, loggers=[again, lvmkit.TensorBoardLogger(tmp_path / "tb")])  # fmt: skip
    client = mlflow.MlflowClient(uri)
    assert [m.step for m in client.get_metric_history(first.run_id, "epoch/loss")] == [2, 4, 6]
    assert [s for s, _ in tensorboard_scalars(tmp_path / "tb")["step/loss"]] == [1, 2, 3, 4, 5, 6]


def test_the_scalars_name_lists_by_index_and_leave_out_words():
    metrics = {"event": "epoch", "epoch": 2, "global_step": 8, "loss": 1.5, "jit": "off",
               "kl_per_dim": [0.5, 0.0], "converged": True}  # fmt: skip
    assert scalars(metrics) == {"epoch/epoch": 2.0, "epoch/loss": 1.5,
                                "epoch/kl_per_dim/0": 0.5, "epoch/kl_per_dim/1": 0.0}  # fmt: skip


def test_a_missing_tracker_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    with pytest.raises(ImportError, match=r"MLflowLogger needs the mlflow .*lvmkit\[tracking\]"):
        lvmkit.MLflowLogger()


def test_the_cli_logs_a_run_and_its_resume_to_both_trackers(tmp_path, capsys):
    from lvmkit.cli import main

    run, uri = tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    small = ["--set", "model.hidden=[16]", "--set", "model.z_dim=3", "--no-progress"]
    track = ["--set", "fit.log=tensorboard,mlflow", "--set", f"fit.tracking_uri={uri}"]
    assert main(["fit", "lvm", "--epochs", "1", "--out", str(run), *small, *track]) == 0
    assert main(["fit", "lvm", "--epochs", "2", "--out", str(run), "--resume", *small,
                 *track]) == 0  # fmt: skip

    logged = tensorboard_scalars(run / "tensorboard")
    epochs = [step for step, _ in logged["epoch/loss"]]
    assert len(epochs) == 2 and {"epoch/kl_per_dim/0", "epoch/kl_per_dim/2"} <= set(logged)
    assert "epoch/kl_per_dim/3" not in logged  # z_dim = 3
    assert [step for step, _ in logged["step/loss"]] == list(range(1, epochs[-1] + 1))

    client = mlflow.MlflowClient(uri)
    (found,) = client.search_runs([client.get_experiment_by_name("lvmkit").experiment_id])
    assert found.info.run_name == "run" and found.info.status == "FINISHED"
    assert found.data.params["model.z_dim"] == "3" and found.data.params["data.name"] == "digits"
    history = client.get_metric_history(found.info.run_id, "epoch/val_loss")
    assert [m.step for m in history] == epochs
    files = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"config.toml", "summary.json", "metrics.jsonl", "model.pt", "losses.png"} <= files


def test_an_unknown_tracker_is_refused_before_any_file(tmp_path, capsys):
    from lvmkit.cli import main

    assert main(["fit", "lvm", "--out", str(tmp_path / "r"), "--set", "fit.log=wandb"]) == 2
    assert "must be one of ['mlflow', 'tensorboard']" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_step_losses_are_each_batchs_and_weigh_up_to_the_epochs():
    seen = []
    pyro.clear_param_store()
    result = lvmkit.fit(model, guide, torch.randn(25) + 1.0, epochs=2, batch_size=10,
                        lr=0.1, progress=False, callbacks=[seen.append])  # fmt: skip
    for epoch in (1, 2):
        steps = [m["loss"] for m in seen if m["event"] == "step" and m["epoch"] == epoch]
        assert len(set(steps)) == 3  # three batches, three losses, not a running mean
        weighed = (10 * steps[0] + 10 * steps[1] + 5 * steps[2]) / 25
        assert weighed == pytest.approx(result.losses[epoch - 1], rel=1e-6)


def test_a_default_store_is_found_again_from_elsewhere_and_a_failed_fit_says_so(
    tmp_path, monkeypatch, capsys
):
    from lvmkit.cli import main

    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    small = ["--set", "model.hidden=[8]", "--set", "model.z_dim=2", "--no-progress",
             "--set", "fit.log=mlflow"]  # fmt: skip
    assert main(["fit", "lvm", "--epochs", "1", "--out", "run", *small]) == 0
    assert (tmp_path / "here" / "mlflow.db").is_file()  # MLflow's default store, here
    monkeypatch.chdir(tmp_path)  # the resume starts elsewhere and finds the same store
    assert main(["fit", "lvm", "--epochs", "2", "--out", "here/run", "--resume", *small]) == 0
    assert not (tmp_path / "mlflow.db").exists()
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'here' / 'mlflow.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name("lvmkit").experiment_id])
    assert len(client.get_metric_history(found.info.run_id, "epoch/loss")) == 2
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert "model.pt" in artifacts and "checkpoint.pt" not in artifacts
    assert (tmp_path / "here" / "mlruns").is_dir() and not (tmp_path / "mlruns").exists()

    def fail(metrics):
        raise RuntimeError("a callback failed")

    logger = lvmkit.MLflowLogger(f"sqlite:///{tmp_path / 'here' / 'mlflow.db'}")
    pyro.clear_param_store()
    with pytest.raises(RuntimeError):
        lvmkit.fit(model, guide, torch.randn(8), epochs=1, progress=False, callbacks=[fail],
                   loggers=[logger])  # fmt: skip
    assert client.get_run(logger.run_id).info.status == "FAILED"
    assert main(["fit", "lvm", "--out", str(tmp_path / "r"), "--set", "fit.tracking_uri=x.db"]) == 2
    assert "is for the mlflow tracker" in capsys.readouterr().err
