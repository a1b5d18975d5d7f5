import math
import signal
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from torch import nn
from torch.nn import functional as F

import lvmkit
from lvmkit import CheckpointError, NonFiniteLossError, Trainer


def user_pair(seed: int = 0, hook=None):
    """A model and guide written as plain Pyro functions, as a user would: a linear-Gaussian LVM
    with an nn.Module decoder (pyro.module) and a constrained pyro.param."""
    torch.manual_seed(seed)
    enc, dec = nn.Linear(6, 4), nn.Linear(2, 6)

    def model(x):
        if hook is not None:
            hook()
        pyro.module("dec", dec)
        noise = pyro.param("noise", torch.tensor(1.0), constraint=constraints.positive)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(dec(z), noise).to_event(1), obs=x)

    def guide(x):
        pyro.module("enc", enc)
        with pyro.plate("data", len(x)):
            loc, raw = enc(x).chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(loc, F.softplus(raw) + 1e-3).to_event(1))

    return model, guide


@pytest.fixture(scope="module")
def xs():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(200, 2, generator=g)
    w = torch.randn(2, 6, generator=g)
    return z @ w + 0.3 * torch.randn(200, 6, generator=g)


def equal_params(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_user_written_pair_fits(xs):
    model, guide = user_pair()
    r = lvmkit.fit(
        model, guide, xs[:160], val_data=xs[160:], epochs=15, batch_size=32, lr=0.02, progress=False
    )
    assert len(r.losses) == len(r.val_losses) == r.epochs == 15
    assert r.losses[-1] < r.losses[0] - 1.0 and r.val_losses[-1] < r.val_losses[0] - 1.0
    assert r.device == "cpu" and r.elapsed > 0 and r.best_epoch is not None
    assert set(r.params) == {"dec$$$weight", "dec$$$bias", "enc$$$weight", "enc$$$bias", "noise"}
    assert r.params["noise"] > 0  # constrained value, not the unconstrained one


def test_each_fit_has_its_own_param_store(xs):
    pyro.clear_param_store()
    pyro.param("noise", torch.tensor(5.0))  # a user's global param of the same name
    runs = []
    for _ in range(2):
        model, guide = user_pair()
        runs.append(lvmkit.fit(model, guide, xs, epochs=2, batch_size=50, lr=0.05, progress=False))
    assert equal_params(runs[0].params, runs[1].params)  # the 2nd did not start from the 1st
    assert float(pyro.param("noise").detach()) == 5.0 and len(pyro.get_param_store()) == 1
    with runs[0].scope():
        assert torch.equal(pyro.param("noise"), runs[0].params["noise"])


@pytest.mark.parametrize("jit", [False, True])
def test_resume_at_epoch_boundary_equals_uninterrupted(xs, tmp_path, jit):
    kw = dict(epochs=4, batch_size=48, lr=0.02, progress=False, seed=3, jit=jit)
    full = lvmkit.fit(*user_pair(), xs, checkpoint_dir=tmp_path / "a", **kw)
    first = lvmkit.fit(*user_pair(), xs, checkpoint_dir=tmp_path / "b", **{**kw, "epochs": 2})
    assert first.epochs == 2 and first.checkpoint == tmp_path / "b" / "checkpoint.pt"
    rest = lvmkit.fit(*user_pair(), xs, checkpoint_dir=tmp_path / "b", resume=True, **kw)
    assert rest.losses == full.losses and equal_params(rest.params, full.params)


def test_signal_mid_epoch_checkpoints_and_resumes_exactly(xs, tmp_path):
    kw = dict(epochs=3, batch_size=40, lr=0.02, progress=False, seed=0, val_data=xs[:50])
    full = lvmkit.fit(*user_pair(), xs, checkpoint_dir=tmp_path / "a", **kw)
    calls = {"n": 0}

    def send_sigint_once():
        calls["n"] += 1
        if calls["n"] == 9:  # 1 init call + 5 steps of epoch 1 (+ validation) + 2 of epoch 2
            signal.raise_signal(signal.SIGINT)

    r = lvmkit.fit(*user_pair(hook=send_sigint_once), xs, checkpoint_dir=tmp_path / "b", **kw)
    assert r.interrupted and r.checkpoint is not None and r.epochs == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    rest = lvmkit.fit(*user_pair(), xs, checkpoint_dir=tmp_path / "b", resume=True, **kw)
    assert not rest.interrupted and rest.losses == full.losses
    assert rest.val_losses == full.val_losses and equal_params(rest.params, full.params)


def test_nan_loss_names_epoch_and_step_and_keeps_checkpoint(xs, tmp_path):
    calls = {"n": 0}

    def model_with_blowup(x):
        calls["n"] += 1
        model(x)
        if calls["n"] == 2 + 4 + 3:  # init (guide check, loss) + 4 steps + 3rd step of epoch 2
            pyro.factor("blowup", torch.tensor(float("nan")))

    model, guide = user_pair()
    with pytest.raises(NonFiniteLossError, match=r"nan at epoch 2, step 3.*checkpoint\.pt"):
        lvmkit.fit(
            model_with_blowup,
            guide,
            xs,
            epochs=3,
            batch_size=50,
            progress=False,
            checkpoint_dir=tmp_path,
            jit=False,  # the model counts its calls, Python state a trace would freeze
        )
    ckpt = lvmkit.inference.load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["loop"]["epoch"] == 1 and len(ckpt["loop"]["losses"]) == 1


@pytest.mark.parametrize(
    "content, message",
    [
        (b"garbage, not a zip or pickle", "not a readable checkpoint"),
        ("truncated", "not a readable checkpoint"),
        ("foreign", "not an lvmkit checkpoint"),
        ("incomplete", r"lacks \['algorithm', 'loop', 'rng'\]"),
        ("code", "not a readable checkpoint"),
    ],
)
def test_corrupt_or_foreign_checkpoint(xs, tmp_path, content, message):
    path = tmp_path / "checkpoint.pt"
    if content == "truncated":
        lvmkit.fit(*user_pair(), xs, epochs=1, progress=False, checkpoint_dir=tmp_path)
        path.write_bytes(path.read_bytes()[:500])
    elif content == "incomplete":
        lvmkit.inference.save_checkpoint({"config": {}}, path)  # checksummed, incomplete
    elif content == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    elif content == "code":
        torch.save({"format": "lvmkit-checkpoint", "payload": nn.Linear(2, 2)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        lvmkit.fit(*user_pair(), xs, epochs=2, progress=False, checkpoint_dir=tmp_path, resume=True)


def test_resume_refuses_other_settings_or_other_model(xs, tmp_path):
    lvmkit.fit(*user_pair(), xs, epochs=1, lr=0.01, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match=r"lr: checkpoint 0.01 vs now 0.02"):
        lvmkit.fit(
            *user_pair(),
            xs,
            epochs=2,
            lr=0.02,
            progress=False,
            checkpoint_dir=tmp_path,
            resume=True,
        )

    def other_model(x):
        w = pyro.param("w", torch.zeros(6))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(w, 1.0).to_event(1), obs=x)

    with pytest.raises(CheckpointError, match=r"lacks parameters \['w'\]"):
        lvmkit.fit(
            other_model,
            lambda x: None,
            xs,
            epochs=2,
            lr=0.01,
            progress=False,
            checkpoint_dir=tmp_path,
            resume=True,
        )


def test_every_elbo_trains_and_unknown_names_are_listed(xs):
    for elbo, k in [("elbo", 1), ("meanfield", 1), ("iwae", 4)]:
        r = lvmkit.fit(
            *user_pair(),
            xs,
            elbo=elbo,
            num_samples=k,
            epochs=4,
            lr=0.05,
            batch_size=50,
            progress=False,
        )
        assert r.losses[-1] < r.losses[0], elbo
    with pytest.raises(ValueError, match=r"unknown elbo 'trace'.*'elbo', 'enum', 'iwae'"):
        lvmkit.fit(*user_pair(), xs, elbo="trace")
    with pytest.raises(ValueError, match=r"unknown optimizer 'adagrad'.*'adam'"):
        lvmkit.fit(*user_pair(), xs, optimizer="adagrad")


def test_enum_elbo_marginalises_a_discrete_latent():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(150, generator=g) - 3, torch.randn(150, generator=g) + 3])

    def model(x):
        weights = pyro.param("weights", torch.ones(2) / 2, constraint=constraints.simplex)
        locs = pyro.param("locs", torch.tensor([-0.5, 0.5]))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(locs[z], 1.0), obs=x)

    r = lvmkit.fit(
        model,
        lambda x: None,
        x,
        elbo="enum",
        epochs=40,
        lr=0.1,
        batch_size=100,
        val_data=x[::3],
        progress=False,
    )
    assert r.val_losses[-1] < r.val_losses[0]
    assert torch.allclose(r.params["locs"], torch.tensor([-3.0, 3.0]), atol=0.3)
    assert torch.allclose(r.params["weights"], torch.tensor([0.5, 0.5]), atol=0.1)


