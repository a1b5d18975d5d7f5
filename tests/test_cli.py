import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lvmkit import load_run
from lvmkit.cli import main


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_fit_writes_a_complete_run_directory(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(
        ["fit", "lvm", "--data", "digits", "--epochs", "2", "--out", str(run), "--no-progress"]
    )
    assert code == 0
    for name in (
        "config.toml",
        "metrics.jsonl",
        "checkpoint.pt",
        "model.pt",
        "losses.png",
        "samples.png",
        "reconstructions.png",
    ):
        assert (run / name).is_file(), name
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2] and all("val_loss" in r for r in rows)
    assert Image.open(run / "samples.png").size[0] > 100
    assert str(run) in capsys.readouterr().out
    lvm = load_run(run).model
    assert lvm.sample(3).shape == (3, 1, 8, 8)


def test_resume_through_the_cli(tmp_path):
    run = tmp_path / "run"
    assert main(["fit", "lvm", "--epochs", "1", "--out", str(run), "--no-progress"]) == 0
    assert (
        main(["fit", "lvm", "--epochs", "3", "--out", str(run), "--resume", "--no-progress"]) == 0
    )
    assert [r["epoch"] for r in metrics(run)] == [1, 2, 3]


def test_jit_flag_fits_the_same_run(tmp_path):
    runs = {flag: tmp_path / ("jit" if flag else "plain") for flag in (False, True)}
    for flag, run in runs.items():
        args = ["fit", "lvm", "--epochs", "2", "--out", str(run), "--no-progress"]
        assert main(args + ["--jit"] * flag) == 0
    assert "jit = true" in (runs[True] / "config.toml").read_text()
    plain, traced = metrics(runs[False]), metrics(runs[True])
    assert [r["loss"] for r in traced] == pytest.approx([r["loss"] for r in plain], rel=1e-6)


