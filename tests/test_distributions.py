import itertools

import pytest
import torch

from lvmkit.distributions import DiscretizedLogistic, DiscretizedLogisticMixture, make_observation

DISCRETE = [("bernoulli", 2, 1), ("categorical", 3, 1), ("logistic", 3, 1), ("logistic", 3, 2)]


def all_images(levels: int, shape=(1, 2, 2)) -> torch.Tensor:
    """Every configuration of a tiny image: (levels ** numel, *shape)."""
    values = list(itertools.product(range(levels), repeat=int(torch.Size(shape).numel())))
    return torch.tensor(values, dtype=torch.float64).reshape(-1, *shape)


@pytest.mark.parametrize("likelihood, levels, components", DISCRETE)
def test_probabilities_of_every_2x2_image_sum_to_one(likelihood, levels, components):
    torch.manual_seed(0)
    obs = make_observation(likelihood, (1, 2, 2), levels=levels, components=components)
    h = 3 * torch.randn(4, obs.num_params, dtype=torch.float64)  # 4 different contexts
    images = all_images(levels)  # (levels^4, 1, 2, 2)
    log_p = obs(h.unsqueeze(1)).log_prob(images)  # (4, levels^4)
    assert torch.allclose(log_p.exp().sum(-1), torch.ones(4, dtype=torch.float64), atol=1e-10)


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_logistic_mixture_sums_to_one_over_every_value_even_in_the_tails(levels):
    torch.manual_seed(0)
    m = 3
    logits = torch.randn(5, m, dtype=torch.float64)
    loc = torch.tensor([-40.0, 0.0, levels / 2, levels - 1.0, levels + 40.0], dtype=torch.float64)
    loc = loc[:, None] + torch.randn(5, m, dtype=torch.float64)
    scale = torch.tensor([1e-3, 0.05, 1.0, 30.0, 0.3], dtype=torch.float64)[:, None].expand(5, m)
    d = DiscretizedLogisticMixture(logits, loc, scale, levels)
    values = torch.arange(levels, dtype=torch.float64)[:, None].expand(levels, 5)
    log_p = d.log_prob(values)
    assert torch.isfinite(log_p).all()
    assert torch.allclose(log_p.exp().sum(0), torch.ones(5, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(d.mean, (log_p.exp() * values).sum(0))


def test_logistic_matches_the_sigmoid_difference_formula():
    loc, scale = torch.tensor(7.3, dtype=torch.float64), torch.tensor(2.1, dtype=torch.float64)
    d = DiscretizedLogistic(loc, scale, 17)
    x = torch.arange(17, dtype=torch.float64)
    upper = torch.sigmoid((x + 0.5 - loc) / scale)
    lower = torch.sigmoid((x - 0.5 - loc) / scale)
    upper[-1], lower[0] = 1.0, 0.0  # the edge bins are open
    assert torch.allclose(d.log_prob(x), (upper - lower).log(), atol=1e-12)


def test_logistic_samples_follow_its_probabilities():
    torch.manual_seed(0)
    d = DiscretizedLogisticMixture(
        torch.tensor([0.0, 1.0]), torch.tensor([1.0, 3.5]), torch.tensor([0.4, 0.8]), 6
    )
    draws = d.sample((40000,))
    freq = torch.bincount(draws.long(), minlength=6).double() / len(draws)
    probs = d.log_prob(torch.arange(6.0)).exp().double()
    assert torch.allclose(freq, probs, atol=0.01)


def test_gaussian_observations_agree_with_torch():
    torch.manual_seed(0)
    obs = make_observation("gaussian", (1, 2, 3), min_scale=0.03)
    h = torch.randn(4, obs.num_params)
    x = torch.rand(4, 1, 2, 3)
    loc, raw = h.reshape(4, 2, 1, 2, 3).unbind(1)
    ref = torch.distributions.Normal(loc, torch.nn.functional.softplus(raw) + 0.03)
    assert torch.allclose(obs(h).log_prob(x), ref.log_prob(x).sum((1, 2, 3)))
    low = make_observation("lowrank", (6,), rank=2)
    h = torch.randn(4, low.num_params)
    v = torch.randn(4, 6)
    loc, factor, raw = h[:, :6], h[:, 6:18].reshape(4, 6, 2), h[:, 18:]
    diag = (torch.nn.functional.softplus(raw) + 0.03) ** 2
    ref = torch.distributions.LowRankMultivariateNormal(loc, factor, diag)
    assert torch.allclose(low(h).log_prob(v), ref.log_prob(v), atol=1e-5)
    img = make_observation("lowrank", (1, 2, 3), rank=2)  # images are flattened and reshaped
    assert torch.allclose(img(h).log_prob(v.reshape(4, 1, 2, 3)), ref.log_prob(v), atol=1e-5)


@pytest.mark.parametrize(
    "likelihood", ["gaussian", "lowrank", "bernoulli", "categorical", "logistic"]
)
def test_shapes_of_samples_and_means(likelihood):
    obs = make_observation(likelihood, (3, 4, 5), levels=17, components=2)
    h = torch.randn(6, obs.num_params)
    p = obs(h)
    assert p.batch_shape == (6,) and p.event_shape == (3, 4, 5)
    assert p.sample().shape == (6, 3, 4, 5) and p.sample((2,)).shape == (2, 6, 3, 4, 5)
    assert obs.mean(h).shape == (6, 3, 4, 5)
    assert p.log_prob(p.sample()).shape == (6,)


def test_out_of_support_values_are_errors():
    d = DiscretizedLogistic(torch.zeros(3), torch.ones(3), 17, validate_args=True)
    with pytest.raises(ValueError, match="support"):
        d.log_prob(torch.tensor([0.0, 16.0, 17.0]))
    with pytest.raises(ValueError, match="support"):
        d.log_prob(torch.tensor([0.0, 1.5, 3.0]))
    with pytest.raises(ValueError, match=r"needs binary data \(0/1\).*binarize"):
        make_observation("bernoulli", (1, 2, 2)).check(torch.full((1, 1, 2, 2), 16.0))
    with pytest.raises(ValueError, match=r"17-level 'categorical'.*0\.\.16"):
        make_observation("categorical", (1, 2, 2), levels=17).check(torch.full((1, 1, 2, 2), 0.5))
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        make_observation("poisson", (1, 2, 2))
    with pytest.raises(ValueError, match="needs levels >= 2"):
        make_observation("logistic", (1, 2, 2))
