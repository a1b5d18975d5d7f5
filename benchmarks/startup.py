"""Start-up time: ``lvmkit --help`` against ``python -c "import torch"``, and ``import lvmkit``
(and the library's inference layer loaded, ``lvmkit.fit``) against ``import pyro``, each in a
fresh interpreter, interleaved over rounds; medians and their ratios.

Targets: ``lvmkit --help`` under half of ``import torch`` (the command answers without
loading torch), ``import lvmkit`` at most 1.3x ``import pyro``.

    python benchmarks/startup.py [--smoke] [--rounds 9]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

CONTENDERS = {
    "lvmkit_help": [sys.executable, "-m", "lvmkit.cli", "--help"],
    "import_torch": [sys.executable, "-c", "import torch"],
    "import_lvmkit": [sys.executable, "-c", "import lvmkit"],
    "import_pyro": [sys.executable, "-c", "import pyro"],
    "lvmkit_fit_loaded": [sys.executable, "-c", "import lvmkit; lvmkit.fit"],
}


def seconds(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="1 round, no warm-up")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    rounds = 1 if args.smoke else args.rounds
    for cmd in () if args.smoke else CONTENDERS.values():  # warm the file cache once
        seconds(cmd)
    times = {name: [] for name in CONTENDERS}
    for _ in range(rounds):  # interleaved: the machine's noise falls on every contender alike
        for name, cmd in CONTENDERS.items():
            times[name].append(seconds(cmd))
    median = {name: statistics.median(t) for name, t in times.items()}
    print(json.dumps({
        "benchmark": "startup",
        "rounds": rounds,
        "median_s": {name: round(t, 3) for name, t in median.items()},
        "help_over_import_torch": round(median["lvmkit_help"] / median["import_torch"], 3),
        "import_lvmkit_over_import_pyro": round(
            median["import_lvmkit"] / median["import_pyro"], 3),
        "fit_loaded_over_import_pyro": round(
            median["lvmkit_fit_loaded"] / median["import_pyro"], 3),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