def test_tuple_batches_are_passed_positionally():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, generator=g)
    y = 2 * x + 1 + 0.1 * torch.randn(300, generator=g)

    def regression(x, y):
        w, b = pyro.param("w", torch.tensor(0.0)), pyro.param("b", torch.tensor(0.0))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(w * x + b, 0.1), obs=y)

    r = lvmkit.fit(regression, lambda x, y: None, (x, y), epochs=60, lr=0.05, progress=False)
    assert abs(float(r.params["w"]) - 2) < 0.05 and abs(float(r.params["b"]) - 1) < 0.05


def test_early_stopping_restores_the_best_epoch():
    def model(x):
        loc = pyro.param("loc", torch.tensor(0.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    # Training pulls loc towards +5 while the validation data sit at -5: epoch 1 is the best.
    r = lvmkit.fit(
        model,
        lambda x: None,
        torch.full((64,), 5.0),
        val_data=torch.full((64,), -5.0),
        epochs=50,
        patience=2,
        lr=0.1,
        batch_size=64,
        progress=False,
    )
    assert r.stopped_early and r.epochs == 3 and r.best_epoch == 1
    assert abs(float(r.params["loc"]) - 0.1) < 1e-4  # one Adam step of size lr from 0


def test_bad_fit_inputs_name_the_problem(xs):
    pair = user_pair()
    cases = [
        (dict(data=torch.zeros(0, 6)), "empty"),
        (dict(data=torch.full((4, 6), float("nan"))), r"24 NaN/inf values \(first in row 0\)"),
        (dict(data=(torch.zeros(5, 6), torch.zeros(4))), "tensor 1 has 4 rows but tensor 0 has 5"),
        (dict(data=xs, device="cuda:7" if torch.cuda.is_available() else "cuda"), "cuda"),
        (dict(data=xs, device="tpu"), "unknown device 'tpu'"),
        (dict(data=xs, patience=3), "patience needs val_data"),
        (dict(data=xs, resume=True), "resume=True needs checkpoint_dir"),
        (dict(data=xs, epochs=0), "epochs must be a positive int"),
    ]
    for kwargs, message in cases[:5] if torch.cuda.is_available() else cases:
        if "cuda" in message and torch.cuda.is_available():
            continue
        with pytest.raises(ValueError, match=message):
            lvmkit.fit(*pair, progress=False, **kwargs)
    with pytest.raises(TypeError, match="must be a tensor.*got list"):  # a wrong type
        lvmkit.fit(*pair, [[1.0, 2.0]], progress=False)


def test_progress_bar_can_be_silenced(xs, capsys):
    lvmkit.fit(*user_pair(), xs, epochs=1, progress=False)
    assert capsys.readouterr().err == ""
    lvmkit.fit(*user_pair(), xs, epochs=1, progress=True)
    err = capsys.readouterr().err
    assert "svi" in err and "epoch=1/1" in err and "pts_per_s" in err


def test_trainer_for_a_custom_loop(xs):
    model, guide = user_pair()
    trainer = Trainer(model, guide, lr=0.02)
    before = trainer.evaluate(xs)
    losses = [trainer.step(xs[i : i + 50]) for _ in range(10) for i in range(0, 200, 50)]
    after = trainer.evaluate(xs)
    assert after < before - 1.0 and losses[-1] < losses[0]
    assert trainer.evaluate(xs) == after  # its own seeded stream: repeatable
    assert "noise" not in pyro.get_param_store()  # nothing leaked into the global store
    state = trainer.state_dict()
    fresh = Trainer(*user_pair(seed=5), lr=0.02)
    fresh.init(xs[:50])
    fresh.load_state_dict(state)
    assert fresh.evaluate(xs) == after


def allclose_params(a, b):
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-5) for k in a)


