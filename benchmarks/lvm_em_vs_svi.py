"""GaussianLVM on digits fitted two ways, judged by the importance-sampled test log-likelihood:
amortized SVI (ELBO) vs EM with an importance-sampled E-step (the prior as proposal).

Same model (z_dim 2, MLP decoder, Gaussian likelihood on [0, 1] pixels), same seeded split, the
same number of gradient steps (5 per batch for every pass over the training data). log p(x) is
estimated with K importance samples from the model's encoder for the SVI fit, and from the prior
for the EM fit (which trains no encoder); the standard errors are over test images.

    python benchmarks/lvm_em_vs_svi.py [--smoke]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import lvmkit
from lvmkit.models import GaussianLVM, GaussianLVMConfig


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    passes, k_eval = (2, 50) if args.smoke else (30, 2000)
    digits = lvmkit.data.load("digits")
    train, _, test = lvmkit.data.split(digits, (0.8, 0.1, 0.1), seed=0)
    config = GaussianLVMConfig(z_dim=2)
    rows = {}

    torch.manual_seed(0)
    svi = GaussianLVM(config)
    x, xt = svi.prepare(train).x, svi.prepare(test).x
    t0 = time.perf_counter()
    lvmkit.fit(svi.model, svi.guide, x, epochs=passes * 5, batch_size=256, lr=1e-3, progress=False)
    ll = lvmkit.log_likelihood(svi.model, svi.guide, xt, num_samples=k_eval)
    rows["svi"] = {"test_loglik": ll.mean, "stderr": ll.stderr, "s": time.perf_counter() - t0}

    torch.manual_seed(0)
    em = GaussianLVM(config)
    t0 = time.perf_counter()
    lvmkit.em(
        em.model,
        x,
        e_step="importance",
        num_samples=64,
        max_iter=passes,
        m_steps=5,
        lr=1e-3,
        batch_size=256,
    )

    def prior_guide(x):  # EM learns no encoder: propose from the prior
        import pyro

        with pyro.plate("data", len(x)):
            pyro.sample("z", em.prior())

    ll = lvmkit.log_likelihood(em.model, prior_guide, xt, num_samples=k_eval)
    rows["em_importance"] = {
        "test_loglik": ll.mean,
        "stderr": ll.stderr,
        "s": time.perf_counter() - t0,
    }
    print(
        json.dumps(
            {
                "benchmark": "lvm_em_vs_svi",
                "data": "digits",
                "z_dim": 2,
                "passes": passes,
                "num_samples_eval": k_eval,
                **{k: {m: round(v, 3) for m, v in r.items()} for k, r in rows.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
