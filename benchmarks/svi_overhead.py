"""What one SVI step costs over a hand-written PyTorch step: torch vs Pyro's SVI vs lvmkit.

The same VAE (784-400-20 MLP, Bernoulli likelihood, batch 128, Adam lr 1e-3) is trained step by
step three ways in one process, from copies of the same initial weights: a hand-written PyTorch
loop (the limit; it uses the same foreach Adam as lvmkit, so only the framework's cost differs),
Pyro's ``SVI`` + ``Trace_ELBO`` + ``pyro.optim.Adam``, and ``lvmkit.Trainer.step`` (what
``lvmkit.fit`` runs per step) with the model written as plain Pyro functions below.
The contenders are interleaved in rounds (the order rotating) and the medians are reported.

    python benchmarks/svi_overhead.py [--smoke] [--device auto]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn
from torch.nn import functional as F

import lvmkit
from lvmkit.inference import resolve_device
from lvmkit.inference.svi import OPTIMIZERS

D, H, Z, BATCH = 784, 400, 20, 128


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden, self.loc, self.raw_scale = nn.Linear(D, H), nn.Linear(H, Z), nn.Linear(H, Z)

    def forward(self, x):
        h = torch.relu(self.hidden(x))
        return self.loc(h), F.softplus(self.raw_scale(h)) + 1e-4


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden, self.logits = nn.Linear(Z, H), nn.Linear(H, D)

    def forward(self, z):
        return self.logits(torch.relu(self.hidden(z)))


def pyro_pair(enc: Encoder, dec: Decoder):
    """The VAE as a user writes it: two plain Pyro functions."""

    def model(x):
        pyro.module("decoder", dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z), x.new_ones(Z)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=dec(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", enc)
        with pyro.plate("data", x.shape[0]):
            loc, scale = enc(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return model, guide


def torch_loss(enc: Encoder, dec: Decoder, x):
    """-ELBO of the batch, the same single-sample estimator Trace_ELBO computes."""
    loc, scale = enc(x)
    q = torch.distributions.Normal(loc, scale)
    z = q.rsample()
    log_px = -F.binary_cross_entropy_with_logits(dec(z), x, reduction="none").sum(-1)
    log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    return -(log_px + log_pz - q.log_prob(z).sum(-1)).sum()


def digits_28(device) -> torch.Tensor:
    """Real data at MNIST size: the bundled digits upsampled to 28x28 and binarized."""
    d = lvmkit.data.scale(lvmkit.data.load("digits"))
    x = F.interpolate(d.x, size=(28, 28), mode="bilinear", align_corners=False)
    return (x > 0.5).float().flatten(1).to(device)  # (1797, 784)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few steps, to check it runs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=40, help="steps per contender per round")
    args = parser.parse_args()
    rounds, steps = (2, 3) if args.smoke else (args.rounds, args.steps)
    device = resolve_device(args.device)
    data = digits_28(device)
    batches = [data[i : i + BATCH] for i in range(0, len(data) - BATCH + 1, BATCH)]

    torch.manual_seed(0)
    enc0, dec0 = Encoder().to(device), Decoder().to(device)

    # Same loss from the same parameters and the same random draws.
    pyro.clear_param_store()
    model, guide = pyro_pair(enc0, dec0)
    losses = {}
    torch.manual_seed(1)
    losses["torch"] = float(torch_loss(enc0, dec0, batches[0]).detach())
    torch.manual_seed(1)
    losses["pyro"] = Trace_ELBO().loss(model, guide, batches[0])
    trainer = lvmkit.Trainer(*pyro_pair(enc0, dec0), device=device)
    trainer.init(batches[0])
    torch.manual_seed(1)
    with trainer.scope():
        losses["lvmkit"] = float(trainer.loss.loss(trainer.model, trainer.guide, batches[0]))
    ref = losses["torch"]
    same_loss = all(abs(v - ref) <= 1e-5 * abs(ref) for v in losses.values())

    # Three independent copies of the initial weights, one per contender.
    t_enc, t_dec = copy.deepcopy(enc0), copy.deepcopy(dec0)
    t_opt = OPTIMIZERS["adam"](list(t_enc.parameters()) + list(t_dec.parameters()), 1e-3)

    def torch_step(x):
        loss = torch_loss(t_enc, t_dec, x)
        t_opt.zero_grad(set_to_none=True)
        loss.backward()
        t_opt.step()
        return loss.item()  # any real loop reads the loss (to log it, to catch NaN)

    pyro.clear_param_store()
    svi = SVI(
        *pyro_pair(copy.deepcopy(enc0), copy.deepcopy(dec0)),
        pyro.optim.Adam({"lr": 1e-3}),
        Trace_ELBO(),
    )
    lv = lvmkit.Trainer(
        *pyro_pair(copy.deepcopy(enc0), copy.deepcopy(dec0)), lr=1e-3, device=device
    )
    lv.init(batches[0])

    contenders = {
        "torch": torch_step,
        "pyro": svi.step,
        # fit validates the first step of each epoch and runs the rest like this
        "lvmkit": lambda x: lv.step(x, validate=False),
    }
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {k: [] for k in contenders}
    for step in contenders.values():  # warm-up
        for x in batches[:3]:
            step(x)
    for r in range(rounds):
        names = list(contenders)
        names = names[r % 3 :] + names[: r % 3]
        for name in names:
            step = contenders[name]
            sync()
            t0 = time.perf_counter()
            for i in range(steps):
                step(batches[i % len(batches)])
            sync()
            times[name].append((time.perf_counter() - t0) / steps * 1e3)
    ms = {k: statistics.median(v) for k, v in times.items()}
    print(
        json.dumps(
            {
                "benchmark": "svi_overhead",
                "device": str(device),
                "torch_ms": round(ms["torch"], 3),
                "pyro_ms": round(ms["pyro"], 3),
                "lvmkit_ms": round(ms["lvmkit"], 3),
                "lvmkit_over_torch": round(ms["lvmkit"] / ms["torch"], 3),
                "pyro_over_torch": round(ms["pyro"] / ms["torch"], 3),
                "same_loss": same_loss,
                "losses": {k: round(v, 4) for k, v in losses.items()},
                "rounds": rounds,
                "steps_per_round": steps,
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
