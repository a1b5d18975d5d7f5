"""One validation style for arguments: a TypeError when a value has the wrong type, a ValueError
when it has the right type and a bad value; each message names the argument and what it takes."""

from __future__ import annotations

import math
import numbers


def check_count(name: str, value, minimum: int = 1) -> int:
    """``value`` if it is an int >= ``minimum`` (epochs, samples, images...)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        at_least = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {at_least}, got {value!r}")
    return int(value)


def check_number(name: str, value, *, positive: bool = True) -> float:
    """``value`` if it is a finite real number, above 0 when ``positive`` (else at least 0)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, "
                         f"got {value!r}")  # fmt: skip
    return float(value)


def check_seed(name: str, value, limit: int = 2**32) -> int:
    """``value`` if it is an int in 0 .. limit - 1 (NumPy takes seeds below 2**32)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if not 0 <= value < limit:
        raise ValueError(f"{name} must be a seed in 0 .. {limit} - 1, got {value!r}")
    return int(value)


def check_flag(name: str, value) -> bool:
    """``value`` if it is True or False."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value, choices) -> str:
    """``value`` if it is one of ``choices`` (strings)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {list(choices)}, got {value!r}")
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {list(choices)}")
    return value


MAX_PARTICLES = 2**18  # particle-datapoints one vectorized pass may hold (784 pixels: ~2 GB)


def check_particles(num_samples: int, rows: int) -> None:
    """ValueError if ``num_samples`` particles for each of ``rows`` datapoints pass
    MAX_PARTICLES: one pass would take more memory than a machine is likely to have."""
    if num_samples * rows > MAX_PARTICLES:
        raise ValueError(
            f"{num_samples} particles (or chains) for each of {rows} datapoints is "
            f"{num_samples * rows:,} in one pass, more than the {MAX_PARTICLES:,} lvmkit holds "
            "at once; lower particle_chunk (log_likelihood), num_samples or batch_size"
        )


def all_finite(values, rows: int = 65536) -> bool:
    """Whether every value of the tensor ``values`` is finite: one sum (finite when every term
    is), looked at ``rows`` rows at a time only when the sum is not (an overflow, or a NaN)."""
    return bool(values.sum().isfinite()) or all(
        bool(part.isfinite().all()) for part in values.split(rows)
    )
