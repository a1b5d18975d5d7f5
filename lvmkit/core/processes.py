"""Data parallelism over processes with ``torch.distributed``, as ``torchrun`` starts them.

Every lvmkit entry point calls ``group()``: under torchrun (``RANK``/``WORLD_SIZE`` in the
environment) it joins the process group on first use (gloo on CPU, NCCL on GPUs), or uses one
the user initialised; alone it reports a world of one and every helper here is the identity.
Each process works on its own shard of the data; what they must agree on travels in few
collective calls (one per training step)."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class Group:
    """This process's place among the processes of a fit: ``rank`` of ``size``."""

    rank: int = 0
    size: int = 1

    @property
    def active(self) -> bool:
        """Whether there are other processes to agree with."""
        return self.size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes checkpoints, files and progress."""
        return self.rank == 0


def group(device: torch.device | None = None) -> Group:
    """The process group this process belongs to, joined from torchrun's environment on
    first use; a world of one when there is none."""
    if dist.is_available() and dist.is_initialized():
        return Group(dist.get_rank(), dist.get_world_size())
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or not dist.is_available():
        return Group()
    cuda = device is not None and device.type == "cuda"
    if cuda:  # NCCL's collectives (and object gathers) run on the current device
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    atexit.register(_leave)  # a group left open aborts some processes as they exit
    return Group(dist.get_rank(), dist.get_world_size())


def _leave() -> None:
    """Leave the group lvmkit joined (no barrier: a process that failed must not hang)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def process_device(device):
    """The device setting for this process: under torchrun "auto" and "cuda" mean its own GPU
    (``cuda:LOCAL_RANK``), if there is one; anything else as given."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and device in ("auto", "cuda"):
        if device == "auto" or torch.cuda.is_available():
            return local_device()
    return device


def rank() -> int:
    """This process's rank: the group's once joined, else torchrun's RANK (0 alone)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def launched() -> bool:
    """Whether this process is one of several started by torchrun (or ``launch_local``)."""
    return "WORLD_SIZE" in os.environ


def local_device() -> str:
    """``cuda:LOCAL_RANK`` under torchrun on a machine with GPUs, else "cpu"."""
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    return "cpu"


def all_reduce_sum(tensors: list[Tensor], g: Group) -> None:
    """Sum ``tensors`` (in place) over the processes in one collective call: they travel in
    one flat buffer, so a step costs one all-reduce whatever the number of parameters."""
    if not g.active or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def broadcast(tensors: list[Tensor], g: Group) -> None:
    """Rank 0's values of ``tensors`` on every process (in place), in one call."""
    if not g.active or not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    dist.broadcast(flat, src=0)
    offset = 0
    with torch.no_grad():
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def gather_rows(local: Tensor, g: Group) -> Tensor:
    """Every process's rows, in rank order, on every process (shards may differ in length)."""
    if not g.active:
        return local
    lengths = [None] * g.size
    dist.all_gather_object(lengths, len(local))
    most = max(lengths)
    padded = local.new_zeros((most, *local.shape[1:]))
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(g.size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, lengths, strict=True)])


def shard(n: int, g: Group) -> slice:
    """This process's contiguous share of n rows (the first n % size get one more)."""
    base, extra = divmod(n, g.size)
    start = g.rank * base + min(g.rank, extra)
    return slice(start, start + base + (g.rank < extra))


def share_object(value, g: Group):
    """Rank 0's ``value`` (any picklable object) on every process."""
    if not g.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value, g: Group) -> list:
    """Every process's ``value``, in rank order, on every process."""
    if not g.active:
        return [value]
    values = [None] * g.size
    dist.all_gather_object(values, value)
    return values


def barrier(g: Group) -> None:
    """Wait until every process gets here (nothing alone)."""
    if g.active:
        dist.barrier()


