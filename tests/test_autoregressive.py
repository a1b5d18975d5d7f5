import itertools

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from lvmkit.distributions import AutoregressiveImage, make_observation
from lvmkit.nets import GatedPixelCNN, PixelTransformer, ScanlineRNN

CASES = [  # (image shape, levels, head, components)
    ((1, 2, 2), 2, "categorical", 1),
    ((1, 2, 2), 3, "categorical", 1),
    ((1, 2, 2), 3, "logistic", 2),
    ((3, 2, 2), 2, "categorical", 1),
]


ARCHS = ["gated", "transformer", "rnn"]


def build_net(arch, shape, params, context=0, layers=3):
    if arch == "gated":
        return GatedPixelCNN(
            shape[0], params, features=6 * shape[0], layers=layers, context=context
        )
    if arch == "transformer":
        return PixelTransformer(
            shape, params, width=16, layers=2, heads=2, window=5, context=context
        )
    return ScanlineRNN(shape, params, width=16, layers=2, context=context)


def make(shape, levels, head, components, context=0, seed=0, arch="gated"):
    torch.manual_seed(seed)
    obs = make_observation(head, shape, levels=levels, components=components)
    return build_net(arch, shape, obs.params_per_element, context).double(), obs


def every_image(shape, levels):
    values = itertools.product(range(levels), repeat=int(torch.Size(shape).numel()))
    return torch.tensor(list(values), dtype=torch.float64).reshape(-1, *shape)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("conditioned", [False, True])