def test_jit_fits_the_same_and_runs_the_python_once_per_batch_shape(xs):
    kw = dict(epochs=3, batch_size=48, lr=0.02, progress=False, seed=3, val_data=xs[:40])
    calls = {"n": 0}

    def count():
        calls["n"] += 1

    eager = lvmkit.fit(*user_pair(hook=count), xs, jit=False, **kw)
    assert calls["n"] == 2 + 15 + 3  # init (guide check, loss), 3 x 5 steps, 3 validations
    calls["n"] = 0
    traced = lvmkit.fit(*user_pair(hook=count), xs, jit=True, **kw)
    # init, a trace for batches of 48 and one for the last batch of 8, each epoch's validated
    # first step (checked against the trace), validation
    assert calls["n"] == 2 + 2 + 3 + 3
    assert traced.losses == pytest.approx(eager.losses, rel=1e-6)
    assert traced.val_losses == pytest.approx(eager.val_losses, rel=1e-6)
    assert allclose_params(traced.params, eager.params)


def test_jit_auto_runs_a_traceable_model_from_its_trace_and_fits_the_same(xs):
    kw = dict(epochs=2, batch_size=48, lr=0.02, progress=False, seed=3)
    default = lvmkit.fit(*user_pair(), xs, jit="auto", **kw)
    eager = lvmkit.fit(*user_pair(), xs, **kw)  # the default runs the model every step
    assert default.info["jit"] == "traced" and eager.info["jit"] == "not traced: jit=False"
    assert default.losses == pytest.approx(eager.losses, rel=1e-6)
    assert allclose_params(default.params, eager.params)


