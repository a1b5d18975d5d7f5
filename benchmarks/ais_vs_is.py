"""AIS against importance sampling on a fitted 28x28 model: log p(x) and seconds side by side.

The Gaussian-decoder LVM (784-256-256-16 MLPs) is fitted by the ELBO on the 4000 training
digits of mnist5k (dequantized 8-bit pixels), then the first test digits are scored by
importance sampling with the model's encoder as proposal (K = 1, 10, 100, 1000, 5000) and by
AIS from the same encoder (16 chains; steps 10, 100, 300), every estimate in one process, one
thread, one after the other. Each row: mean log p(x) (nats per image, a bound on the discrete
likelihood), bits/dim, both standard errors, seconds. Higher log p(x) is tighter: both are
stochastic lower bounds. ``--smoke``: the bundled 8x8 digits, a few epochs, small K.

    python benchmarks/ais_vs_is.py [--smoke] [--images 200] [--epochs 20]

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json

import torch

import lvmkit
from lvmkit.models import GaussianLVM, GaussianLVMConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    parser.add_argument("--images", type=int, default=200, help="test images scored")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.smoke:
        data = lvmkit.data.load("digits")
        train, test = data[:300], data[1500:1520]
        shape, epochs, ks, steps = (1, 8, 8), 2, (1, 10, 100), (5, 20)
    else:
        data = lvmkit.data.load("mnist5k")
        train, test = data.part("train"), data.part("test")[: args.images]
        shape, epochs, ks, steps = (
            (1, 28, 28),
            args.epochs,
            (1, 10, 100, 1000, 5000),
            (10, 100, 300),
        )
    lvm = GaussianLVM(GaussianLVMConfig(image_shape=shape, z_dim=16, hidden=(256, 256)))
    fit = lvmkit.fit(lvm.model, lvm.guide, lvm.prepare(train), epochs=epochs, batch_size=100,
                     lr=1e-3, progress=False, device="cpu")  # fmt: skip
    lvm.eval()
    scored = lvm.prepare(test)
    rows = []
    for k in ks:
        rows.append(lvmkit.log_likelihood(lvm.model, lvm.guide, scored, num_samples=k))
    for s in steps:
        rows.append(lvmkit.ais(lvm.model, scored, guide=lvm.guide, num_samples=16, steps=s))
    table = {}
    print(f"{'estimate':24} {'log p(x)':>10} {'bits/dim':>9} {'stderr':>7} {'MC err':>7} {'s':>8}")
    for r in rows:
        name = (
            f"IS K={r.num_samples}"
            if r.method == "importance"
            else (f"AIS {r.num_samples} chains x {r.steps}")
        )
        table[name] = r.row()
        print(f"{name:24} {r.mean:10.2f} {r.bits_per_dim:9.4f} {r.stderr:7.2f} "
              f"{r.mc_stderr:7.3f} {r.seconds:8.1f}")  # fmt: skip
    best_is = max((r for r in rows if r.method == "importance"), key=lambda r: r.num_samples)
    best_ais = rows[-1]
    summary = {
        "benchmark": "ais_vs_is",
        "data": "digits" if args.smoke else "mnist5k",
        "images": len(test),
        "fit_seconds": fit.elapsed,
        "rows": table,
        "ais_minus_is_nats": best_ais.mean - best_is.mean,
        "ais_over_is_seconds": best_ais.seconds / best_is.seconds,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
