"""The contrastive encoder: NT-Xent against a hand-computed value, the shift augmentation
against explicit pictures, and the CLI fits, resumes exactly and probes it."""

import math

import pytest
import torch

from lvmkit.cli import main
from lvmkit.models import ContrastiveConfig, ContrastiveEncoder
from lvmkit.models.contrastive import nt_xent, shifted
from lvmkit.runs import load_run


def test_nt_xent_is_the_hand_computed_value():
    """Two images, views on the unit circle: a0 = (1, 0), b0 = (0, 1), a1 = (-1, 0),
    b1 = (0, -1); tau = 1. View a0: positive b0 (cos 0), negatives a1 (cos -1) and b1 (cos 0)."""
    a = torch.tensor([[2.0, 0.0], [-1.0, 0.0]])  # lengths do not matter: cosines
    b = torch.tensor([[0.0, 3.0], [0.0, -1.0]])
    one = -math.log(math.exp(0) / (math.exp(0) + math.exp(-1) + math.exp(0)))
    # by symmetry every view has one positive at cos 0 and negatives at cos -1 and 0
    assert torch.allclose(nt_xent(a, b, 1.0), torch.tensor([one, one]))
    near = torch.tensor([[1.0, 0.1], [-1.0, 0.1]])  # the views agree: a lower loss
    assert (nt_xent(near, near + 0.01, 1.0) < one).all()
    t = 0.5  # the temperature divides every cosine
    two = -math.log(math.exp(0) / (math.exp(0) + math.exp(-1 / t) + math.exp(0)))
    assert torch.allclose(nt_xent(a, b, t), torch.tensor([two, two]))


def test_shifts_move_whole_pixels_with_zeros_in():
    x = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3).repeat(2, 1, 1, 1)
    out = shifted(x, torch.tensor([1, 0]), torch.tensor([0, -1]), most=1)
    assert torch.equal(out[0, 0], torch.tensor([[0.0, 0, 0], [1, 2, 3], [4, 5, 6]]))  # down 1
    assert torch.equal(out[1, 0], torch.tensor([[2.0, 3, 0], [5, 6, 0], [8, 9, 0]]))  # left 1


def test_the_cli_fits_resumes_and_probes_the_representation(tmp_path):
    common = ["--no-progress", "--threads", "1", "--set", "model.hidden=[32]",
              "--set", "model.features=16"]  # fmt: skip
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(["fit", "contrastive", "--epochs", "2", "--out", str(whole), *common]) == 0
    assert main(["fit", "contrastive", "--epochs", "1", "--out", str(part), *common]) == 0
    resumed = ["--epochs", "2", "--out", str(part), "--resume", *common]
    assert main(["fit", "contrastive", *resumed]) == 0
    a, b = load_run(whole).model.state_dict(), load_run(part).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the augmentations' draws resume too
    summary = load_run(whole).summary
    assert 0.3 < summary["linear_probe_accuracy"] <= 1  # ten classes: chance is 0.1


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"shift": -1}, "shift"),
        ({"features": 0}, "features"),
    ],
)
def test_settings_that_cannot_work_are_refused(settings, words):
    with pytest.raises(ValueError, match=words):
        ContrastiveEncoder(ContrastiveConfig(**settings))