def test_an_unknown_jit_setting_is_refused_naming_the_choices():
    with pytest.raises(TypeError, match=r"jit must be True, False or 'auto', got 'yes'"):
        Trainer(*user_pair(), jit="yes")


def test_jit_auto_runs_what_cannot_be_traced_silently_and_says_so(xs):
    model, guide = user_pair()

    def reading_model(x):
        if float(x.abs().mean()) > 1e9:  # a tensor read into Python stops a trace
            raise AssertionError
        model(x)

    kw = dict(epochs=2, batch_size=50, lr=0.05, progress=False, jit="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read = lvmkit.fit(reading_model, guide, xs, **kw)
        meanfield = lvmkit.fit(*user_pair(), xs, elbo="meanfield", **kw)
    assert read.info["jit"] == "not traced: the model reads a tensor into Python (.item(), " + (
        "float(t), or a branch on a value)"
    )
    assert (
        meanfield.info["jit"] == "not traced: Pyro's TraceMeanField_ELBO reads tensors into Python"
    )


def test_jit_auto_catches_python_state_at_its_early_checks(xs):
    """A model whose loss follows a Python counter: "auto" checks the trace at steps 1, 2, 4,
    ...; a mismatch before any step ran from the trace falls back silently, and one after
    warns, saying how many steps did. (The counter only advances on the calls the checks make:
    why the default does not trace.)"""
    model, guide = user_pair()
    calls = {"n": 0}

    def model_with_state(x):
        calls["n"] += 1
        with pyro.poutine.scale(scale=1.0 + (calls["n"] > 6)):  # changes at the 7th call
            model(x)

    kw = dict(epochs=1, batch_size=10, lr=0.02, progress=False, jit="auto")
    with pytest.warns(UserWarning, match=r"jit='auto': the traced step .* after 4 steps ran"):
        r = lvmkit.fit(model_with_state, guide, xs, **kw)
    # steps 1, 2, 4 and 8 are checked: 3, 5, 6 and 7 ran from the trace, the last three wrongly
    assert r.info["jit"].endswith("(after 4 traced steps)")


def test_jit_keeps_no_grad_regions_out_of_the_gradient(xs):
    def pair():
        torch.manual_seed(0)
        dec = nn.Linear(2, 6)

        def model(x):
            pyro.module("dec", dec)
            with torch.no_grad():
                size = dec.weight.norm()  # a constant as far as the gradient goes
            with pyro.plate("data", len(x)):
                z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(dec(z) * size, 1.0).to_event(1), obs=x)

        def guide(x):
            loc = pyro.param("loc", torch.zeros(2))
            with pyro.plate("data", len(x)):
                pyro.sample("z", dist.Normal(loc, 0.5).to_event(1))

        return model, guide

    kw = dict(epochs=3, batch_size=50, lr=0.05, progress=False)
    eager, traced = lvmkit.fit(*pair(), xs, **kw), lvmkit.fit(*pair(), xs, jit=True, **kw)
    assert allclose_params(traced.params, eager.params)


def test_jit_falls_back_when_the_model_reads_a_tensor_into_python(xs):
    def pair():
        model, guide = user_pair()

        def reading_model(x):
            if float(x.abs().mean()) > 1e9:  # data-dependent Python: a trace would freeze it
                raise AssertionError
            model(x)

        return reading_model, guide

    kw = dict(epochs=2, batch_size=50, lr=0.05, progress=False)
    eager = lvmkit.fit(*pair(), xs, **kw)
    with pytest.warns(UserWarning, match="reads a tensor into Python.*Running without jit"):
        traced = lvmkit.fit(*pair(), xs, jit=True, **kw)
    assert traced.losses == eager.losses and equal_params(traced.params, eager.params)


