"""Bits per dimension on the digits test split for the image likelihoods of lvmkit.

A seeded 1500 / 297 split of the 17-level digits; every model trains for the same number of
epochs (batch 64, Adam), then the test log-likelihood is measured: exactly for the independent
per-pixel categorical and the autoregressive models, by importance sampling (K samples from the
encoder) for the latent variable models. Lower is better. The PixelCNN-decoder LVM also reports
its active units (Burda et al.: Cov_x(E_q[z_u]) > 0.01) to show its code did not collapse.

    python benchmarks/likelihoods.py [--smoke] [--epochs 30]

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

import lvmkit
from lvmkit.diagnostics import active_units
from lvmkit.models import build_model

MODELS = [  # (row, registered model, settings)
    ("GaussianLVM (categorical)", "lvm", {"likelihood": "categorical"}),
    ("PixelCNN (gated)", "pixelcnn", {}),
    ("Pixel Transformer", "pixeltransformer", {}),
    ("scanline RNN", "scanlinernn", {}),
    ("PixelCNN-decoder LVM", "pixellvm", {}),
]


def independent_bits_per_dim(train, test) -> float:
    """Per-pixel categorical with add-one smoothing, fitted by counting."""
    levels = train.levels
    counts = torch.stack([(train.x == v).sum(0) for v in range(levels)]) + 1.0  # (k, C, H, W)
    log_p = (counts / counts.sum(0)).log().permute(1, 2, 3, 0)  # (C, H, W, k)
    index = test.x.long().unsqueeze(-1)  # (N, C, H, W, 1)
    ll = log_p.expand(len(test.x), *log_p.shape).gather(-1, index).flatten(1).sum(1)
    return float(-ll.mean() / (test.x[0].numel() * math.log(2)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--num-samples", type=int, default=500)
    args = parser.parse_args()
    epochs, k = (1, 10) if args.smoke else (args.epochs, args.num_samples)
    digits = lvmkit.data.load("digits")
    train, test = lvmkit.data.split(digits, (1500, 297), seed=0)
    rows = {"independent categorical": {"bits_per_dim": independent_bits_per_dim(train, test)}}
    for name, key, settings in MODELS:
        torch.manual_seed(0)
        model = build_model(key, digits.image_shape, digits.levels, settings)
        x = model.prepare(train)
        t0 = time.perf_counter()
        lvmkit.fit(
            model.model, model.guide, x, epochs=epochs, batch_size=64, lr=2e-3, progress=False
        )
        seconds = time.perf_counter() - t0
        ll = lvmkit.evaluate(model, test, num_samples=k)
        rows[name] = {
            "bits_per_dim": ll.bits_per_dim,
            "stderr_bits": ll.stderr / (digits.x[0].numel() * math.log(2)),
            "train_s": seconds,
            "exact": ll.exact,
        }
        if key == "pixellvm":
            rows[name]["active_units"] = active_units(model, test)[0]
            rows[name]["z_dim"] = model.config.z_dim
    print(f"{'model':28} bits/dim")
    for name, row in rows.items():
        extra = (
            f"  active units {row['active_units']}/{row['z_dim']}" if "active_units" in row else ""
        )
        print(f"{name:28} {row['bits_per_dim']:.3f}{extra}")
    print(
        json.dumps(
            {
                "benchmark": "likelihoods",
                "data": "digits 1500/297 seed 0",
                "epochs": epochs,
                "num_samples": k,
                "rows": {
                    n: {m: round(v, 4) if isinstance(v, float) else v for m, v in r.items()}
                    for n, r in rows.items()
                },
            }
        )
    )


if __name__ == "__main__":
    main()
