"""What every loader refuses before it reads: its error type, and how much data may load."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """A data file or folder lvmkit cannot use; the message names it and the fix."""


MAX_DATA_GB = 4.0  # the default largest dataset, as float32 pixels; LVMKIT_MAX_DATA_GB sets it


def data_limit() -> tuple[int, str]:
    """The most bytes a dataset may take while it loads (the file's values and their float32
    copy), and why: ``$LVMKIT_MAX_DATA_GB`` (default 4) GiB, and never more than half of the
    memory free now."""
    setting = os.environ.get("LVMKIT_MAX_DATA_GB", "")
    try:
        gib = float(setting) if setting else MAX_DATA_GB
    except ValueError:
        gib = -1.0
    if not gib > 0 or math.isinf(gib):
        raise DataError(
            f"LVMKIT_MAX_DATA_GB={setting!r} is not a number of GiB above 0; set it like "
            "LVMKIT_MAX_DATA_GB=16, or unset it for the default 4"
        )
    limit, why = int(gib * 2**30), f"the limit LVMKIT_MAX_DATA_GB={gib:g} GiB"
    free = _free_memory()
    if free is not None and free // 2 < limit:
        limit, why = free // 2, f"half of the memory free now ({free / 2**30:.1f} GiB)"
    return limit, why


def _free_memory() -> int | None:
    """Bytes of memory free for new allocations (Linux: MemAvailable), else the machine's memory;
    None where neither can be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return None


def check_size(shape: tuple[int, ...], path: Path, itemsize: int = 1) -> None:
    """Refuse, from the header and before anything is read or allocated, data whose values
    (``itemsize`` bytes each) and their float32 copy would pass ``data_limit()``."""
    needed = (itemsize + 4) * int(np.prod(shape, dtype=object))
    limit, why = data_limit()
    if needed > limit:
        raise DataError(
            f"{path}: {shape} images need {needed / 2**30:.1f} GiB to load, more than "
            f"{why}; load a part of them (e.g. save a slice as .npy), or raise the limit with "
            "LVMKIT_MAX_DATA_GB on a machine with the memory"
        )