def test_jit_checks_the_trace_and_falls_back_when_python_state_changes_the_loss(xs):
    model, guide = user_pair()
    calls = {"n": 0}

    def model_with_state(x):
        calls["n"] += 1
        with pyro.poutine.scale(scale=float(calls["n"])):  # Python state a trace freezes
            model(x)

    kw = dict(epochs=3, batch_size=50, lr=0.02, progress=False)
    with pytest.warns(UserWarning, match="traced step gives batch loss .* from the same draws"):
        r = lvmkit.fit(model_with_state, guide, xs, jit=True, **kw)
    assert len(r.losses) == 3 and all(map(math.isfinite, r.losses))


def test_jit_updates_module_buffers_as_the_model_does(xs):
    def run(jit):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(2, 6), nn.BatchNorm1d(6))  # running statistics
        net.register_buffer("calls", torch.zeros(()))

        def model(x):
            pyro.module("net", net)
            net.calls.add_(1)
            with pyro.plate("data", len(x)):
                z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(net(z), 1.0).to_event(1), obs=x)

        def guide(x):
            loc = pyro.param("loc", torch.zeros(2))
            with pyro.plate("data", len(x)):
                pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))

        r = lvmkit.fit(model, guide, xs, epochs=3, batch_size=48, lr=0.02, progress=False, jit=jit)
        return r, dict(net.named_buffers())

    (eager, b_eager), (traced, b_traced) = run(False), run(True)
    assert float(b_eager["calls"]) == 15  # one per step: the first run and tracing leave no mark
    assert equal_params(b_traced, b_eager)
    assert allclose_params(traced.params, eager.params)


def test_an_optimizer_factory_is_used_and_recorded(xs, tmp_path):
    built = []

    def rmsprop(params, lr):
        built.append(torch.optim.RMSprop(params, lr=lr))
        return built[-1]

    kw = dict(epochs=2, lr=0.01, progress=False, checkpoint_dir=tmp_path)
    r = lvmkit.fit(*user_pair(), xs, optimizer=rmsprop, **kw)
    assert len(built) == 1 and r.losses[-1] < r.losses[0]
    ckpt = lvmkit.inference.load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["config"]["optimizer"].endswith("rmsprop")
    assert "square_avg" in ckpt["algorithm"]["optimizer"]["state"][0]  # RMSprop's own state
    plain = lvmkit.fit(
        *user_pair(), xs, optimizer=torch.optim.RMSprop, epochs=2, lr=0.01, progress=False
    )
    assert plain.losses == pytest.approx(r.losses)  # a torch.optim class works as the factory


def test_objectives_plug_into_pyro_svi(xs):
    """lvmkit's objectives subclass Pyro's ELBO, so pyro.infer.SVI takes them as its loss."""
    from pyro.infer import SVI, Trace_ELBO
    from pyro.optim import Adam

    from lvmkit.inference import IWAELoss, ReparamELBO

    model, guide = user_pair()
    for loss in (ReparamELBO(), IWAELoss(4)):
        pyro.clear_param_store()
        torch.manual_seed(0)
        expected = Trace_ELBO().loss(model, guide, xs) if isinstance(loss, ReparamELBO) else None
        torch.manual_seed(0)
        svi = SVI(model, guide, Adam({"lr": 0.01}), loss=loss)
        first = svi.step(xs)
        if expected is not None:  # the same estimate from the same draws
            assert first == pytest.approx(expected, rel=1e-5)
        losses = [svi.step(xs) for _ in range(30)]
        assert sum(losses[-5:]) < sum(losses[:5])


def test_a_checkpoint_from_before_the_num_samples_rename_resumes(xs, tmp_path):
    kw = dict(epochs=2, batch_size=50, lr=0.02, progress=False, checkpoint_dir=tmp_path)
    full = lvmkit.fit(*user_pair(), xs, **{**kw, "checkpoint_dir": tmp_path / "full"})
    lvmkit.fit(*user_pair(), xs, **{**kw, "epochs": 1})
    path = tmp_path / "checkpoint.pt"
    state = lvmkit.inference.load_checkpoint(path)
    state["config"]["num_particles"] = state["config"].pop("num_samples")  # the old name
    lvmkit.inference.save_checkpoint(state, path)
    rest = lvmkit.fit(*user_pair(), xs, resume=True, **kw)
    assert rest.losses == full.losses