def test_config_file_and_its_errors(tmp_path, capsys):
    good = tmp_path / "run.toml"
    good.write_text("[model]\nz_dim = 3\nhidden = [32]\n[fit]\nepochs = 1\nbatch_size = 128\n")
    assert (
        main(["fit", "lvm", "--config", str(good), "--out", str(tmp_path / "r"), "--no-progress"])
        == 0
    )
    assert "z_dim = 3" in (tmp_path / "r" / "config.toml").read_text()
    assert load_run(tmp_path / "r").model.config.z_dim == 3

    bad = tmp_path / "bad.toml"
    bad.write_text("[fit]\nepochz = 3\n")
    assert main(["fit", "lvm", "--config", str(bad), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) ['epochz'] in [fit]" in err and "'epochs'" in err
    bad.write_text("[trainer]\nepochs = 3\n")
    assert main(["fit", "lvm", "--config", str(bad)]) == 2
    assert "unknown table [trainer]" in capsys.readouterr().err


def test_unknown_model_and_bad_data_are_clear_errors(tmp_path, capsys):
    assert main(["fit", "vea", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'vea'; choose one of ['ae', 'clvm'," in err and "'pixelcnn'" in err
    assert main(["fit", "lvm", "--data", "mnits", "--out", str(tmp_path)]) == 2
    assert "unknown dataset 'mnits'" in capsys.readouterr().err


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "lvmkit demo" in out and "--resume" in out


def test_demo_runs(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--epochs", "2", "--no-progress"]) == 0
    assert (tmp_path / "demo" / "samples.png").is_file()


def test_sigterm_checkpoints_and_exits_cleanly(tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "lvmkit.cli",
        "fit",
        "lvm",
        "--epochs",
        "10000",
        "--out",
        str(run),
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ})
    deadline = time.time() + 120
    while not (run / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err
    assert len(metrics(run)) >= 1


@pytest.mark.parametrize(
    "name",
    [
        "gmm",
        "lvm",
        "clvm",
        "ae",
        "sae",
        "dae",
        "pixelcnn",
        "cpixelcnn",
        "pixeltransformer",
        "scanlinernn",
        "pixellvm",
    ],
)
def test_every_model_fits_from_the_cli_and_completes(tmp_path, name, capsys):
    run = tmp_path / name
    assert main(["fit", name, "--epochs", "2", "--out", str(run), "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2
    if name in ("pixelcnn", "cpixelcnn", "pixeltransformer", "scanlinernn"):  # no latent code
        assert "linear_probe_accuracy" not in summary
    else:
        assert 0.1 < summary["linear_probe_accuracy"] <= 1
    (run / "completions.png").unlink()
    assert main(["complete", str(run), "--n", "4"]) == 0
    assert (run / "completions.png").is_file()
    code = main(["sample", str(run), "--n", "9"])
    if name not in ("clvm", "ae", "sae", "dae"):
        assert code == 0 and (run / "samples.png").is_file()
    else:
        assert code == 2
        expected = "use complete" if name == "clvm" else "cannot sample"
        assert expected in capsys.readouterr().err


def test_sample_from_a_missing_run_is_a_clear_error(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "nope")]) == 2
    assert "is not a finished run (no model.pt" in capsys.readouterr().err


def test_gmm_by_em_and_evaluate(tmp_path, capsys):
    run = tmp_path / "gmm"
    assert main(["fit", "gmm", "--inference", "em", "--out", str(run), "--no-progress"]) == 0
    assert json.loads((run / "summary.json").read_text())["inference"] == "em"
    assert main(["evaluate", str(run)]) == 0
    result = json.loads((run / "evaluation.json").read_text())
    assert result["exact"] is True and result["split"] == "test"
    assert main(["fit", "lvm", "--inference", "em", "--out", str(tmp_path / "x")]) == 2
    assert "--inference em is for gmm" in capsys.readouterr().err


def test_evaluate_an_lvm_by_importance_sampling(tmp_path, capsys):
    run = tmp_path / "lvm"
    settings = tmp_path / "run.toml"
    settings.write_text('[model]\nlikelihood = "bernoulli"\n')
    assert (
        main(
            [
                "fit",
                "lvm",
                "--config",
                str(settings),
                "--epochs",
                "2",
                "--out",
                str(run),
                "--no-progress",
            ]
        )
        == 0
    )
    assert main(["evaluate", str(run), "--num-samples", "20"]) == 0
    result = json.loads((run / "evaluation.json").read_text())
    assert result["num_samples"] == 20 and result["log_likelihood"] < 0
    assert 0 < result["bits_per_dim"] < 1  # binary pixels: at most one bit each
    lines = capsys.readouterr().out.splitlines()  # the convergence rows, one readable line each
    last = next(line for line in lines if "IS K=20;" in line)
    assert f"log p(x) = {result['log_likelihood']:.4f} nats" in last and "{" not in last
    assert main(["fit", "ae", "--epochs", "1", "--out", str(tmp_path / "ae"), "--no-progress"]) == 0
    assert main(["evaluate", str(tmp_path / "ae")]) == 2
    assert "no density p(x)" in capsys.readouterr().err


def test_diagnose_writes_a_self_contained_report(tmp_path, capsys):
    import base64
    from html.parser import HTMLParser

    import arviz as az

    run = tmp_path / "lvm"
    assert main(["fit", "lvm", "--epochs", "2", "--out", str(run), "--no-progress"]) == 0
    assert main(["diagnose", str(run), "--num-samples", "30"]) == 0
    assert str(run / "report.html") in capsys.readouterr().out

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.stack, self.images, self.captions, self.caption = [], [], [], False

        def handle_starttag(self, tag, attrs):
            if tag not in ("img", "meta"):
                self.stack.append(tag)
            if tag == "img":
                self.images.append(dict(attrs)["src"])
            self.caption = tag == "figcaption"

        def handle_endtag(self, tag):
            assert self.stack.pop() == tag, f"</{tag}> closes another element"

        def handle_data(self, data):
            if self.caption:
                self.captions.append(data)
                self.caption = False

    page = Collect()
    page.feed((run / "report.html").read_text())
    assert page.stack == [] and page.images and len(page.images) == len(page.captions)
    for src, name in zip(page.images, page.captions, strict=True):
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png.startswith(b"\x89PNG") and png == (run / name).read_bytes()
    assert {"latent_space.png", "traversals.png", "khat.png", "kl_per_dim.png"} <= set(
        page.captions
    )
    results = json.loads((run / "diagnostics.json").read_text())
    assert set(results["khat_bands"]) == {"good (<0.5)", "usable (0.5-0.7)", "unreliable (>0.7)"}
    assert abs(sum(results["khat_bands"].values()) - 1) < 1e-9
    assert az.from_netcdf(run / "posterior.nc").posterior["z"].shape[:2] == (1, 30)

    gmm = tmp_path / "gmm"
    assert main(["fit", "gmm", "--epochs", "1", "--out", str(gmm), "--no-progress"]) == 0
    assert main(["diagnose", str(gmm)]) == 0
    assert "the amortization gap need a latent variable model" in (gmm / "report.html").read_text()


def test_config_files_of_older_runs_are_read(tmp_path):
    from lvmkit.runs import read_config

    old = tmp_path / "config.toml"
    old.write_text("[fit]\nnum_particles = 4\n")  # the name num_samples had before
    assert read_config(old, "lvm")["fit"]["num_samples"] == 4


def test_flat_28x28_rows_with_a_split_resume_verbatim_after_sigterm(tmp_path):
    """28x28 data saved as flat rows with its own split, fitted with --set overrides, stopped by
    SIGTERM; the printed resume command, run as printed, ends where an uninterrupted run does,
    and config.toml is never rewritten."""
    rng = np.random.default_rng(0)
    rows = (rng.random((1200, 784)) < 0.3).astype(np.uint8) * 255
    np.savez(tmp_path / "rows.npz", x_train=rows[:1000], x_test=rows[1000:])
    settings = ["--set", "model.z_dim=2", "--set", "model.hidden=[16]", "--set", "fit.batch_size=8"]
    fit = [
        "fit", "lvm", "--data", str(tmp_path / "rows.npz"), "--image-shape", "1,28,28",
        "--val-fraction", "0.2", "--epochs", "6", "--no-progress", *settings,
    ]  # fmt: skip
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    lvmkit = [sys.executable, "-m", "lvmkit.cli"]
    whole = subprocess.run([*lvmkit, *fit, "--out", str(tmp_path / "whole")], env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert whole.returncode == 0, whole.stderr

    run = tmp_path / "cut"
    proc = subprocess.Popen([*lvmkit, *fit, "--out", str(run)], env=env, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    deadline = time.time() + 120
    while not (run / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    config = (run / "config.toml").read_text()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    hint = next(line for line in err.splitlines() if line.startswith("continue with: "))
    command = hint.removeprefix("continue with: ")
    resumed = subprocess.run(command, shell=True, env=env, capture_output=True, text=True,
                             timeout=300, cwd=tmp_path)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert (run / "config.toml").read_text() == config
    assert '[data]\nname = "' in config and "val_fraction = 0.2" in config
    assert "image_shape = [1, 28, 28]" in config and "z_dim = 2" in config
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 6


def test_settings_em_does_not_use_are_refused_and_an_svi_run_is_not_continued_by_em(
    tmp_path, capsys
):
    run = tmp_path / "gmm"
    argv = ["fit", "gmm", "--inference", "em", "--out", str(run), "--no-progress"]
    assert main([*argv, "--lr", "0.5", "--batch-size", "7", "--set", "fit.optimizer=sgd"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "batch_size = 7, lr = 0.5, optimizer = 'sgd'" in err
    assert "not used by --inference em" in err and not run.exists()
    svi = ["fit", "gmm", "--epochs", "1", "--out", str(run), "--no-progress"]
    assert main(svi) == 0
    before = (run / "model.pt").read_bytes(), (run / "summary.json").read_text()
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "[fit] inference = 'svi', not 'em'" in err and err.count("\n") == 1
    assert ((run / "model.pt").read_bytes(), (run / "summary.json").read_text()) == before


def test_an_em_run_checkpoints_and_resumes_and_records_only_what_em_uses(tmp_path, capsys):
    whole, part = tmp_path / "whole", tmp_path / "part"
    # one thread: a BLAS sums in another order on two, and the runs are compared bit for bit
    em = [
        "fit",
        "gmm",
        "--inference",
        "em",
        "--no-progress",
        "--set",
        "fit.seed=3",
        "--threads",
        "1",
    ]
    assert main([*em, "--epochs", "4", "--out", str(whole)]) == 0
    assert main([*em, "--epochs", "2", "--out", str(part)]) == 0
    assert main([*em, "--epochs", "4", "--out", str(part), "--resume"]) == 0
    assert "ConvergenceWarning: mixture-em did not converge in 4" in capsys.readouterr().err
    assert main([*em, "--out", str(part), "--resume", "--lr", "0.5"]) == 2  # EM uses no lr
    assert "lr = 0.5: not used by --inference em" in capsys.readouterr().err
    assert (part / "model.pt").read_bytes() == (whole / "model.pt").read_bytes()
    config = (part / "config.toml").read_text()
    assert 'inference = "em"' in config and "epochs = 4" in config and "lr" not in config
    metrics = (part / "metrics.jsonl").read_text()
    assert metrics == (whole / "metrics.jsonl").read_text() and metrics.count("\n") == 4


def test_a_python_caller_writes_the_same_run_as_the_command(tmp_path, capsys):
    from lvmkit.runs import fit_run

    # one thread each: the files are compared bit for bit (a BLAS sums in thread-count order)
    assert main(["fit", "gmm", "--epochs", "2", "--out", str(tmp_path / "cli"),
                 "--no-progress", "--threads", "1"]) == 0  # fmt: skip
    settings = {"fit": {"epochs": 2, "threads": 1}}
    done = fit_run("gmm", tmp_path / "api", settings=settings, progress=False)
    names = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "api").iterdir())
    for name in ("model.pt", "metrics.jsonl", "config.toml"):
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "api" / name).read_bytes()
    assert done.summary["epochs"] == 2 and not done.interrupted
    assert {p.name for p in done.written} <= set(names)
    with pytest.raises(ValueError, match="holds a run already.*resume=True.*overwrite=True"):
        fit_run("gmm", tmp_path / "api", progress=False)


def test_an_evaluation_of_an_earlier_epoch_is_left_out_of_the_report(tmp_path, capsys):
    run = tmp_path / "lvm"
    common = ["--no-progress", "--threads", "1", "--set", "model.hidden=[16]", "--out", str(run)]
    assert main(["fit", "lvm", "--epochs", "1", *common]) == 0
    assert main(["evaluate", str(run), "--num-samples", "5", "--no-progress"]) == 0
    assert json.loads((run / "evaluation.json").read_text())["model_epoch"] == 1
    assert main(["fit", "lvm", "--epochs", "2", "--resume", *common]) == 0
    capsys.readouterr()
    assert main(["diagnose", str(run), "--num-samples", "20", "--no-progress"]) == 0
    assert re.search("measured the model of epoch 1.*holds epoch 2", capsys.readouterr().err)
    assert "evaluation" not in json.loads((run / "diagnostics.json").read_text())
