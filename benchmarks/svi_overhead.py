"""What one SVI step costs over a hand-written PyTorch step: torch vs Pyro's SVI vs lvmkit.

The same VAE (784-400-20 MLP, Bernoulli likelihood, batch 128, Adam lr 1e-3) is trained step by
step five ways in one process, from copies of the same initial weights:

- ``torch``: a hand-written PyTorch loop, the limit. It uses the same foreach Adam as lvmkit and
  no distribution argument checks (as lvmkit.fit on all but each epoch's first step), so only
  the framework's cost differs.
- ``floor``: the same hand-written loop around the user's Pyro statements (pyro.module, plates,
  sample sites), run with no inference handler and the log-densities summed by hand. No trainer
  that runs the user's Pyro program can be cheaper: this is what the program itself costs.
- ``pyro``: Pyro's ``SVI`` + ``Trace_ELBO`` + ``pyro.optim.Adam``, Pyro's defaults.
- ``lvmkit``: what ``lvmkit.fit`` runs per step by default, with the model written as plain Pyro
  functions: the Pyro program runs every step, the latents drawn by the datapoints' positions
  (the loop's keys) as fit draws them.
- ``lvmkit_jit``: the same with ``fit(..., jit="auto")``: the steps run from a trace of the loss.

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
from contextlib import nullcontext

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn
from torch.nn import functional as F

import lvmkit
from lvmkit.core.rng import draw_keys
from lvmkit.inference import resolve_device
from lvmkit.inference.trainer import OPTIMIZERS

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


def program_floor_loss(enc: Encoder, dec: Decoder, x):
    """-ELBO from the user's Pyro statements run with no inference handler at all.

    The same pyro.module / plate / sample statements as ``pyro_pair``, with the guide's draw
    handed to the model as an observation and the log-densities summed by hand: what any trainer
    that runs the user's Pyro program pays before its inference does any work. (Its own module
    names keep its parameters apart from Pyro SVI's copies in the global store.)
    """
    pyro.module("floor_encoder", enc)
    with pyro.plate("data", x.shape[0]):
        loc, scale = enc(x)
        q = dist.Normal(loc, scale).to_event(1)
        z = pyro.sample("z", q)
    pyro.module("floor_decoder", dec)
    with pyro.plate("data", x.shape[0]):
        prior = dist.Normal(x.new_zeros(Z), x.new_ones(Z)).to_event(1)
        pyro.sample("z", prior, obs=z)
        lik = dist.Bernoulli(logits=dec(z)).to_event(1)
        pyro.sample("x", lik, obs=x)
    log_q = q.base_dist.log_prob(z).sum()
    return log_q - (prior.base_dist.log_prob(z).sum() + lik.base_dist.log_prob(x).sum())


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
    losses["floor"] = float(program_floor_loss(enc0, dec0, batches[0]).detach())
    torch.manual_seed(1)
    losses["pyro"] = Trace_ELBO().loss(model, guide, batches[0])
    trainer = lvmkit.Trainer(*pyro_pair(enc0, dec0), device=device, jit="auto")
    trainer.init(batches[0])
    torch.manual_seed(1)
    with trainer.scope():
        losses["lvmkit"] = float(trainer.loss.loss(trainer.model, trainer.guide, batches[0]))
        torch.manual_seed(1)
        trace = trainer.traced.get(trainer.leaves(), (batches[0],))
        losses["lvmkit_jit"] = float(trace(*trainer.leaves(), batches[0]).detach())
    ref = losses["torch"]
    same_loss = all(abs(v - ref) <= 1e-5 * abs(ref) for v in losses.values())

    # Independent copies of the initial weights, one per contender.
    def hand_written_step(loss_fn):
        enc, dec = copy.deepcopy(enc0), copy.deepcopy(dec0)
        opt = OPTIMIZERS["adam"](list(enc.parameters()) + list(dec.parameters()), 1e-3)

        def step(x):
            # No argument/support checks: lvmkit.fit runs all but each epoch's first step so.
            with pyro.validation_enabled(False):
                loss = loss_fn(enc, dec, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.item()  # any real loop reads the loss (to log it, to catch NaN)

        return step

    pyro.clear_param_store()
    svi = SVI(
        *pyro_pair(copy.deepcopy(enc0), copy.deepcopy(dec0)),
        pyro.optim.Adam({"lr": 1e-3}),
        Trace_ELBO(),
    )
    lv, traced = (
        lvmkit.Trainer(
            *pyro_pair(copy.deepcopy(enc0), copy.deepcopy(dec0)), lr=1e-3, device=device, jit=jit
        )
        for jit in (False, "auto")
    )
    lv.init(batches[0])
    traced.init(batches[0])
    counter = iter(range(10**9))

    def keys(x):  # as the loop draws them: by the datapoints' positions in the data
        step = next(counter)
        index = torch.arange(len(x), device=device) + step * BATCH
        return draw_keys(0, 0, step, index)

    # name -> (context held around a round of steps, one step)
    contenders = {
        "torch": (nullcontext, hand_written_step(torch_loss)),
        "floor": (nullcontext, hand_written_step(program_floor_loss)),
        "pyro": (nullcontext, svi.step),
        # What fit runs: one parameter-store scope per epoch and, inside it, this per step
        # (argument/support checks on each epoch's first step only).
        "lvmkit": (lv.scope, lambda x: lv.step(x, validate=False, keys=keys(x))),
        "lvmkit_jit": (traced.scope, lambda x: traced.step(x, validate=False, keys=keys(x))),
    }
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {k: [] for k in contenders}
    for context, step in contenders.values():  # warm-up
        with context():
            for x in batches[:3]:
                step(x)
    for r in range(rounds):
        names = list(contenders)
        names = names[r % len(names) :] + names[: r % len(names)]
        for name in names:
            context, step = contenders[name]
            with context():
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
                "lvmkit_jit_ms": round(ms["lvmkit_jit"], 3),
                "lvmkit_jit_over_torch": round(ms["lvmkit_jit"] / ms["torch"], 3),
                "lvmkit_jit_note": traced.jit_note,
                "pyro_over_torch": round(ms["pyro"] / ms["torch"], 3),
                "floor_ms": round(ms["floor"], 3),
                "floor_over_torch": round(ms["floor"] / ms["torch"], 3),
                "lvmkit_over_floor": round(ms["lvmkit"] / ms["floor"], 3),
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
