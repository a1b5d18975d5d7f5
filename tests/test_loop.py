"""The one loop: SVI, generic EM and closed-form EM checkpoint and resume exactly through it,
a setting an algorithm does not use is refused by name, another algorithm's checkpoint is
refused, callbacks see every step and epoch, and draws are seeded by position."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import lvmkit
from lvmkit.core.files import CheckpointError
from lvmkit.core.rng import draw_keys, uniforms
from lvmkit.inference.draws import PositionDraws, inverse_cdf
from lvmkit.models import GaussianMixture, GaussianMixtureConfig


def clusters(n=240) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-3.0, 0.0], [0.0, 3.0], [3.0, -1.0]])
    return centres[torch.randint(3, (n,), generator=g)] + 0.6 * torch.randn(n, 2, generator=g)


def user_mixture(x):
    """A 3-component mixture as a plain Pyro model: pyro.param sites, z enumerated."""
    w = pyro.param("w", torch.ones(3) / 3, constraint=dist.constraints.simplex)
    locs = pyro.param("locs", torch.tensor([[-1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(locs[z], 1.0).to_event(1), obs=x)


def user_ppca():
    """A linear VAE: pyro.module nets, z drawn every step."""
    torch.manual_seed(0)
    dec, enc = nn.Linear(2, 4), nn.Linear(4, 4)

    def model(x):
        pyro.module("dec", dec)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(dec(z), 0.5).to_event(1), obs=x)

    def guide(x):
        pyro.module("enc", enc)
        with pyro.plate("data", len(x)):
            loc, s = enc(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, s.exp()).to_event(1))

    return model, guide


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["enum", "importance", "closed-form"])
def test_em_resumes_exactly_two_plus_two_iterations_equal_four(tmp_path, kind):
    x = clusters()
    quiet = dict(progress=False, tol=0.0)  # tol 0: no early stop, so 4 iterations are 4

    def em(max_iter, **kw):
        pyro.clear_param_store()
        if kind == "closed-form":
            gmm = GaussianMixture(GaussianMixtureConfig(dim=2, components=3))
            return lvmkit.em(gmm, x, max_iter=max_iter, **quiet, **kw)
        if kind == "enum":
            return lvmkit.em(user_mixture, x, max_iter=max_iter, batch_size=80, **quiet, **kw)
        model, _ = user_ppca()
        return lvmkit.em(model, x.repeat(1, 2), max_iter=max_iter, num_samples=16,
                         batch_size=80, m_steps=2, **quiet, **kw)  # fmt: skip

    with pytest.warns(Warning):  # not converged: tol is 0
        whole = em(4)
        em(2, checkpoint_dir=tmp_path)
        resumed = em(4, checkpoint_dir=tmp_path, resume=True)
    assert resumed.losses == whole.losses and len(whole.losses) == 4
    assert same(resumed.params, whole.params)
    ckpt = lvmkit.inference.load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["config"]["algorithm"] == ("mixture-em" if kind == "closed-form" else "em")


def test_another_algorithms_checkpoint_is_refused(tmp_path):
    x = clusters()
    gmm = GaussianMixture(GaussianMixtureConfig(dim=2, components=3)).initialize(x)
    lvmkit.fit(gmm.model, gmm.guide, x, elbo="enum", epochs=1, progress=False,
               checkpoint_dir=tmp_path)  # fmt: skip
    with pytest.raises(CheckpointError, match="a fit by svi, which mixture-em cannot continue"):
        lvmkit.em(gmm, x, checkpoint_dir=tmp_path, resume=True, progress=False)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda gmm, x: lvmkit.em(gmm, x, lr=0.5), "lr"),
        (lambda gmm, x: lvmkit.em(gmm, x, batch_size=7), "batch_size"),
        (lambda gmm, x: lvmkit.em(gmm, x, m_steps=3), "m_steps"),
        (lambda gmm, x: lvmkit.em(gmm.model, x, init="random"), "init"),
        (lambda gmm, x: lvmkit.run(lvmkit.inference.MixtureEM(gmm, device=x.device), x,
                                   epochs=2, val_data=x), "val_data"),  # fmt: skip
        (lambda gmm, x: lvmkit.em(gmm.model, x, val_data=x), "val_data"),
    ],
)
def test_a_setting_the_algorithm_does_not_use_is_refused_by_name(call, name):
    x = clusters(60)
    gmm = GaussianMixture(GaussianMixtureConfig(dim=2, components=3))
    with pytest.raises((ValueError, TypeError), match=name):
        call(gmm, x)


def test_wrong_types_are_type_errors_and_bad_values_value_errors():
    x = clusters(60)
    model, guide = user_ppca()
    with pytest.raises(TypeError, match="epochs must be an int"):
        lvmkit.fit(model, guide, x.repeat(1, 2), epochs=2.5, progress=False)
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        lvmkit.fit(model, guide, x.repeat(1, 2), epochs=0, progress=False)
    with pytest.raises(ValueError, match="m_steps must be a positive int"):
        lvmkit.em(user_mixture, x, m_steps=0)
    with pytest.raises(TypeError, match="data must be a tensor"):
        lvmkit.fit(model, guide, [[1.0, 2.0]], progress=False)


def test_callbacks_see_every_step_and_epoch():
    x = clusters(60).repeat(1, 2)
    seen = []
    result = lvmkit.fit(*user_ppca(), x, epochs=2, batch_size=25, progress=False,
                        callbacks=[seen.append])  # fmt: skip
    steps = [m for m in seen if m["event"] == "step"]
    epochs = [m for m in seen if m["event"] == "epoch"]
    assert [(m["epoch"], m["step"]) for m in steps] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2),
                                                        (2, 3)]  # fmt: skip
    assert [m["loss"] for m in epochs] == result.losses


def test_a_datapoints_draws_depend_on_its_position_not_its_batch():
    """The same datapoint (index 7) gets the same z in any batch, any order, any split."""

    def draw(index, epoch=1):
        keys = draw_keys(3, epoch=epoch, step=0, index=torch.as_tensor(index))
        with PositionDraws(keys), pyro.plate("data", len(index)):
            return pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    a, b = draw([7, 1, 2]), draw([5, 9, 7, 4])
    assert torch.equal(a[0], b[2]) and not torch.equal(a[1], b[0])
    assert not torch.equal(a[0], draw([7], epoch=2)[0])  # a new epoch, new draws


def test_position_draws_have_the_right_distributions():
    keys = draw_keys(0, 0, 0, torch.arange(20000))
    u = uniforms(keys, torch.Size([20000, 3]), 0, site=11)
    assert 0 < float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.002
    normal = inverse_cdf(dist.Normal(torch.tensor(1.0), 2.0).expand([20000, 3]), u)
    assert abs(float(normal.mean()) - 1) < 0.05 and abs(float(normal.std()) - 2) < 0.05
    probs = torch.tensor([0.2, 0.5, 0.3])
    cats = inverse_cdf(dist.Categorical(probs).expand([20000, 3]), u)
    freq = torch.bincount(cats.flatten(), minlength=3) / cats.numel()
    assert torch.allclose(freq, probs, atol=0.01)
    coins = inverse_cdf(dist.Bernoulli(torch.tensor(0.3)).expand([20000, 3]), u)
    assert abs(float(coins.mean()) - 0.3) < 0.01
    # neighbouring rows and columns are not correlated
    assert abs(float(torch.corrcoef(u.T)[0, 1])) < 0.03
    assert abs(float(torch.corrcoef(torch.stack([u[:-1, 0], u[1:, 0]]))[0, 1])) < 0.03


def test_a_resume_asks_for_what_it_can_do(tmp_path):
    x = clusters(60).repeat(1, 2)
    kw = dict(progress=False, checkpoint_dir=tmp_path)
    lvmkit.fit(*user_ppca(), x, epochs=3, **kw)
    with pytest.raises(ValueError, match="holds 3 epochs already, more than epochs=2"):
        lvmkit.fit(*user_ppca(), x, epochs=2, resume=True, **kw)
    with pytest.raises(ValueError, match="opposite things"):
        lvmkit.fit(*user_ppca(), x, epochs=4, resume=True, overwrite=True, **kw)
    with pytest.raises(ValueError, match="max_iter must be a positive int"):
        lvmkit.em(user_mixture, x[:, :2], max_iter=0)


def test_em_steps_tell_no_loss_and_epochs_tell_it():
    seen = []
    result = lvmkit.em(user_mixture, clusters(60), max_iter=2, tol=0.0, batch_size=30,
                       progress=False, callbacks=[seen.append])  # fmt: skip
    assert [m for m in seen if m["event"] == "step"] == [
        {"event": "step", "epoch": e, "step": s, "global_step": 2 * (e - 1) + s}
        for e in (1, 2)
        for s in (1, 2)
    ]
    assert [m["loss"] for m in seen if m["event"] == "epoch"] == result.losses


def test_a_run_being_fitted_is_said_to_be_in_use(tmp_path):
    import subprocess

    from lvmkit.core.files import LOCK_NAME

    (tmp_path / "checkpoint.pt").write_bytes(b"")
    other = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / LOCK_NAME).write_text(str(other.pid))
        with pytest.raises(ValueError, match=rf"being fitted by .* \(pid {other.pid}\)"):
            lvmkit.load_run(tmp_path)
    finally:
        other.kill()
