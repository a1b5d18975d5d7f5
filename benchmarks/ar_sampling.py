"""Naive vs cached sampling of each autoregressive net: one full forward pass per element vs
the net's own generation cache, on the same initialised net and seed. The gated PixelCNN caches
per layer (Ramachandran et al. 2017), the Pixel Transformer keeps keys and values of its window,
the scanline RNN carries its hidden state.

A batch of 16 images at 8x8 with 17 levels and of 8 images at 28x28 binary, each net at its
built-in defaults; the cached sampler is timed over ``--rounds`` rounds and the naive one over
``--naive-rounds`` (one by default: a naive 28x28 batch takes minutes, and the whole script
finishes within 10 minutes on 2 cores), whole images each time, medians reported;
``identical`` says whether both drew the same images.

    python benchmarks/ar_sampling.py [--smoke] [--rounds 3] [--naive-rounds 1]
        [--nets gated,transformer,rnn]

Prints one JSON line per net and image size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from lvmkit.inference import resolve_device
from lvmkit.models import AutoregressiveConfig, AutoregressiveDensity


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the cached sampler")
    parser.add_argument("--naive-rounds", type=int, default=1, help="rounds of the naive one")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--nets", default="gated,transformer,rnn")
    args = parser.parse_args()
    device = resolve_device(args.device)
    sizes = [((1, 28, 28), 2, 8), ((1, 8, 8), 17, 16)]  # image, levels, batch
    rounds = {True: args.rounds, False: args.naive_rounds}
    if args.smoke:
        sizes, rounds = [((1, 10, 10), 2, 4), ((1, 8, 8), 17, 4)], {True: 1, False: 1}
    for shape, levels, batch in sizes:
        for net in args.nets.split(","):
            compare(net, shape, levels, batch, rounds, device)


def compare(net: str, shape, levels: int, batch: int, rounds: dict, device) -> None:
    torch.manual_seed(0)
    config = AutoregressiveConfig(image_shape=shape, levels=levels, net=net)
    model = AutoregressiveDensity(config).to(device).eval()
    times, draws = {False: [], True: []}, {}
    for r in range(max(rounds.values())):
        for fast in (False, True) if r % 2 == 0 else (True, False):
            if r >= rounds[fast]:
                continue
            dist = model.distribution(n=batch)
            dist.fast = fast
            torch.manual_seed(1)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            draws[fast] = dist.sample()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[fast].append(time.perf_counter() - t0)
    naive, cached = statistics.median(times[False]), statistics.median(times[True])
    print(
        json.dumps(
            {
                "benchmark": "ar_sampling",
                "net": net,
                "image": f"{shape[1]}x{shape[2]}x{shape[0]}",
                "levels": levels,
                "batch": batch,
                "device": str(device),
                "naive_s": round(naive, 3),
                "cached_s": round(cached, 4),
                "speedup": round(naive / cached, 1),
                "identical": bool(torch.equal(draws[False], draws[True])),
                "rounds": {"naive": rounds[False], "cached": rounds[True]},
                "threads": torch.get_num_threads(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
