"""Nothing lost, nothing torn: the cases of a reliability sweep, each with its exact outcome."""

import os
import subprocess
import sys
import time

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import lvmkit
from lvmkit.cli import main
from lvmkit.core.files import run_lock, write_text
from lvmkit.inference import CheckpointError, NonFiniteLossError, load_checkpoint, save_checkpoint


def sqrt_pair():
    """A model whose loss stays finite while its gradient is NaN (sqrt at 0) once w hits 0."""
    lin = nn.Linear(1, 1)

    def model(x):
        pyro.module("lin", lin)
        w = pyro.param("w", torch.tensor(1.0))
        with pyro.plate("data", len(x)):
            loc = lin(x[:, None]).squeeze(-1) + torch.sqrt(w * (x[0] > 100))  # sqrt(0): inf grad
            pyro.sample("y", dist.Normal(loc, 1.0), obs=x)

    return model, lambda x: None


def test_a_nan_gradient_never_reaches_the_parameters_or_a_checkpoint(tmp_path):
    model, guide = sqrt_pair()
    x = torch.randn(64)
    with pytest.raises(NonFiniteLossError, match=r"gradient of parameter 'w' is not finite"):
        lvmkit.fit(model, guide, x, epochs=2, progress=False, checkpoint_dir=tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()  # nothing bad was saved


def test_a_checkpoint_is_never_written_with_nan_values(tmp_path):
    good = tmp_path / "checkpoint.pt"
    save_checkpoint({"params": {"w": torch.ones(3)}}, good)
    before = good.read_bytes()
    with pytest.raises(CheckpointError, match=r"\['params'\]\['w'\] holds NaN/inf"):
        save_checkpoint({"params": {"w": torch.tensor([1.0, float("nan")])}}, good)
    assert good.read_bytes() == before  # the last good checkpoint stays
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left


def test_bit_flips_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"params": {"w": torch.arange(4096.0)}}, path)
    data = bytearray(path.read_bytes())
    refused = 0
    for i in range(0, len(data), max(1, len(data) // 60)):  # single-bit flips across the file
        flipped = bytearray(data)
        flipped[i] ^= 0x10
        path.write_bytes(bytes(flipped))
        try:
            load_checkpoint(path)
        except CheckpointError:
            refused += 1
            continue
        # a flip that loads must have hit bytes that carry nothing (zip padding/metadata)
        assert torch.equal(load_checkpoint(path)["params"]["w"], torch.arange(4096.0))
    assert refused > 0
    path.write_bytes(bytes(data))
    payload = bytearray(data)
    payload[len(payload) // 2] ^= 0x01  # in the tensor bytes
    path.write_bytes(bytes(payload))
    with pytest.raises(CheckpointError, match="does not match its checksum|not a readable"):
        load_checkpoint(path)
    for content in (b"", b"just some text\n", b"\x00" * 100):
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match="is not a readable checkpoint"):
            load_checkpoint(path)


def test_a_second_process_is_refused_from_a_run_folder_in_use(tmp_path):
    """Two processes fitting into one folder: one runs, the other is refused naming its pid."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from lvmkit.core.files import run_lock\n"
            f"with run_lock({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            CheckpointError, match=f"in use by another lvmkit process \\(pid {holder.pid}\\)"
        ):
            with run_lock(tmp_path):
                pass
        code = main(["fit", "lvm", "--epochs", "1", "--out", str(tmp_path), "--no-progress"])
        assert code == 2 and not (tmp_path / "config.toml").exists()  # nothing written
    finally:
        holder.kill()
        holder.wait()
    with run_lock(tmp_path):  # a lock left by a dead process is taken over
        assert (tmp_path / ".lvmkit.lock").read_text() == str(os.getpid())
    assert not (tmp_path / ".lvmkit.lock").exists()


def test_two_cli_fits_into_one_folder_one_runs_one_is_refused(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "lvmkit.cli", "fit", "lvm", "--out", str(run), "--no-progress"]
    first = subprocess.Popen(
        cmd + ["--epochs", "400", "--seed", "1"], stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 120
        while not (run / "checkpoint.pt").exists() and time.time() < deadline:
            time.sleep(0.2)
        second = subprocess.run(
            cmd + ["--epochs", "1", "--seed", "2", "--overwrite"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2 and "in use by another lvmkit process" in second.stderr
        assert "seed = 1" in (run / "config.toml").read_text()  # not replaced by the loser
        load_checkpoint(run / "checkpoint.pt")  # whole, checksummed
    finally:
        first.kill()
        first.wait()


def test_the_cli_keeps_a_finished_run_and_resumes_with_its_own_settings(tmp_path, capsys):
    run = tmp_path / "run"
    (tmp_path / "run.toml").write_text("[fit]\nbatch_size = 100\n")
    args = ["fit", "lvm", "--config", str(tmp_path / "run.toml"), "--out", str(run)]
    assert main(args + ["--epochs", "1", "--no-progress"]) == 0
    config, model = (run / "config.toml").read_text(), (run / "model.pt").read_bytes()
    assert main(["fit", "lvm", "--epochs", "1", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "holds a run already" in err and "--resume" in err and "--overwrite" in err
    assert (run / "config.toml").read_text() == config and (run / "model.pt").read_bytes() == model
    # --resume without --config: the run's own settings (batch_size 100), not the defaults
    assert (
        main(["fit", "lvm", "--epochs", "2", "--out", str(run), "--resume", "--no-progress"]) == 0
    )
    assert "batch_size = 100" in (run / "config.toml").read_text()
    config = (run / "config.toml").read_text()
    np.save(tmp_path / "other.npy", np.random.default_rng(0).integers(0, 17, (50, 8, 8)))
    refused = {  # each refused before config.toml or the checkpoint changes
        "--data": (["--data", str(tmp_path / "other.npy")], "was written fitting other data"),
        "--lr": (["--lr", "0.1"], "was fitted with [fit] lr = 0.001, not 0.1"),
        "--set": (["--set", "model.z_dim=3"], "was fitted with [model] z_dim = 8, not 3"),
        "--config": (["--config", str(tmp_path / "run.toml")], "leave --config out"),
    }
    checkpoint = (run / "checkpoint.pt").read_bytes()
    for extra, message in refused.values():
        resume = ["fit", "lvm", "--epochs", "3", "--out", str(run), "--resume", "--no-progress"]
        assert main([*resume, *extra]) == 2
        assert message in capsys.readouterr().err
        assert (run / "config.toml").read_text() == config
        assert (run / "checkpoint.pt").read_bytes() == checkpoint
    (run / "checkpoint.pt").unlink()  # a finished run without its checkpoint is not replaced
    assert main(["fit", "lvm", "--epochs", "3", "--out", str(run), "--resume"]) == 2
    assert "finished run without its checkpoint.pt" in capsys.readouterr().err
    assert (
        main(["fit", "lvm", "--epochs", "1", "--out", str(run), "--overwrite", "--no-progress"])
        == 0
    )


def test_run_files_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "evaluation.json"
    write_text(path, '{"log_likelihood": 1.0}\n')

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_text(path, '{"log_likelihood": 2.0}\n')
    assert path.read_text() == '{"log_likelihood": 1.0}\n'  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["evaluation.json"]  # no temporary left


def test_resuming_with_other_data_is_refused(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, other = torch.randn(100, 6, generator=g), torch.randn(100, 6, generator=g)
    from test_svi import user_pair

    lvmkit.fit(*user_pair(), x, epochs=1, progress=False, checkpoint_dir=tmp_path)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    for data in (other, x[:80], torch.cat([x[:99], other[:1]])):  # values, size, one row
        with pytest.raises(CheckpointError, match="was written fitting other data"):
            lvmkit.fit(
                *user_pair(), data, epochs=2, progress=False, checkpoint_dir=tmp_path, resume=True
            )
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    r = lvmkit.fit(*user_pair(), x, epochs=2, progress=False, checkpoint_dir=tmp_path, resume=True)
    assert r.epochs == 2


@pytest.mark.parametrize(
    "table, line, problem",
    [
        ("fit", 'lr = "0.01"', "expected float, got str"),
        ("fit", "seed = 1.5", "expected int, got float"),
        ("fit", "epochs = true", "expected int, got bool"),
        ("fit", "patience = 0", "must be above 0"),
        ("model", "z_dim = -2", "must be above 0"),
        ("model", "hidden = 256", "expected tuple[int, ...], got int 256"),
        ("model", "hidden = [0]", "must be above 0"),
        ("model", "kl_warmup_steps = -5", "must be at least 0"),
        ("data", 'name = ""', "must not be empty"),
    ],
)
def test_config_values_are_checked_before_anything_runs(tmp_path, capsys, table, line, problem):
    (tmp_path / "run.toml").write_text(f"[{table}]\n{line}\n")
    out = tmp_path / "run"
    assert main(["fit", "lvm", "--config", str(tmp_path / "run.toml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"[{table}] {line.split(' =')[0]} = " in err and problem in err
    assert not out.exists()  # nothing was written


@pytest.mark.parametrize(
    "args, message",
    [
        (["sample", "RUN", "--n", "-1"], "--n: -1 must be above 0"),
        (["diagnose", "RUN", "--num-samples", "0"], "--num-samples: 0 must be above 0"),
        (["fit", "lvm", "--epochs", "two"], "--epochs: 'two' is not a int"),
    ],
)
def test_numeric_options_are_checked_by_the_parser(args, message, capsys):
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 2 and message in capsys.readouterr().err


def test_a_file_error_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = ["fit", "lvm", "--epochs", "1", "--out", str(blocker / "run"), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("lvmkit: error:") and len(err.strip().splitlines()) == 1
    with pytest.raises(OSError):
        main(["--debug", *args])


def test_a_run_keeps_its_data_path_absolute(tmp_path, monkeypatch):
    import numpy as np

    data = np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8)
    (tmp_path / "work").mkdir()
    np.save(tmp_path / "work" / "mine.npy", data)
    monkeypatch.chdir(tmp_path / "work")
    args = ["fit", "ae", "--data", "mine.npy", "--epochs", "1", "--out", "run", "--no-progress"]
    assert main(args) == 0
    monkeypatch.chdir(tmp_path)  # elsewhere, the run still finds its data
    assert lvmkit.load_run("work/run").data["name"] == str(tmp_path / "work" / "mine.npy")
    assert main(["complete", "work/run", "--n", "2"]) == 0


def test_crafted_or_foreign_trainer_states_are_refused_on_resume(tmp_path):
    from test_svi import user_pair

    x = torch.randn(60, 6, generator=torch.Generator().manual_seed(0))
    lvmkit.fit(*user_pair(), x, epochs=1, progress=False, checkpoint_dir=tmp_path)
    path = tmp_path / "checkpoint.pt"
    good = load_checkpoint(path)
    edits = {
        "no param_names": lambda s: s["algorithm"].pop("param_names"),
        "a parameter gone": lambda s: s["algorithm"]["params"].pop("noise"),
        "no optimizer state": lambda s: s["algorithm"].update(optimizer={}),
        "a changed dtype": lambda s: s["algorithm"]["params"].update(
            noise=s["algorithm"]["params"]["noise"].double()
        ),
    }
    for edit in edits.values():
        state = load_checkpoint(path)
        edit(state)
        save_checkpoint(state, path)
        with pytest.raises(CheckpointError):
            lvmkit.fit(
                *user_pair(), x, epochs=2, progress=False, checkpoint_dir=tmp_path, resume=True
            )
        save_checkpoint(good, path)


def test_a_half_written_run_says_how_to_continue_it(tmp_path, capsys):
    from test_svi import user_pair

    x = torch.randn(60, 6, generator=torch.Generator().manual_seed(0))
    lvmkit.fit(*user_pair(), x, epochs=1, progress=False, checkpoint_dir=tmp_path)
    assert main(["sample", str(tmp_path)]) == 2
    assert "did not finish" in capsys.readouterr().err
