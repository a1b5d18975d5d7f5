"""The same fit, EM and evaluation over 2 processes (torchrun, gloo on CPU) as in 1.

One script runs every case; it is launched alone, then under torchrun with 2 processes, and
what rank 0 saves is compared. The loop draws each datapoint's latents by its position, so a
2-process fit equals the 1-process one to float tolerance with random draws too (a VAE, its
IWAE), and a fit continues exactly on another number of processes."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import pyro
    import pyro.distributions as dist
    import torch
    from pyro.distributions import constraints
    from torch import nn

    import lvmkit
    from lvmkit.core.processes import group
    from lvmkit.models import GaussianMixture, GaussianMixtureConfig

    torch.set_num_threads(1)
    out, tag, resume_from = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(40, 3, generator=g) - 2, torch.randn(24, 3, generator=g) + 2])

    def user_pair():
        torch.manual_seed(0)
        lin = nn.Linear(3, 3)

        def model(x):  # observed only: the loss has no random draws
            pyro.module("lin", lin)
            scale = pyro.param("scale", torch.ones(3), constraint=constraints.positive)
            with pyro.plate("data", len(x)):
                pyro.sample("x", dist.Normal(lin(x.flip(-1)) * 0.1, scale).to_event(1), obs=x)

        return model, lambda x: None

    def gmm():
        torch.manual_seed(0)
        m = GaussianMixture(GaussianMixtureConfig(dim=3, components=2))
        return m.initialize(x, seed=0)

    common = dict(batch_size=16, lr=0.05, progress=False, device="cpu")
    results = {"world": group().size}
    results["user"] = lvmkit.fit(*user_pair(), x, epochs=3, **common).params
    short = {**common, "batch_size": 21}  # 64 = 3 x 21 + 1: one process gets no point
    results["short"] = lvmkit.fit(*user_pair(), x, epochs=2, **short).params
    m = gmm()
    results["gmm"] = lvmkit.fit(m.model, m.guide, x, elbo="enum", epochs=3, **common).params
    fitted = lvmkit.fit(*user_pair(), x, epochs=4, val_data=x[:20], **common)
    results["full4"], results["val"] = fitted.params, fitted.val_losses
    # resume across world sizes: continue a 2-epoch run written by the other launch
    if resume_from != "-":
        resumed = lvmkit.fit(*user_pair(), x, epochs=4, val_data=x[:20], checkpoint_dir=out /
                             resume_from, resume=True, **common)  # fmt: skip
        results["resumed"] = resumed.params
    ours = out / f"ck_{tag}"
    half = lvmkit.fit(*user_pair(), x, epochs=2, val_data=x[:20], checkpoint_dir=ours, **common)
    results["files"] = sorted(p.name for p in ours.iterdir()) if group().main else None
    em_model = gmm()
    em = lvmkit.em(em_model, x, device="cpu")
    results["em"] = (em.losses, {k: v.clone() for k, v in em.params.items()})

    def ppca():
        torch.manual_seed(0)
        w = nn.Linear(2, 3)
        enc = nn.Linear(3, 4)

        def model(x):
            pyro.module("w", w)
            with pyro.plate("data", len(x)):
                z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(w(z), 1.0).to_event(1), obs=x)

        def guide(x):
            pyro.module("enc", enc)
            with pyro.plate("data", len(x)):
                loc, s = enc(x).chunk(2, -1)
                pyro.sample("z", dist.Normal(loc, s.exp()).to_event(1))

        return model, guide

    vae = lvmkit.fit(*ppca(), x, epochs=3, val_data=x[:20], **common)  # z drawn every step
    results["vae"], results["vae_val"] = vae.params, torch.tensor(vae.val_losses)
    iwae = dict(elbo="iwae", num_samples=4)
    results["iwae"] = lvmkit.fit(*ppca(), x, epochs=2, **iwae, **common).params
    results["vae4"] = lvmkit.fit(*ppca(), x, epochs=4, **common).params
    # batches with noise of their own: dequantized levels, dynamically binarized probabilities
    levels = lvmkit.data.ImageData(x=(x.sigmoid() * 3).round().reshape(64, 1, 1, 3), levels=4)
    flat = lambda pair: [lambda x, f=f: f(x.flatten(1)) for f in pair]  # noqa: E731
    for name, data in [("dequantized", lvmkit.data.dequantize(levels)),
                       ("binarized", lvmkit.data.dynamic_binarize(levels))]:  # fmt: skip
        results[name] = lvmkit.fit(*flat(ppca()), data, epochs=2, **common).params
    if resume_from != "-":
        resumed = lvmkit.fit(*ppca(), x, epochs=4, checkpoint_dir=out / f"vae_{resume_from}",
                             resume=True, **common)  # fmt: skip
        results["vae_resumed"] = resumed.params
    lvmkit.fit(*ppca(), x, epochs=2, checkpoint_dir=out / f"vae_ck_{tag}", **common)
    ll = lvmkit.log_likelihood(*ppca(), x, num_samples=50, batch_size=10, device="cpu")
    results["ll"] = ll.values
    model, guide = ppca()
    annealed = lvmkit.ais(model, x, guide=guide, num_samples=4, steps=5, batch_size=10)
    results["ais"] = annealed.values
    idata = lvmkit.posterior(*ppca(), x, num_samples=20, device="cpu")
    observed = torch.as_tensor(idata.observed_data["x"].values)
    results["posterior"] = (idata.posterior["z"].shape, observed)
    if group().main:
        torch.save(results, out / f"{tag}.pt")
    """
)


