"""Stacked denoising autoencoders: the loss is each layer's reconstruction of the (fixed) codes
below it, no gradient crosses a layer; the CLI fits, resumes and probes the stack; and the
pretraining comparison runs its three starts."""

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch.nn import functional as F

from lvmkit.cli import main
from lvmkit.data import load_digits
from lvmkit.diagnostics import compare_pretraining
from lvmkit.models import StackedConfig, StackedDenoisingAutoencoder
from lvmkit.runs import load_run


def test_each_layer_reconstructs_the_fixed_codes_below_it():
    torch.manual_seed(0)
    stack = StackedDenoisingAutoencoder(StackedConfig((1, 2, 3), widths=(4, 3), noise=0.0))
    x = torch.rand(5, 1, 2, 3)
    pyro.clear_param_store()
    loss = Trace_ELBO().differentiable_loss(stack.model, stack.guide, x)
    bottom, top = stack.layers
    flat = x.flatten(1)
    h = torch.sigmoid(bottom.encode(flat))
    first = F.binary_cross_entropy_with_logits(bottom.decode(h), flat, reduction="sum")
    codes = h.detach()
    second = F.binary_cross_entropy_with_logits(
        top.decode(torch.sigmoid(top.encode(codes))), codes, reduction="sum"
    )
    assert torch.allclose(loss, first + second)
    total = torch.autograd.grad(loss, list(bottom.parameters()))
    own = torch.autograd.grad(first, list(bottom.parameters()))
    assert all(torch.allclose(a, b) for a, b in zip(total, own, strict=True))


def test_the_cli_fits_resumes_and_probes_the_stack(tmp_path):
    common = ["--no-progress", "--threads", "1", "--set", "model.widths=[32, 16]"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(["fit", "sdae", "--epochs", "2", "--out", str(whole), *common]) == 0
    assert main(["fit", "sdae", "--epochs", "1", "--out", str(part), *common]) == 0
    assert main(["fit", "sdae", "--epochs", "2", "--out", str(part), "--resume", *common]) == 0
    a, b = load_run(whole).model.state_dict(), load_run(part).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the masking noise resumes too
    assert 0.3 < load_run(whole).summary["linear_probe_accuracy"] <= 1


def test_the_comparison_trains_the_same_net_from_three_starts():
    data = load_digits()
    x, y = (data.x / 16).flatten(1)[:300], data.y[:300]
    found = compare_pretraining(x[:200], y[:200], x[200:], y[200:], widths=(16, 16), epochs=2,
                                pretrain_epochs=2)  # fmt: skip
    assert set(found.losses) == set(found.test_accuracy) == {"pretrained", "random", "relu"}
    assert all(len(v) == 2 for v in found.losses.values())
    assert all(0 <= v <= 1 for v in [*found.test_accuracy.values(), *found.probe_before.values()])


@pytest.mark.parametrize(
    ("settings", "words"), [({"noise": 1.0}, "below 1"), ({"widths": ()}, "at least one layer")]
)
def test_settings_that_cannot_work_are_refused(settings, words):
    with pytest.raises(ValueError, match=words):
        StackedDenoisingAutoencoder(StackedConfig(**settings))
