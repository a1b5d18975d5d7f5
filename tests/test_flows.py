"""The normalizing flow: invertible to float precision, its log-determinant equal to autograd's
Jacobian, fitted, resumed and evaluated through the CLI, and bad settings refused."""

import json
import math

import pyro
import pytest
import torch

import lvmkit
from lvmkit.cli import main
from lvmkit.data import ImageData, load_digits
from lvmkit.models import FlowConfig, NormalizingFlow
from lvmkit.runs import load_run


def scrambled(image_shape, scales=2, steps=2) -> NormalizingFlow:
    """A small float64 flow with every parameter random: no coupling is the identity it starts
    as, so that the checks below see every layer at work."""
    torch.manual_seed(0)
    config = FlowConfig(image_shape=image_shape, scales=scales, steps=steps, hidden=6)
    flow = NormalizingFlow(config).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return flow


@pytest.mark.parametrize("image_shape", [(1, 4, 4), (3, 4, 6)])
def test_x_to_z_and_back_is_the_identity(image_shape):
    flow = scrambled(image_shape)
    x = torch.rand(5, *image_shape, dtype=torch.float64)
    y, _ = flow.logit(x)
    zs, _ = flow.net(y)
    assert [tuple(z.shape[1:]) for z in zs] == flow.z_shapes
    assert sum(math.prod(s) for s in flow.z_shapes) == math.prod(image_shape)
    assert torch.allclose(flow.logit.inverse(flow.net.inverse(zs)), x, atol=1e-10, rtol=0)


def test_the_log_determinant_is_autograds_jacobian():
    """log p(x) = log N(f(x); 0, I) + log|det J_f(x)|, J_f by autograd on a 1x4x4 image."""
    flow = scrambled((1, 4, 4))
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)

    def f(image):  # (16,) -> every final variable, flattened (16,)
        zs, _ = flow.net(flow.logit(image.reshape(1, 1, 4, 4))[0])
        return torch.cat([z.flatten() for z in zs])

    for image in x:
        jacobian = torch.autograd.functional.jacobian(f, image.flatten())
        z = f(image.flatten())
        exact = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum()
        exact = exact + torch.linalg.slogdet(jacobian)[1]
        assert torch.allclose(flow.log_prob(image[None])[0], exact, atol=1e-9, rtol=0)


def test_actnorm_starts_standardizing_the_training_images():
    flow = NormalizingFlow(FlowConfig(image_shape=(1, 8, 8), steps=1, hidden=4))
    data = flow.prepare(load_digits())
    flow.initialize(data)
    first = flow.net.scales[0][0]  # an ActNorm
    out, _ = first(flow.logit(data.pixels()[:512])[0])
    assert abs(float(out.mean())) < 1e-4 and abs(float(out.std()) - 1) < 1e-3


def test_samples_lie_in_the_unit_interval_and_the_pyro_program_scores_them():
    flow = NormalizingFlow(FlowConfig(image_shape=(1, 4, 4), steps=1, hidden=4))
    x = flow.sample(6)
    assert x.shape == (6, 1, 4, 4) and 0 <= float(x.min()) and float(x.max()) <= 1
    trace = pyro.poutine.trace(flow.model).get_trace(x)
    log_p = flow.log_prob(x)
    assert torch.isfinite(log_p).all()
    assert torch.equal(trace.nodes["x"]["fn"].log_prob(x), log_p)
    exact = lvmkit.log_likelihood(flow.model, flow.guide, x, num_samples=1)
    assert exact.exact and torch.allclose(exact.values, log_p.double())


def test_the_cli_fits_resumes_evaluates_and_samples_on_the_digits(tmp_path, capsys):
    common = ["--no-progress", "--threads", "1", "--set", "model.steps=1",
              "--set", "model.hidden=8"]  # fmt: skip
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(["fit", "flow", "--epochs", "2", "--out", str(whole), *common]) == 0
    assert main(["fit", "flow", "--epochs", "1", "--out", str(part), *common]) == 0
    assert main(["fit", "flow", "--epochs", "2", "--out", str(part), "--resume", *common]) == 0
    a, b = load_run(whole).model.state_dict(), load_run(part).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert main(["evaluate", str(whole), "--num-samples", "3"]) == 0
    result = json.loads((whole / "evaluation.json").read_text())
    # exact density of dequantized pixels: a bound on the 17-level likelihood, in (0, log2 17)
    assert 0 < result["bits_per_dim"] < math.log2(17)
    assert result["method"] == "dequantized" and not result["exact"]
    assert result["num_samples"] == 3 and result["mc_stderr"] > 0
    assert "exact density of 3 dequantizations, a lower bound" in capsys.readouterr().out
    assert main(["evaluate", str(whole), "--method", "ais"]) == 2  # no method to choose
    assert "computes its log p(x) itself" in capsys.readouterr().err
    assert main(["sample", str(whole), "--n", "4"]) == 0


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"image_shape": (1, 28, 28), "scales": 4}, "by 8; (28, 28) is not: set scales = 3"),
        ({"steps": 0}, "steps must be a positive int"),
        ({"alpha": 0.5}, "alpha must lie in (0, 0.5)"),
    ],
)
def test_settings_that_cannot_work_are_refused(settings, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        NormalizingFlow(FlowConfig(**settings))


def test_pixels_outside_the_unit_interval_are_refused_before_fitting():
    flow = NormalizingFlow(FlowConfig(image_shape=(1, 4, 4), steps=1, hidden=4))
    with pytest.raises(ValueError, match="a flow models pixels in \\[0, 1\\]"):
        flow.prepare(ImageData(torch.rand(4, 1, 4, 4) * 1.5))


def test_evaluate_averages_the_density_over_dequantizations():
    """evaluate's value: the mean over K draws u of log p((x + u) / levels) - D log(levels)."""
    flow = scrambled((1, 4, 4), steps=1).float().eval()
    data = ImageData(torch.randint(0, 17, (6, 1, 4, 4)).float(), levels=17)
    ll = lvmkit.evaluate(flow, data, num_samples=4, seed=3)
    torch.manual_seed(0)
    by_hand = torch.stack([flow.log_prob((data.x + torch.rand_like(data.x)) / 17)
                           for _ in range(400)]).mean(0) - 16 * math.log(17)  # fmt: skip
    assert ll.method == "dequantized" and ll.num_samples == 4
    assert abs(ll.mean - float(by_hand.mean())) < 4 * ll.mc_stderr + 0.05
    assert ll.mean != lvmkit.evaluate(flow, data, num_samples=4, seed=4).mean  # fresh draws


def test_fitting_an_unstarted_flow_warns_and_raw_pixels_cannot_start_it():
    flow = NormalizingFlow(FlowConfig(image_shape=(1, 4, 4), steps=1, hidden=4))
    raw = ImageData(torch.randint(0, 17, (8, 1, 4, 4)).float(), levels=17)
    with pytest.raises(ValueError, match=r"flow.initialize\(flow.prepare\(train\)\)"):
        flow.initialize(raw)
    with pytest.warns(UserWarning, match="never started on training images"):
        lvmkit.fit(flow.model, flow.guide, flow.prepare(raw), epochs=1, progress=False)
    flow.initialize(flow.prepare(raw))
    assert bool(flow.started)