def launch(tmp_path, tag: str, procs: int, resume_from: str = "-") -> dict:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if procs == 1:
        cmd = [sys.executable, str(script)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={procs}", str(script)]  # fmt: skip
    done = subprocess.run(
        [*cmd, str(tmp_path), tag, resume_from],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(tmp_path / f"{tag}.pt", weights_only=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    one = launch(tmp, "one", 1)
    two = launch(tmp, "two", 2, resume_from="ck_one")  # 2 processes continue 1's checkpoint
    back = launch(tmp, "back", 1, resume_from="ck_two")  # and 1 continues 2's
    return one, two, back


def close(a: dict, b: dict, tol=1e-5) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=tol) for k in a)


def test_two_processes_fit_what_one_fits(runs):
    one, two, _ = runs
    assert one["world"] == 1 and two["world"] == 2
    assert close(one["user"], two["user"])  # a user's plain Pyro model
    assert close(one["short"], two["short"])  # a last batch of one point, on two processes
    assert close(one["gmm"], two["gmm"])  # a built-in model, z enumerated
    assert close(one["full4"], two["full4"])
    # validation losses are global means, the same on every process count
    assert torch.allclose(torch.tensor(one["val"]), torch.tensor(two["val"]), atol=1e-5)


def test_a_fit_continues_exactly_on_another_number_of_processes(runs):
    one, two, back = runs
    assert close(two["resumed"], one["full4"])  # written by 1 process, continued by 2
    assert close(back["resumed"], one["full4"])  # written by 2, continued by 1
    assert two["files"] == ["checkpoint.pt"]  # one checkpoint, no temporaries, no lock left


def test_a_vae_with_random_draws_fits_on_two_processes_as_on_one_and_resumes_across(runs):
    one, two, back = runs
    assert close(one["vae"], two["vae"]) and close(one["iwae"], two["iwae"])
    assert torch.allclose(one["vae_val"], two["vae_val"], atol=1e-5)  # drawn by position too
    # a batch's own noise (dequantization, binarization) is drawn by position as well
    assert close(one["dequantized"], two["dequantized"])
    assert close(one["binarized"], two["binarized"])
    assert close(two["vae_resumed"], one["vae4"])  # written by 1 process, continued by 2
    assert close(back["vae_resumed"], one["vae4"])  # written by 2, continued by 1


def test_two_process_em_equals_one_process_em(runs):
    """Equal up to float32 rounding: the per-point work is float32 where accurate, and each
    process sums its own rows before the all-reduce, in another order than one process."""
    one, two, _ = runs
    (losses1, params1), (losses2, params2) = one["em"], two["em"]
    assert len(losses1) == len(losses2)
    assert all(abs(a - b) <= 1e-6 * abs(a) for a, b in zip(losses1, losses2, strict=True))
    for k in params1:
        assert torch.allclose(params1[k], params2[k], rtol=1e-4, atol=1e-6)


def test_two_process_log_likelihood_equals_one_process(runs):
    one, two, _ = runs
    assert one["ll"].shape == (64,) and torch.allclose(one["ll"], two["ll"], atol=1e-5)
    assert one["ais"].shape == (64,) and torch.allclose(one["ais"], two["ais"], atol=1e-5)


def test_two_process_posterior_holds_every_datapoint_in_order(runs):
    one, two, _ = runs
    assert one["posterior"][0] == two["posterior"][0] == (1, 20, 64, 2)
    assert torch.equal(one["posterior"][1], two["posterior"][1])  # the data, in their order


def test_the_cli_fits_on_two_processes_as_on_one(tmp_path):
    """lvmkit fit --nproc 2 starts torchrun; the mixture's enumerated objective has no draws,
    so the run's weights are one process's; rank 0 alone writes the run, and logs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {}
    for procs in (1, 2):
        out = tmp_path / f"run{procs}"
        cmd = [sys.executable, "-m", "lvmkit.cli", "fit", "gmm", "--epochs", "2", "--nproc",
               str(procs), "--threads", "1", "--out", str(out), "--no-progress",
               "--set", "fit.log=tensorboard"]  # fmt: skip
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.count("fitted gmm") == 1  # one process reports
        assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
        runs[procs] = torch.load(out / "model.pt", weights_only=True)["state_dict"]
        assert not any(p.name.startswith(".") for p in out.iterdir())  # no lock, no temporary
    assert close(runs[1], runs[2])


def test_a_signal_stops_every_process_of_a_cli_fit_cleanly(tmp_path):
    """SIGTERM to lvmkit fit --nproc 2: each worker checkpoints and stops once, the exit code is
    130, no process is left behind, and the run resumes on one process."""
    import signal
    import time

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "lvmkit.cli", "fit", "lvm", "--epochs", "2000", "--nproc", "2",
           "--threads", "1", "--out", str(out), "--no-progress"]  # fmt: skip
    parent = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    parent.send_signal(signal.SIGTERM)
    _, err = parent.communicate(timeout=120)
    assert parent.returncode == 130, err[-2000:]
    assert err.count("continue with: lvmkit fit lvm") == 1 and "Traceback" not in err
    assert not (out / ".lvmkit.lock").exists()  # every worker has exited
    resumed = subprocess.run([*cmd[:5], "--epochs", "2", "--out", str(out), "--resume",
                              "--no-progress"], env=env, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
