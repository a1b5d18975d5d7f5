import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pyro
import pytest
import torch

# Small models: one thread each is fastest, and never oversubscribes cores that other work
# (a second test process, a CI neighbour) shares; see benchmarks/threads.py. The environment
# variable carries the same to every process a test starts (CLI runs, benchmarks, notebook
# kernels): with torch's default of one thread per core, a busy 2-core machine ran the suite
# three times slower and a benchmark's smoke run past its timeout.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _clean_global_param_store():
    """Tests check that lvmkit never touches the global store, so each starts from an empty one."""
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def run_two_at_a_time(commands: dict, **options) -> dict:
    """Start the subprocess ``commands`` ({name: argv}) now, as many at once as the machine
    has cores (two here), each with one thread: the tests of a module whose work is in
    subprocesses (benchmarks, notebooks) then wait for their own instead of running in turn.
    Returns {name: future of its CompletedProcess}."""
    pool = ThreadPoolExecutor(max_workers=max(1, min(2, len(os.sched_getaffinity(0)))))
    run = lambda argv: subprocess.run(argv, capture_output=True, text=True, **options)  # noqa: E731
    futures = {name: pool.submit(run, argv) for name, argv in commands.items()}
    pool.shutdown(wait=False)
    return futures
