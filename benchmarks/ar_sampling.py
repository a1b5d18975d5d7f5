"""Naive vs cached sampling of a gated PixelCNN: one full forward pass per element vs per-layer
caches (Ramachandran et al. 2017), on the same untrained-but-initialised net and seed.

A batch of 16 images at 28x28 binary and at 8x8 with 17 levels; the contenders alternate over
rounds and medians are reported; ``identical`` says whether both drew the same images.

    python benchmarks/ar_sampling.py [--smoke] [--rounds 3]

Prints one JSON line per image size.
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
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    sizes = [((1, 28, 28), 2), ((1, 8, 8), 17)]
    batch, rounds = (4, 1) if args.smoke else (16, args.rounds)
    if args.smoke:
        sizes = [((1, 10, 10), 2), ((1, 8, 8), 17)]
    for shape, levels in sizes:
        torch.manual_seed(0)
        model = AutoregressiveDensity(AutoregressiveConfig(image_shape=shape, levels=levels))
        model.to(device)
        times, draws = {False: [], True: []}, {}
        for r in range(rounds):
            for fast in (False, True) if r % 2 == 0 else (True, False):
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
                    "image": f"{shape[1]}x{shape[2]}x{shape[0]}",
                    "levels": levels,
                    "batch": batch,
                    "device": str(device),
                    "naive_s": round(naive, 3),
                    "cached_s": round(cached, 3),
                    "speedup": round(naive / cached, 1),
                    "identical": bool(torch.equal(draws[False], draws[True])),
                    "rounds": rounds,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
