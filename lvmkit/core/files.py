"""Checkpoints and other files a run writes: atomic (a temporary file of the writer's own, then
a rename), checksummed, read with ``weights_only=True`` so loading never runs code; and a lock
that keeps two processes out of one run directory."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import uuid
from pathlib import Path

import torch

FORMAT = "lvmkit-checkpoint"
VERSION = 1
LOCK_NAME = ".lvmkit.lock"


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, foreign, or does not fit the model being trained."""


def _digest(value, h) -> None:
    """Feed a nested structure of containers, tensors and plain values into the hash ``h``."""
    if isinstance(value, dict):
        for key in sorted(value, key=repr):
            h.update(repr(key).encode())
            _digest(value[key], h)
    elif isinstance(value, (list, tuple)):
        h.update(f"{type(value).__name__}{len(value)}".encode())
        for item in value:
            _digest(item, h)
    elif isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    else:
        h.update(repr(value).encode())


def checksum(value) -> str:
    """SHA-256 of nested containers of tensors (by their bytes) and plain values."""
    h = hashlib.sha256()
    _digest(value, h)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``, unique to this writer; on success it replaces
    ``path`` in one step, on failure it is removed: ``path`` is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_writable(*paths: str | Path) -> None:
    """OSError now, before any long computation, if the files ``paths`` could not be written
    later: a folder in the way of a file, or a folder that takes no new file."""
    for folder in {Path(p).parent for p in paths}:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):  # made and gone, named by the system
                pass
        except OSError as err:
            raise OSError(
                f"cannot write into {folder} ({err.strerror or err}); choose a folder you can "
                "write to"
            ) from None
    for p in map(Path, paths):
        if p.is_dir():
            raise OSError(f"cannot write {p}: a folder of that name is in the way; move it")


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically (summary.json, evaluation.json, config.toml, ...)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically, with a checksum of its contents that
    ``load_checkpoint`` verifies. Refuses non-finite tensors: a checkpoint is a good state.

    Parameters
    ----------
    state : dict
        Tensors and plain values.
    path : str or Path

    Returns
    -------
    Path
    """
    bad = _non_finite(state)
    if bad is not None:
        raise CheckpointError(
            f"not writing {path}: {bad} holds NaN/inf values; the last good checkpoint "
            "stays as it was"
        )
    full = {"format": FORMAT, "version": VERSION, **state}
    full["sha256"] = checksum(full)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(full, f)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def _non_finite(state: dict) -> str | None:
    """The name of the first floating-point tensor in ``state`` holding NaN/inf, else None."""
    for name, value in _tensors(state):
        if value.is_floating_point() and not torch.isfinite(value).all():
            return name
    return None


def _tensors(value, name: str = "state"):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors(item, f"{name}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{name}[{i}]")
    elif isinstance(value, torch.Tensor):
        yield name, value


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; CheckpointError if it is not one,
    if its contents do not match their checksum, or if it holds NaN/inf values.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    dict
    """
    path = Path(path)
    if path.exists() and not path.is_file():  # a folder, a device such as /dev/zero, a pipe
        raise CheckpointError(
            f"{path} is not a regular file (it is a folder, a device or a pipe, perhaps through "
            "a link); move it away, or give another checkpoint folder"
        )
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train without resume first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load fails in many ways on a file that is not a checkpoint
        first = (str(err).strip().splitlines() or [""])[0][:200]
        cause = f"{type(err).__name__}: {first}" if first else type(err).__name__
        raise CheckpointError(
            f"{path} is not a readable checkpoint (corrupt, truncated, or holds objects other than "
            f"tensors and plain containers; {cause}); delete it to start over"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a torch file but not an lvmkit checkpoint (no '{FORMAT}' marker); "
            "point checkpoint_dir at a folder lvmkit wrote"
        )
    version = state.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(
            f"{path} has a version field of {version!r} ({type(version).__name__}, not a "
            "number): the file was edited or written by other code; delete it to start over"
        )
    if version != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {version}; this lvmkit reads version {VERSION} "
            "only: use the lvmkit that wrote it"
        )
    stored = state.pop("sha256", None)
    if stored is None:
        raise CheckpointError(
            f"{path} has no checksum, which lvmkit writes into every checkpoint: the file was "
            "edited or written by other code; delete it to start over, or restore a copy"
        )
    if stored != checksum(state):
        raise CheckpointError(
            f"{path} does not match its checksum: its contents changed after it was written "
            "(disk or copy corruption); delete it to start over, or restore a copy"
        )
    bad = _non_finite(state)
    if bad is not None:  # lvmkit never writes one: the file was edited or written elsewhere
        raise CheckpointError(
            f"{path}: {bad} holds NaN/inf values, which lvmkit never saves; the file was "
            "edited or written by other code: delete it, or restore a copy"
        )
    return state


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _remove_stale_temporaries(folder: Path) -> None:
    """Remove the temporary files (``atomic_path``'s) that writers killed mid-write left in
    ``folder``: their pid is in the name, and no live process has it."""
    for tmp in folder.glob(".*.tmp"):
        parts = tmp.name.split(".")
        pid = int(parts[-3]) if len(parts) >= 4 and parts[-3].isdigit() else None
        if pid is not None and pid != os.getpid() and not _alive(pid):
            tmp.unlink(missing_ok=True)


def lock_holder(folder: str | Path) -> int | None:
    """The pid of a live process holding ``folder``'s run lock, else None."""
    try:
        pid = int((Path(folder) / LOCK_NAME).read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    return pid if pid and pid != os.getpid() and _alive(pid) else None


@contextlib.contextmanager
def run_lock(folder: str | Path):
    """Hold ``folder`` for this process: a second process gets a CheckpointError naming the pid
    that holds it. A lock left by a dead process is taken over; re-entering is allowed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid == os.getpid():  # this process holds it already
                yield
                return
            if pid and _alive(pid):
                raise CheckpointError(
                    f"{folder} is in use by another lvmkit process (pid {pid}); wait for it to "
                    "finish, or give another output folder"
                ) from None
            lock.unlink(missing_ok=True)  # left by a process that died
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        _remove_stale_temporaries(folder)
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)
        return
    raise CheckpointError(f"could not take the lock {lock}; remove it if no lvmkit process runs")