def vote(flag: bool, g: Group) -> bool:
    """Whether ``flag`` is True on any process."""
    return any(gather_objects(bool(flag), g))


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def auto_threads(processes: int | None = None) -> int:
    """Torch threads for one of ``processes`` processes on this machine (default: torchrun's
    LOCAL_WORLD_SIZE, else 1): the cores that other programs do not keep busy now, shared
    among them, at least 1. Torch's own default, every core per process, slows a fit many-fold
    when other work holds the cores (benchmarks/threads.py)."""
    processes = processes or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    busy = max(0.0, _others_running() - (processes - 1))  # our sibling workers are not others
    return max(1, int((usable_cores() - busy) // processes))


def _others_running() -> float:
    """Threads of other processes running now: Linux's count of running tasks less this
    process's own (its thread pool's workers spin for a while after each operation), the
    median of three reads a millisecond apart; 0 where /proc cannot be read. Not the load
    average: it counts this process's own last minute of work as a neighbour."""
    counts = []
    for _ in range(3):
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
            mine = 0
            for task in os.listdir("/proc/self/task"):
                with contextlib.suppress(OSError):  # a thread that ended meanwhile
                    with open(f"/proc/self/task/{task}/stat") as f:
                        mine += f.read().rsplit(")", 1)[1].split()[0] == "R"
        except (OSError, ValueError, IndexError):
            return 0.0
        counts.append(max(0, running - mine))
        time.sleep(0.001)
    return float(sorted(counts)[1])


@contextlib.contextmanager
def threads_during(threads: int | str | None):
    """``set_threads(threads)`` for the block, then torch's thread count as it was."""
    before = torch.get_num_threads()
    set_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def set_threads(threads: int | str | None) -> None:
    """torch.set_num_threads for this process: a count, "auto" (``auto_threads``), or None to
    leave torch's setting as it is."""
    if threads is None:
        return
    if threads == "auto":
        threads = auto_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int or 'auto', got {threads!r}")
    if threads > usable_cores():
        warnings.warn(
            f"threads {threads} is more than this machine's {usable_cores()} cores: the threads "
            "take turns and the fit slows many-fold; use 'auto'",
            stacklevel=3,
        )
    torch.set_num_threads(threads)


class StopOnSignal:
    """Turn SIGINT/SIGTERM into a flag (``signum``) the loop checks between steps; a second
    signal aborts at once."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _stop_with_parent() -> None:
    """In a worker before it starts (Linux): SIGTERM when the launcher dies, even by kill -9,
    so no worker trains on alone holding the run's lock (it checkpoints and stops)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the launcher's own signal handling remains
        pass


def launch_local(nproc: int, argv: list[str]) -> int:
    """Run the ``lvmkit`` command ``argv`` as ``nproc`` data-parallel processes on this machine,
    with the environment torchrun gives its workers (RANK, WORLD_SIZE, MASTER_ADDR, ...). Started
    here rather than through torchrun so that a signal reaches each worker exactly once (each
    writes its part and stops cleanly) and the exit code is the workers' own (130 when
    interrupted); if one fails, the others are stopped rather than left waiting for it."""
    cores = usable_cores()
    if nproc > cores:
        raise ValueError(
            f"--nproc {nproc} is more processes than this machine's {cores} cores (each takes "
            f"a core and a few hundred MB of memory): use --nproc {cores} or fewer, or torchrun "
            "over several machines"
        )
    rest, skip = [], False
    for a in argv:  # the command without --nproc, which the workers must not act on again
        if skip or a == "--nproc" or a.startswith("--nproc="):
            skip = a == "--nproc" and not skip
            continue
        rest.append(a)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workers = []
    for rank in range(nproc):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}  # fmt: skip
        cmd = [sys.executable, "-m", "lvmkit.cli", *rest]
        workers.append(subprocess.Popen(cmd, env=env, start_new_session=True,
                                        preexec_fn=_stop_with_parent))  # fmt: skip

    def forward(signum, frame):
        for w in workers:
            if w.poll() is None:
                w.send_signal(signum)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    first_failure = None  # the code of the worker that failed first, not of those stopped after
    try:
        while any(w.poll() is None for w in workers):
            failed = [w.returncode for w in workers if w.poll() not in (None, 0, 130)]
            if failed and first_failure is None:  # the others would wait for it: stop them
                first_failure = failed[0]
                for w in workers:
                    if w.poll() is None:
                        w.kill()
            time.sleep(0.2)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    codes = [w.returncode for w in workers]
    if first_failure is not None:
        return first_failure
    return next((c for c in codes if c not in (0, 130)), codes[0])


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else must name a usable device.

    Parameters
    ----------
    device : str or torch.device

    Returns
    -------
    torch.device
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    usage = "use 'auto', 'cpu' or 'cuda[:N]'"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}; {usage}") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available; use 'auto' or 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} but this machine has {torch.cuda.device_count()} CUDA "
                f"device(s), cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    elif dev.type != "cpu":  # mps, meta, xla...: models and estimators are tested on CPU/CUDA
        raise ValueError(f"device {device!r} is not supported; {usage}")
    return dev