@pytest.mark.parametrize("shape, levels, head, components", CASES)
def test_probabilities_over_every_configuration_sum_to_one(
    shape, levels, head, components, conditioned, arch
):
    net, obs = make(shape, levels, head, components, context=3 if conditioned else 0, arch=arch)
    images = every_image(shape, levels)  # (levels ** numel, C, 2, 2)
    context = torch.randn(2, 1, 3, dtype=torch.float64) if conditioned else None
    d = AutoregressiveImage(net, obs, context, batch_shape=(2, 1))
    with torch.no_grad():
        total = d.log_prob(images).exp().sum(-1)  # (2,): one sum per context
    assert torch.allclose(total, torch.ones(2, dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("channels, context", [(1, 0), (3, 0), (3, 4)])
def test_causal_and_without_a_blind_spot(channels, context, arch):
    """The parameters of element (c, i, j) have zero gradient with respect to every element at
    or after it in raster-then-channel order, and nonzero gradient to every earlier one inside
    the receptive field (over a few random inputs, so that no dead unit hides a connection)."""
    torch.manual_seed(0)
    net = build_net(arch, (channels, 4, 4), 2, context, layers=4)
    if arch == "transformer":  # a window covering the whole 4x4 image: nothing out of reach
        net = PixelTransformer(
            (channels, 4, 4), 2, width=16, layers=2, heads=2, window=16 * channels, context=context
        )
    c_, h_, w_ = channels, 4, 4
    order = torch.arange(c_ * h_ * w_).reshape(h_, w_, c_).permute(2, 0, 1)  # position -> rank
    seen = torch.zeros(c_, h_, w_, c_, h_, w_, dtype=torch.bool)
    for _ in range(3):
        x = torch.randn(1, c_, h_, w_, requires_grad=True)
        out = net(x, torch.randn(1, context) if context else None)
        for c, i, j in itertools.product(range(c_), range(h_), range(w_)):
            (g,) = torch.autograd.grad(out[0, :, c, i, j].sum(), x, retain_graph=True)
            seen[c, i, j] |= g[0] != 0
    earlier = order[None, None, None] < order[:, :, :, None, None, None]
    assert not (seen & ~earlier).any(), "an element sees itself or a later element"
    assert not (earlier & ~seen).any(), "an element is blind to an earlier one"


def test_complete_keeps_known_pixels_and_samples_are_valid():
    net, obs = make((3, 3, 3), 4, "logistic", 2)
    d = AutoregressiveImage(net.float(), obs, batch_shape=(5,))
    x = d.sample()
    assert x.shape == (5, 3, 3, 3) and set(x.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    known = torch.rand(5, 3, 3, 3) > 0.5
    filled = d.complete(x, known)
    assert torch.equal(filled[known], x[known])
    assert d.sample((2,)).shape == (2, 5, 3, 3, 3)


def test_usable_as_a_pyro_observation():
    net, obs = make((1, 4, 4), 2, "categorical", 1)
    net = net.float()
    x = torch.randint(0, 2, (6, 1, 4, 4)).float()

    def model(x):
        pyro.module("net", net)
        with pyro.plate("data", len(x)):
            pyro.sample("x", AutoregressiveImage(net, obs), obs=x)

    loss = Trace_ELBO().differentiable_loss(model, lambda x: None, x)
    expected = -AutoregressiveImage(net, obs, batch_shape=(6,)).log_prob(x).sum()
    assert torch.allclose(loss, expected)
    with pytest.raises(ValueError, match="support"):
        Trace_ELBO().loss(model, lambda x: None, x + 2)


@pytest.mark.parametrize(
    "shape, levels, head, context",
    [
        ((1, 6, 6), 17, "categorical", 0),
        ((3, 4, 5), 4, "logistic", 3),
        ((1, 7, 7), 2, "categorical", 5),
    ],
)
def test_cached_sampling_returns_exactly_the_naive_samples(shape, levels, head, context):
    torch.manual_seed(0)
    obs = make_observation(head, shape, levels=levels, components=2)
    net = GatedPixelCNN(
        shape[0],
        obs.params_per_element,
        features=6 * shape[0],
        layers=4,
        kernel=5 if context else 3,
        context=context,
    )
    _same_draws_fast_and_naive(net, obs, shape, context)


def _same_draws_fast_and_naive(net, obs, shape, context):
    ctx = torch.randn(3, context) if context else None
    draws = {}
    for fast in (False, True):
        d = AutoregressiveImage(net, obs, ctx, batch_shape=(3,), fast=fast)
        torch.manual_seed(1)
        x = d.sample()
        known = torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) > 0.6
        torch.manual_seed(3)
        draws[fast] = (x, d.complete(x, known))
        assert torch.equal(draws[fast][1][known], x[known])  # known elements stay
    assert torch.equal(draws[False][0], draws[True][0])
    assert torch.equal(draws[False][1], draws[True][1])


@pytest.mark.parametrize(
    "shape, levels, window, context",
    [
        ((1, 5, 5), 17, 1, 0),
        ((1, 5, 6), 2, 4, 3),
        ((3, 3, 4), 4, 7, 0),
        ((3, 4, 3), 5, 64, 2),  # a window longer than the image: full causal attention
    ],
)
def test_cached_transformer_generation_draws_what_naive_sampling_draws(
    shape, levels, window, context
):
    torch.manual_seed(0)
    obs = make_observation("categorical", shape, levels=levels)
    net = PixelTransformer(
        shape, obs.params_per_element, width=16, layers=2, heads=2, window=window, context=context
    )
    _same_draws_fast_and_naive(net, obs, shape, context)


@pytest.mark.parametrize(
    "shape, levels, head, context",
    [((1, 5, 5), 17, "categorical", 0), ((3, 3, 4), 4, "logistic", 3)],
)
def test_cached_rnn_generation_draws_what_naive_sampling_draws(shape, levels, head, context):
    torch.manual_seed(0)
    obs = make_observation(head, shape, levels=levels, components=2)
    net = ScanlineRNN(shape, obs.params_per_element, width=16, layers=2, context=context)
    _same_draws_fast_and_naive(net, obs, shape, context)


@pytest.mark.parametrize("net_name", ["gated", "transformer", "rnn"])
def test_each_generation_step_gives_the_full_pass_parameters(net_name):
    """step(t) after writing elements < t equals the full pass at t, for every t."""
    from lvmkit.nets import GatedPixelCNN

    torch.manual_seed(0)
    shape = (3, 4, 4)
    nets = {
        "gated": lambda: GatedPixelCNN(3, 5, features=6, layers=3, context=2),
        "transformer": lambda: PixelTransformer(shape, 5, width=8, heads=2, window=5, context=2),
        "rnn": lambda: ScanlineRNN(shape, 5, width=8, context=2),
    }
    net = nets[net_name]()
    x, ctx = torch.rand(2, *shape) * 2 - 1, torch.randn(2, 2)
    full = net(x, ctx)  # (B, P, C, H, W)
    generation = net.start_generation(torch.zeros_like(x), ctx)
    for t in range(48):
        i, rest = divmod(t, 12)
        j, k = divmod(rest, 3)
        assert torch.allclose(generation.step(t), full[:, :, k, i, j], atol=1e-5)
        generation.write(t, x[:, k, i, j])


def test_the_known_prefix_log_prob_is_the_marginal_over_every_completion():
    """log p(x_known | h) with the known elements first equals log of the sum of p(x | h) over
    every value of the unknown ones (a 2x2 image, 3 levels, 2 channels: 3^8 images)."""
    torch.manual_seed(0)
    shape = (2, 2, 2)
    obs = make_observation("categorical", shape, levels=3)
    net = GatedPixelCNN(2, obs.params_per_element, features=4, layers=2, context=2)
    ctx = torch.randn(1, 2)
    every = torch.tensor(list(itertools.product(range(3), repeat=8))).float().view(-1, *shape)
    log_p = AutoregressiveImage(net, obs, ctx.expand(len(every), -1)).log_prob(every)
    assert torch.allclose(log_p.logsumexp(0), torch.tensor(0.0), atol=1e-5)
    known = torch.zeros(shape, dtype=torch.bool)
    known[:, 0, 0] = True  # the first pixel, both channels
    known[0, 0, 1] = True  # and the first channel of the second
    x = every[1234]
    matches = (every == x)[:, known].all(-1)
    masked = AutoregressiveImage(net, obs, ctx, known=known[None]).log_prob(x[None])
    assert torch.allclose(masked, log_p[matches].logsumexp(0), atol=1e-5)
    scattered = torch.zeros(shape, dtype=torch.bool)
    scattered[0, 1, 1] = True  # a known element after unknown ones
    with pytest.raises(ValueError, match="known pixels come first in raster order"):
        AutoregressiveImage(net, obs, ctx, known=scattered[None])