def test_estimators_use_the_fitted_parameters_or_say_they_did_not(xs):
    """After fit, log_likelihood and posterior take the fit (params=result) and use its values;
    without it, a pyro.param site with no value is initialised afresh, with a warning."""
    model, guide = user_pair()
    r = lvmkit.fit(model, guide, xs, epochs=5, lr=0.05, progress=False)
    fitted_noise = float(r.params["noise"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = lvmkit.log_likelihood(model, guide, xs, num_samples=50, params=r)
        idata = lvmkit.posterior(model, guide, xs, num_samples=10, params=r)
    with r.scope():
        scoped = lvmkit.log_likelihood(model, guide, xs, num_samples=50)
    assert torch.equal(ours.values, scoped.values)
    assert idata.posterior["z"].shape[:3] == (1, 10, len(xs))
    with pytest.warns(UserWarning, match=r"\['noise'\] had no value here.*params=result"):
        fresh = lvmkit.log_likelihood(model, guide, xs, num_samples=50)
    assert fresh.mean != ours.mean  # computed with noise = 1.0, not the fitted value
    assert fitted_noise != pytest.approx(1.0)
    assert "noise" not in pyro.get_param_store()  # the global store is left as it was
    with pytest.warns(UserWarning, match=r"\['noise'\] had no value here"):  # every time
        lvmkit.posterior(model, guide, xs, num_samples=10)
    # the same modules trained again: a score with the first fit's params would use the new
    # weights, and says so
    lvmkit.fit(model, guide, xs, epochs=1, lr=0.05, progress=False)
    with pytest.warns(UserWarning, match=r"dec\$\$\$bias.*changed since the fit passed"):
        lvmkit.log_likelihood(model, guide, xs, num_samples=50, params=r)


def test_fit_names_a_latent_its_objective_cannot_score(xs):
    """With c enumerated in the model and a z-only guide, "elbo" would draw c from its prior and
    count log p(c) with no log q: a wrong objective, refused by name; "enum" sums c out."""
    locs = torch.tensor([-1.0, 1.0])

    def model(x):
        scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
        with pyro.plate("data", len(x)):
            c = pyro.sample(
                "c", dist.Categorical(torch.ones(2) / 2), infer={"enumerate": "parallel"}
            )
            z = pyro.sample("z", dist.Normal(locs[c], 1.0))
            pyro.sample("x", dist.Normal(z, scale), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x, 0.5))

    x = xs[:, 0]
    for elbo in ("elbo", "meanfield"):
        with pytest.raises(
            ValueError, match=f"latent site 'c'.*elbo='{elbo}' cannot score.*'enum'"
        ):
            lvmkit.fit(model, guide, x, elbo=elbo, epochs=1, progress=False)
    r = lvmkit.fit(model, guide, x, elbo="enum", epochs=2, progress=False)
    assert len(r.losses) == 2

    def no_params(x):
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    with pytest.raises(ValueError, match="create no parameters"):  # not Pyro's own words
        lvmkit.fit(no_params, lambda x: None, x, elbo="enum", epochs=1, progress=False)


def test_restore_best_is_explicit_and_the_result_says_which_epoch_it_holds():
    """Without patience the last epoch's parameters stay (unless restore_best=True); with it,
    the best validation epoch's; params_epoch says which, and restored equals stopped there."""

    def model(x):
        loc = pyro.param("loc", torch.zeros(2))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(x):
        pass

    torch.manual_seed(0)
    x, val = torch.randn(64, 2) + 1.0, torch.randn(64, 2) + 1.0
    args = dict(epochs=12, batch_size=8, lr=0.3, optimizer="sgd", progress=False, val_data=val)
    last = lvmkit.fit(model, guide, x, **args)
    assert last.params_epoch == 12 and last.best_epoch < 12  # SGD at this lr overshoots
    best = lvmkit.fit(model, guide, x, **args, restore_best=True)
    assert best.params_epoch == best.best_epoch == last.best_epoch
    stopped = lvmkit.fit(model, guide, x, **{**args, "epochs": best.best_epoch})
    assert torch.equal(best.params["loc"], stopped.params["loc"])
    assert not torch.equal(best.params["loc"], last.params["loc"])
    early = lvmkit.fit(model, guide, x, **args, patience=100)  # patience: restored by default
    assert early.params_epoch == early.best_epoch
    with pytest.raises(ValueError, match="restore_best needs val_data"):
        lvmkit.fit(model, guide, x, epochs=1, restore_best=True, progress=False)
