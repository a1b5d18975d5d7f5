"""Data-parallel scaling: images per second of an SVI epoch and points per second of a mixture
EM iteration, on 1 and on 2 processes (torchrun, gloo on CPU or NCCL on GPUs), one torch thread
per process on CPU.

SVI: the Gaussian-decoder LVM (784-256-256-16, Gaussian likelihood) on 28x28 mnist5k, global
batch 128; one warm-up epoch, then the median of ``--rounds`` epochs. EM: a diagonal mixture
(K = 10) on 10^6 points in 10 dims, float32; the median of ``--rounds`` iterations. The process
counts alternate over rounds of launches. ``efficiency`` is (rate on 2) / (2 x rate on 1).

    python benchmarks/scaling.py [--smoke] [--rounds 3]

Prints one JSON line per workload.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def worker(kind: str, rounds: int, smoke: bool) -> None:
    """Runs under torchrun: times the workload; rank 0 prints its rate."""
    import torch

    import lvmkit
    from lvmkit.core.processes import group

    torch.set_num_threads(1)
    if kind == "svi":
        data = lvmkit.data.load("mnist5k").part("train")
        data = data[:512] if smoke else data
        torch.manual_seed(0)
        model = lvmkit.models.build_model(
            "lvm", data.image_shape, data.levels, {"z_dim": 16, "hidden": (256, 256)}
        )
        x = model.prepare(data)
        times = []
        for r in range(rounds + 1):  # the first epoch warms up
            t0 = time.perf_counter()
            lvmkit.fit(model.model, model.guide, x, epochs=1, batch_size=128, progress=False,
                       device="cpu", seed=r)  # fmt: skip
            times.append(time.perf_counter() - t0)
        rate = len(x) / statistics.median(times[1:])
    else:
        from lvmkit.inference import MixtureEM
        from lvmkit.models import GaussianMixture, GaussianMixtureConfig

        n = 20000 if smoke else 10**6
        g = torch.Generator().manual_seed(0)
        x = (
            torch.randn(n, 10, generator=g)
            + 5 * torch.randn(10, 10, generator=g)[torch.randint(10, (n,), generator=g)]
        )
        gmm = GaussianMixture(GaussianMixtureConfig(dim=10, components=10, covariance="diag"))

        def fit_em(**start):  # one closed-form EM iteration in the loop
            lvmkit.run(MixtureEM(gmm, device=x.device, tol=0.0, **start), x, epochs=1,
                       progress=False)  # fmt: skip

        fit_em()  # warm-up, and the start
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            fit_em(init=None)
            times.append(time.perf_counter() - t0)
        rate = n / statistics.median(times)
    if group().main:
        print(json.dumps({"rate": rate}), flush=True)


def launch(kind: str, procs: int, rounds: int, smoke: bool) -> float:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={procs}", __file__, "--worker", kind,
           "--rounds", str(rounds)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        cmd + (["--smoke"] if smoke else []), capture_output=True, text=True, env=env
    )
    if done.returncode:  # the workers' own words first: torchrun's summary hides them
        lines = [ln for ln in done.stderr.splitlines() if "torch/distributed" not in ln]
        sys.exit(f"{procs} {kind} worker(s) failed ({done.returncode}):\n" + "\n".join(lines[-40:]))
    return json.loads(done.stdout.strip().splitlines()[-1])["rate"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", choices=["svi", "em"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    rounds = 1 if args.smoke else args.rounds
    if args.worker:
        return worker(args.worker, rounds, args.smoke)
    launches = 1 if args.smoke else 2
    for kind, unit in (("svi", "images_per_s"), ("em", "points_per_s")):
        rates = {1: [], 2: []}
        for r in range(launches):
            for procs in (1, 2) if r % 2 == 0 else (2, 1):
                rates[procs].append(launch(kind, procs, rounds, args.smoke))
        one, two = (statistics.median(rates[p]) for p in (1, 2))
        print(
            json.dumps(
                {
                    "benchmark": "scaling",
                    "workload": "SVI epoch, GaussianLVM on mnist5k"
                    if kind == "svi"
                    else "EM iteration, diag GMM K=10, 10^6 x 10",
                    "cpu_cores": len(os.sched_getaffinity(0)),
                    "threads_per_process": 1,
                    f"1_process_{unit}": round(one, 1),
                    f"2_processes_{unit}": round(two, 1),
                    "efficiency": round(two / (2 * one), 3),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
