"""Bits per dimension on a test split for the image likelihoods of lvmkit.

``--data digits`` (default): a seeded 1500 / 297 split of the 17-level 8x8 digits.
``--data mnist5k``: real 28x28 MNIST digits, 256 levels, their 4000 / 1000 split.
Every model trains for the same number of epochs (batch 64, Adam), then the test log-likelihood
is measured: exactly for the independent per-pixel categorical and the autoregressive models,
by importance sampling (K samples from the encoder) for the latent variable models. Lower is
better. Each row reports its training seconds per epoch. The PixelCNN-decoder LVM also reports
its active units (Burda et al.: Cov_x(E_q[z_u]) > 0.01) to show its code did not collapse, and
how well its two completions of the bottom half given the top half predict the true bottom half:
bits per hidden pixel of log p(x_hidden | x_known) on 200 test images, estimated with 8 draws
of z from each method (pseudo-Gibbs through the encoder; importance-weighted z, K = 64), lower
is better.

    python benchmarks/likelihoods.py [--smoke] [--epochs 30] [--data digits|mnist5k]

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


@torch.no_grad()
def hidden_bits(model, x, known, method: str, draws: int = 8, num_samples: int = 64) -> float:
    """-log2 p(x_hidden | x_known) per hidden pixel, averaging p(x_hidden | x_known, z) over
    ``draws`` z's from the completion method."""
    zs = torch.stack(
        [model.completion_z(x, known, method=method, num_samples=num_samples) for _ in range(draws)]
    )  # (S, B, Z)
    every = torch.ones_like(known)
    log_hidden = model.known_log_prob(x, every, zs) - model.known_log_prob(x, known, zs)
    ll = log_hidden.logsumexp(0) - math.log(draws)  # (B,)
    return float(-ll.mean() / ((~known[0]).sum() * math.log(2)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--data", default="digits", choices=["digits", "mnist5k"])
    args = parser.parse_args()
    epochs, k = (1, 10) if args.smoke else (args.epochs, args.num_samples)
    digits = lvmkit.data.load(args.data)
    if args.data == "digits":
        train, test = lvmkit.data.split(digits, (1500, 297), seed=0)
    else:
        train, test = digits.part("train"), digits.part("test")
    if args.smoke:
        train, test = train[:300], test[:40]
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
        # small batches: an autoregressive decoder scores K x batch images per pass
        ll = lvmkit.evaluate(
            model, test, num_samples=k, batch_size=16 if args.data != "digits" else 128
        )
        rows[name] = {
            "bits_per_dim": ll.bits_per_dim,
            "stderr_bits": ll.stderr / (digits.x[0].numel() * math.log(2)),
            "s_per_epoch": seconds / epochs,
            "exact": ll.exact,
        }
        if key == "pixellvm":
            rows[name]["active_units"] = active_units(model, test)[0]
            rows[name]["z_dim"] = model.config.z_dim
            model.eval()
            x_test = model.prepare(test[:200]).x  # 200 test images: K = 64 decoder passes each
            known = model.top_half_known(x_test)
            torch.manual_seed(0)
            for method in ("gibbs", "importance"):
                rows[name][f"hidden_bits_{method}"] = hidden_bits(model, x_test, known, method)
    print(f"{'model':28} bits/dim  s/epoch")
    for name, row in rows.items():
        extra = (
            f"  active units {row['active_units']}/{row['z_dim']}; bottom half given the top: "
            f"{row['hidden_bits_gibbs']:.3f} bits/pixel pseudo-Gibbs, "
            f"{row['hidden_bits_importance']:.3f} importance-weighted"
            if "active_units" in row
            else ""
        )
        per_epoch = f"{row['s_per_epoch']:8.1f}" if "s_per_epoch" in row else " " * 8
        print(f"{name:28} {row['bits_per_dim']:.3f}  {per_epoch}{extra}")
    print(
        json.dumps(
            {
                "benchmark": "likelihoods",
                "data": "digits 1500/297 seed 0" if args.data == "digits" else "mnist5k 4000/1000",
                "threads": torch.get_num_threads(),
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
