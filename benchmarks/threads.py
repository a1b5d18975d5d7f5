"""Torch threads per process, measured: the seconds of a small fit (the demo's model, the
Gaussian-decoder LVM on the bundled digits, 3 epochs) with 1 thread, with every core (torch's
default) and with lvmkit's "auto" (the cores not busy), on an idle machine and while another
process keeps one core busy. This is what the CLI's default (``--threads auto``) rests on.

Each setting runs in its own process; settings alternate over rounds; medians are reported.

    python benchmarks/threads.py [--smoke] [--rounds 3]

Prints one JSON line per load.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time


def spin() -> None:
    while True:
        pass


def one_fit(threads: str, epochs: int, n: int) -> float:
    code = (
        "import time, torch, lvmkit\n"
        "from lvmkit.core.processes import set_threads\n"
        f"set_threads({threads!r} if {threads!r} == 'auto' else int({threads!r}))\n"
        f"d = lvmkit.data.load('digits')[:{n}]\n"
        "m = lvmkit.models.build_model('lvm', d.image_shape, d.levels)\n"
        "x = m.prepare(d)\n"
        "t0 = time.perf_counter()\n"
        f"lvmkit.fit(m.model, m.guide, x, epochs={epochs}, progress=False, device='cpu')\n"
        "print(time.perf_counter() - t0, torch.get_num_threads())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout.split()
    return float(out[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rounds, epochs, n = (1, 1, 256) if args.smoke else (args.rounds, 3, 1797)
    cores = len(os.sched_getaffinity(0))
    # smoke: the all-cores setting is left out, slow by design on a busy machine
    settings = ["1", "auto"] if args.smoke else ["1", str(cores), "auto"]
    for load in ("idle", "one core busy"):
        spinner = None
        if load != "idle":
            spinner = multiprocessing.Process(target=spin, daemon=True)
            spinner.start()
            time.sleep(2)
        seconds = {s: [] for s in settings}
        for r in range(rounds):
            for s in settings if r % 2 == 0 else settings[::-1]:
                seconds[s].append(one_fit(s, epochs, n))
        if spinner is not None:
            spinner.terminate()
            spinner.join()
        med = {s: statistics.median(v) for s, v in seconds.items()}
        row = {
            "benchmark": "threads",
            "load": load,
            "cores": cores,
            "fit": f"GaussianLVM on {n} digits, {epochs} epochs",
            "seconds_1_thread": round(med["1"], 2),
            "seconds_auto": round(med["auto"], 2),
        }
        if str(cores) in med:
            row[f"seconds_{cores}_threads"] = round(med[str(cores)], 2)
            row[f"{cores}_threads_over_1"] = round(med[str(cores)] / med["1"], 2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
