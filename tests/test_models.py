import itertools
import warnings

import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

import lvmkit
from lvmkit.models import (
    Autoencoder,
    AutoencoderConfig,
    CompletionBaseline,
    ConditionalLVM,
    ConditionalLVMConfig,
    GaussianLVM,
    GaussianLVMConfig,
    GaussianMixture,
    GaussianMixtureConfig,
    build_model,
    quadrant_masks,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def digits():
    data = lvmkit.data.load("digits")
    return data, lvmkit.data.split(data, (0.8, 0.1, 0.1), seed=0)


def fit_and_check_validation_falls(model, train, val, epochs=4, **kw):
    r = lvmkit.fit(
        model.model,
        model.guide,
        model.prepare(train),
        val_data=model.prepare(val),
        epochs=epochs,
        batch_size=128,
        progress=False,
        **kw,
    )
    assert r.val_losses[-1] < r.val_losses[0], r.val_losses
    return r


@pytest.mark.parametrize(
    "name, settings",
    [
        ("lvm", {}),
        ("lvm", {"net": "conv", "likelihood": "categorical"}),
        ("lvm", {"likelihood": "logistic", "components": 2}),
        ("lvm", {"likelihood": "bernoulli", "free_bits": 0.25}),
        ("ae", {}),
        ("sae", {}),
        ("dae", {"likelihood": "bernoulli"}),
    ],
)
def test_image_models_fit_digits(digits, name, settings):
    data, (train, val, _) = digits
    torch.manual_seed(0)
    model = build_model(name, data.image_shape, data.levels, settings)
    fit_and_check_validation_falls(model, train, val)


def test_gmm_and_clvm_fit_digits(digits):
    data, (train, val, _) = digits
    torch.manual_seed(0)
    gmm = build_model("gmm", data.image_shape, data.levels)
    gmm.initialize(gmm.prepare(train))
    fit_and_check_validation_falls(gmm, train, val, elbo="enum", lr=0.01)
    clvm = build_model("clvm", data.image_shape, data.levels)
    fit_and_check_validation_falls(clvm, train, val, elbo="iwae", num_samples=4)


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_gmm_recovers_a_known_mixture(covariance):
    torch.manual_seed(0)
    truth = GaussianMixture(GaussianMixtureConfig(dim=2, components=3))
    weights = torch.tensor([0.2, 0.3, 0.5])
    means = torch.tensor([[-4.0, 0.0], [0.0, 4.0], [4.0, -1.0]])
    truth.set_params(weights, means, torch.full((3, 2), 0.5))
    x, _ = truth.sample(3000)
    gmm = GaussianMixture(GaussianMixtureConfig(dim=2, components=3, covariance=covariance))
    gmm.initialize(x, seed=1)
    lvmkit.fit(
        gmm.model, gmm.guide, x, elbo="enum", epochs=40, lr=0.05, batch_size=500, progress=False
    )
    # Match components to the truth up to permutation: the best of all 3! assignments.
    perm = min(
        itertools.permutations(range(3)),
        key=lambda p: float((gmm.means.detach()[list(p)] - means).abs().sum()),
    )
    assert torch.allclose(gmm.weights.detach()[list(perm)], weights, atol=0.03)  # stated: 0.03
    assert torch.allclose(gmm.means.detach()[list(perm)], means, atol=0.1)  # stated: 0.1
    assert abs(float(gmm.log_prob(x).mean() - truth.log_prob(x).mean())) < 0.02


def test_gmm_map_prior_and_exact_responsibilities():
    torch.manual_seed(0)
    gmm = GaussianMixture(
        GaussianMixtureConfig(dim=2, components=2, covariance="full", prior=True, num_data=100)
    )
    x = torch.randn(100, 2)
    gmm.initialize(x)
    r = lvmkit.fit(gmm.model, gmm.guide, x, elbo="enum", epochs=3, lr=0.01, progress=False)
    assert all(map(torch.isfinite, map(torch.tensor, r.losses)))
    resp = gmm.responsibilities(x[:5])
    joint = torch.stack(
        [gmm.weights[k] * gmm.component(torch.tensor(k)).log_prob(x[:5]).exp() for k in range(2)],
        -1,
    ).detach()
    assert torch.allclose(resp, joint / joint.sum(-1, keepdim=True), atol=1e-6)


def test_conditional_model_beats_its_baseline_on_held_out_completion(digits):
    """Negative conditional log-likelihood with one quadrant given, measured by importance
    sampling (the baseline has no latent, so its value is exact)."""
    _, (train, _, test) = digits
    config = ConditionalLVMConfig(hidden=(128, 128))
    torch.manual_seed(0)
    clvm, baseline = ConditionalLVM(config), CompletionBaseline(config)
    kw = dict(epochs=15, batch_size=64, lr=2e-3, progress=False)
    lvmkit.fit(clvm.model, clvm.guide, clvm.prepare(train), elbo="iwae", num_samples=8, **kw)
    lvmkit.fit(baseline.model, baseline.guide, baseline.prepare(train), **kw)
    x = lvmkit.data.binarize(test).x
    known = quadrant_masks(len(x), (1, 8, 8), given=1, generator=torch.Generator().manual_seed(2))
    ours = lvmkit.log_likelihood(clvm.model, clvm.guide, (x, known), num_samples=100)
    theirs = lvmkit.log_likelihood(baseline.model, baseline.guide, (x, known), num_samples=1)
    assert -ours.mean < -theirs.mean - 3 * ours.stderr, (-ours.mean, -theirs.mean)


@pytest.mark.parametrize("device", DEVICES)
def test_sample_reconstruct_encode_complete_shapes(device):
    torch.manual_seed(0)
    x = torch.rand(5, 1, 8, 8, device=device)
    known = torch.rand(5, 1, 8, 8, device=device) > 0.5
    lvm = GaussianLVM(GaussianLVMConfig(net="conv")).to(device)
    ae = Autoencoder(AutoencoderConfig(kind="sparse")).to(device)
    assert lvm.sample(3).shape == (3, 1, 8, 8) and lvm.sample(3).dtype == torch.float32
    for model in (lvm, ae):
        assert model.reconstruct(x).shape == (5, 1, 8, 8)
        assert model.encode(x).mean.shape == (5, 8)
        filled = model.complete(x, known)
        assert filled.shape == x.shape and torch.equal(filled[known], x[known])
    xb = (x > 0.5).float()
    clvm = ConditionalLVM().to(device)
    filled = clvm.complete(xb, known)
    assert torch.equal(filled[known], xb[known]) and set(filled.unique().tolist()) <= {0.0, 1.0}
    assert clvm.encode(xb).mean.shape == (5, 4)
    gmm = GaussianMixture(GaussianMixtureConfig(dim=64, components=3)).to(device)
    flat, kflat = x.flatten(1), known.flatten(1)
    assert gmm.sample(4)[0].shape == (4, 64) and gmm.encode(flat).probs.shape == (5, 3)
    assert torch.equal(gmm.complete(flat, kflat)[kflat], flat[kflat])
    with pytest.raises(ValueError, match="no generative prior"):
        ae.sample(3)


def test_bad_inputs_are_clear_errors(digits):
    data, (train, _, _) = digits
    lvm = GaussianLVM(GaussianLVMConfig(image_shape=(1, 8, 8)))
    with pytest.raises(ValueError, match=r"built for data of shape \(1, 8, 8\).*\(1, 28, 28\)"):
        lvmkit.fit(lvm.model, lvm.guide, torch.rand(10, 1, 28, 28), epochs=1, progress=False)
    bern = GaussianLVM(GaussianLVMConfig(likelihood="bernoulli"))
    with pytest.raises(ValueError, match=r"needs binary data \(0/1\).*\[0.0, 16.0\]"):
        lvmkit.fit(bern.model, bern.guide, train, epochs=1, progress=False)  # 17-level data
    with pytest.raises(ValueError, match="unknown setting"):
        build_model("lvm", (1, 8, 8), 17, {"zdim": 3})
    with pytest.raises(ValueError, match=r"vectors of dim 64.*flatten"):
        GaussianMixture(GaussianMixtureConfig(dim=64)).log_prob(torch.rand(3, 1, 8, 8))
    with pytest.raises(ValueError, match="needs discrete data"):
        build_model("lvm", (1, 8, 8), None, {"likelihood": "categorical", "levels": 3}).prepare(
            lvmkit.data.scale(data)
        )


def test_beta_and_free_bits_change_only_the_training_objective():
    torch.manual_seed(0)
    x = torch.rand(16, 1, 8, 8)
    models = {b: GaussianLVM(GaussianLVMConfig(beta=b)) for b in (1.0, 2.0, 3.0)}
    free = GaussianLVM(GaussianLVMConfig(free_bits=0.5))
    for m in [*models.values(), free]:
        m.load_state_dict(models[1.0].state_dict())

    def loss(m):
        torch.manual_seed(1)
        return Trace_ELBO().loss(m.model, m.guide, x)

    l1, l2, l3 = (loss(models[b]) for b in (1.0, 2.0, 3.0))
    assert abs((l3 - l2) - (l2 - l1)) < 1e-2 * abs(l2 - l1)  # linear in beta: + beta * KL
    assert l2 > l1
    for m in [*models.values(), free]:
        m.eval()
    assert loss(models[2.0]) == loss(models[1.0]) == loss(free)  # eval mode: the exact ELBO


def test_linear_probe_on_codes(digits):
    data, (train, val, _) = digits
    torch.manual_seed(0)
    lvm = GaussianLVM()
    lvmkit.fit(lvm.model, lvm.guide, lvm.prepare(train), epochs=5, progress=False)
    codes = lvmkit.encode(lvm, data)
    assert codes.shape == (1797, 8)
    assert lvmkit.linear_probe(codes, data.y) > 0.5  # chance is 0.1


def test_pixelcnn_decoder_lvm_keeps_active_units_and_resumes_exactly(digits, tmp_path):
    data, (train, val, _) = digits
    torch.manual_seed(0)
    settings = {"free_bits": 0.5, "kl_warmup_steps": 20, "z_dim": 4, "ar_layers": 2}
    lvm = build_model("pixellvm", data.image_shape, data.levels, settings)
    fit_and_check_validation_falls(lvm, train, val, epochs=3)
    count, variances = lvmkit.diagnostics.active_units(lvm, val)
    assert count >= 1 and variances.shape == (4,)
    assert int(lvm.train_steps) == 3 * 12  # one per gradient step: 1438 images / 128 per batch

    def run(epochs, resume=False):
        torch.manual_seed(0)
        m = build_model("pixellvm", data.image_shape, data.levels, settings)
        r = lvmkit.fit(
            m.model,
            m.guide,
            m.prepare(train[:300]),
            epochs=epochs,
            batch_size=100,
            checkpoint_dir=tmp_path / ("b" if resume or epochs == 1 else "a"),
            resume=resume,
            progress=False,
        )
        return r, m

    full, _ = run(2)
    run(1)
    rest, m = run(2, resume=True)
    assert rest.losses == full.losses and int(m.train_steps) == 6  # the warm-up counter resumed


def test_kl_warmup_raises_the_free_bits_penalty_too():
    torch.manual_seed(0)
    lvm = GaussianLVM(GaussianLVMConfig(free_bits=0.5, kl_warmup_steps=10))
    x = torch.rand(4, 1, 8, 8)

    def penalty(steps):
        lvm.train_steps.fill_(steps)
        with torch.no_grad():  # evaluation: the model does not count a step
            site = poutine.trace(lvm.model).get_trace(x).nodes["free_bits_kl"]
        return float(site["fn"].log_prob(site["value"]))

    full = penalty(10)
    assert full < 0
    assert penalty(5) == pytest.approx(0.5 * full, rel=1e-6)
    assert penalty(30) == pytest.approx(full, rel=1e-6)


def test_kl_warmup_is_followed_by_a_traced_fit():
    x = torch.rand(96, 1, 8, 8)
    runs = []
    for jit in (False, True):
        torch.manual_seed(0)
        lvm = GaussianLVM(GaussianLVMConfig(free_bits=0.5, kl_warmup_steps=10))
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # the trace must not fall back
            r = lvmkit.fit(
                lvm.model, lvm.guide, x, epochs=3, batch_size=32, progress=False, jit=jit
            )
        runs.append((r.losses, int(lvm.train_steps)))
    (eager, eager_steps), (traced, traced_steps) = runs
    assert eager_steps == traced_steps == 9
    assert traced == pytest.approx(eager, rel=1e-6)


@pytest.mark.parametrize("likelihood", ["bernoulli", "pixelcnn"])
def test_importance_weighted_completion_keeps_the_known_pixels(likelihood):
    from lvmkit.models import GaussianLVM, GaussianLVMConfig

    torch.manual_seed(0)
    levels = 2 if likelihood == "pixelcnn" else None
    config = GaussianLVMConfig(
        image_shape=(1, 6, 6),
        z_dim=3,
        hidden=(16,),
        likelihood=likelihood,
        levels=levels,
        ar_features=4,
        ar_layers=2,
    )
    lvm = GaussianLVM(config).eval()
    x = (torch.rand(5, 1, 6, 6) > 0.5).float()
    known = torch.zeros_like(x, dtype=torch.bool)
    known[..., :3, :] = True  # the top half
    for method in ("gibbs", "importance"):
        out = lvm.complete(x, known, method=method, num_samples=16)
        assert torch.equal(out[known], x[known]) and set(out.unique().tolist()) <= {0.0, 1.0}
    # the weights use p(x_known | z): with every pixel known it is log p(x | z)
    z = torch.randn(4, 5, 3)
    every = torch.ones_like(known)
    assert torch.allclose(lvm.known_log_prob(x, every, z), lvm.decode(z.reshape(20, 3)).log_prob(
        x.repeat(4, 1, 1, 1)).reshape(4, 5), atol=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match="choose 'gibbs' or 'importance'"):
        lvm.complete(x, known, method="mcmc")
