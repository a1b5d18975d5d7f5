"""EM for a Gaussian mixture: scikit-learn vs lvmkit, per iteration, from the same start.

make_blobs(n_samples=200000, n_features=10, centers=10, random_state=0), K = 10, full and diag
covariance. Both get the same initial weights, means (10 data points) and covariances, and run
the same number of iterations (tol = 0), so their log-likelihoods must agree. Contenders are
interleaved over rounds; medians are reported. A last run streams N = 10^7 points (diag) through
lvmkit's chunked EM in a child process and reports its peak memory. A digits row fits the
bundled 8x8 digits (1500 train, 297 test) from scikit-learn's own k-means start, both in
float64 with scikit-learn's default tol, and compares test log-likelihoods and ms/iteration.

    python benchmarks/gmm_em.py [--smoke] [--device auto]

Prints one JSON line per covariance type, one per digits fit, then one for the memory run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import subprocess
import sys
import time
import warnings
from functools import partial

import numpy as np
import torch
from sklearn.datasets import make_blobs
from sklearn.mixture import GaussianMixture as SklearnGMM

from lvmkit.core.processes import auto_threads
from lvmkit.inference import GaussianMixtureEM, resolve_device


def settle() -> None:
    """A pause before each timed fit: the other contender's thread pool (OpenBLAS's, torch's)
    keeps spinning a while after its last operation and would steal the cores from this one."""
    time.sleep(0.3)


def spin() -> None:
    while True:
        pass


def peak_memory_run(n: int, device: str) -> None:
    """Child process: EM on n points (diag, float32); prints peak RSS in MiB."""
    g = torch.Generator().manual_seed(0)
    centers = 10 * torch.randn(10, 10, generator=g)
    x = torch.randn(n, 10, generator=g)
    for start in range(0, n, 65536):  # in place, so no N-sized temporaries raise the peak
        rows = x[start : start + 65536]
        rows += centers[torch.randint(10, (len(rows),), generator=g)]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    em = GaussianMixtureEM(
        10,
        covariance_type="diag",
        max_iter=3,
        tol=0.0,
        dtype="float32",
        device=device,
        means_init=x[:10].numpy(),
    )
    em.fit(x)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "data_mib": round(x.numel() * 4 / 2**20),
                "rss_before_fit_mib": round(base),
                "peak_rss_mib": round(peak),
                "em_extra_mib": round(peak - base),  # what EM itself adds on top of the data
                "s_per_iter": round((time.perf_counter() - t0) / 3, 3),
            }
        )
    )


def digits_rows(rounds: int, device: str) -> None:
    """The digits from scikit-learn's k-means start: same iterations, same test fit, speed."""
    from sklearn.cluster import KMeans
    from sklearn.datasets import load_digits

    x = load_digits().data
    perm = np.random.default_rng(0).permutation(len(x))
    train, test = x[perm[:1500]], x[perm[1500:]]
    resp = np.eye(10)[KMeans(10, n_init=1, random_state=0).fit(train).labels_]
    nk = resp.sum(0)
    means = resp.T @ train / nk[:, None]
    for cov, reg in (("diag", 1e-6), ("full", 1e-3)):
        if cov == "diag":
            prec = 1 / (resp.T @ train**2 / nk[:, None] - means**2 + reg)
        else:
            c = [((train - m).T * r) @ (train - m) / n + reg * np.eye(64)
                 for m, r, n in zip(means, resp.T, nk, strict=True)]  # fmt: skip
            prec = np.linalg.inv(np.stack(c))
        kw = dict(covariance_type=cov, reg_covar=reg, weights_init=nk / len(train),
                  means_init=means, precisions_init=prec)  # fmt: skip
        contenders = {
            "sklearn": partial(SklearnGMM, 10, **kw),
            "lvmkit": partial(GaussianMixtureEM, 10, dtype="float64", device=device, **kw),
        }
        times, fits = {k: [] for k in contenders}, {}
        for r in range(rounds):
            for name in list(contenders) if r % 2 == 0 else list(contenders)[::-1]:
                settle()
                t0 = time.perf_counter()
                fits[name] = contenders[name]().fit(train)
                times[name].append((time.perf_counter() - t0) / fits[name].n_iter_ * 1e3)
        ms = {k: statistics.median(v) for k, v in times.items()}
        a, b = fits["sklearn"].score(test), fits["lvmkit"].score(test)
        print(json.dumps({
            "benchmark": "gmm_em_digits", "covariance": cov, "device": device,
            "iters": [fits["sklearn"].n_iter_, fits["lvmkit"].n_iter_],
            "sklearn_test_loglik": round(a, 6), "lvmkit_test_loglik": round(b, 6),
            "loglik_unit": "nats per test digit (64 dims), mean",
            "relative_difference": abs(a - b) / abs(a),
            "sklearn_ms_per_iter": round(ms["sklearn"], 3),
            "lvmkit_ms_per_iter": round(ms["lvmkit"], 3),
            "speedup": round(ms["sklearn"] / ms["lvmkit"], 2),
            "lvmkit_threads": f"auto ({auto_threads()} now)",
        }), flush=True)  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--busy", action="store_true", help="with one other busy process")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.busy and not args.memory_child:  # a neighbour on one core, as on a shared machine
        neighbour = multiprocessing.Process(target=spin, daemon=True)
        neighbour.start()
        time.sleep(1)
    warnings.simplefilter("ignore")  # tol = 0 runs a fixed number of iterations on purpose
    device = str(resolve_device(args.device))
    if args.memory_child:
        return peak_memory_run(args.memory_child, device)
    n, rounds, iters, big = (
        (20000, 1, 3, 200000) if args.smoke else (200000, args.rounds, args.iters, 10**7)
    )
    x, _ = make_blobs(n_samples=n, n_features=10, centers=10, random_state=0)
    means0 = x[np.random.default_rng(0).choice(n, 10, replace=False)]
    for cov in ("full", "diag"):
        cov0 = np.stack([np.eye(10)] * 10) if cov == "full" else np.ones((10, 10))
        prec0 = np.linalg.inv(cov0) if cov == "full" else 1 / cov0
        common = dict(
            covariance_type=cov,
            means_init=means0,
            weights_init=np.full(10, 0.1),
            tol=0.0,
            max_iter=iters,
        )
        contenders = {
            "sklearn": partial(
                SklearnGMM, 10, precisions_init=prec0, init_params="random_from_data", **common
            ),
            "lvmkit": partial(
                GaussianMixtureEM, 10, precisions_init=prec0, device=device, **common
            ),
        }
        times, logliks = {k: [] for k in contenders}, {}
        for r in range(rounds):
            for name in list(contenders) if r % 2 == 0 else list(contenders)[::-1]:
                est = contenders[name]()
                settle()
                t0 = time.perf_counter()
                est.fit(x)
                times[name].append((time.perf_counter() - t0) / iters * 1e3)
                logliks[name] = float(est.score(x))
        ms = {k: statistics.median(v) for k, v in times.items()}
        print(
            json.dumps(
                {
                    "benchmark": "gmm_em",
                    "load": "one core busy" if args.busy else "idle",
                    "covariance": cov,
                    "device": device,
                    "n": n,
                    "iters": iters,
                    "sklearn_ms_per_iter": round(ms["sklearn"], 2),
                    "lvmkit_ms_per_iter": round(ms["lvmkit"], 2),
                    "speedup": round(ms["sklearn"] / ms["lvmkit"], 2),
                    "sklearn_loglik": round(logliks["sklearn"], 9),
                    "lvmkit_loglik": round(logliks["lvmkit"], 9),
                    "loglik_unit": "nats per point, mean over the 200k fitted points",
                    "relative_difference": abs(logliks["sklearn"] - logliks["lvmkit"])
                    / abs(logliks["sklearn"]),
                    "lvmkit_dtype": "auto",  # the default: float64, per-point work in float32
                    "lvmkit_threads": f"auto ({auto_threads()} now)",
                }
            ),
            flush=True,
        )
    digits_rows(5 * rounds, device)  # its fits take ~50 ms: more rounds for a steady median
    child = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(big), "--device", device],
        capture_output=True,
        text=True,
        check=True,
    )
    print(
        json.dumps(
            {
                "benchmark": "gmm_em_memory",
                "covariance": "diag",
                "n": big,
                "device": device,
                **json.loads(child.stdout),
            }
        )
    )


if __name__ == "__main__":
    main()
