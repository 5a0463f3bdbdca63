"""Pure functions behind the benchmark numbers: percentiles, ideal time, speedup, efficiency.

No clocks, no I/O, no pandas: each takes plain numbers so it can be tested exactly.
``None`` in means "not measured"; the functions return ``None`` rather than guess.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["efficiency", "gap", "ideal_time", "percentile", "percentiles", "speedup", "waves"]


def _clean(values: Iterable[float | None]) -> list[float]:
    """Measured values only: None and NaN (pandas' missing value) are dropped."""
    return sorted(float(v) for v in values if v is not None and not math.isnan(float(v)))


def percentile(values: Iterable[float | None], q: float) -> float | None:
    """The ``q``-th percentile (0–100), linear between closest ranks (numpy's default).

    ``None`` when there is no measured value.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be from 0 to 100, got {q}")
    data = _clean(values)
    if not data:
        return None
    pos = (len(data) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


def percentiles(
    values: Iterable[float | None], qs: Iterable[float] = (50, 90, 99)
) -> dict[str, float | None]:
    """``{"p50": …, "p90": …, "p99": …}`` for the given percentiles."""
    data = _clean(values)
    return {f"p{q:g}": percentile(data, q) for q in qs}


def waves(n: int, c: int) -> int:
    """How many rounds N requests need under a limit of C: ⌈N/C⌉."""
    if n < 0:
        raise ValueError(f"version count n must be 0 or more, got {n}")
    if c < 1:
        raise ValueError(f"concurrency c must be at least 1, got {c}")
    return math.ceil(n / c)


def ideal_time(n: int, c: int, latency: float | None) -> float | None:
    """⌈N/C⌉·L: the best wall time a limit of C allows when each request takes L."""
    if latency is None:
        return None
    return waves(n, c) * latency


def speedup(serial: float | None, parallel: float | None) -> float | None:
    """serial / parallel (3.0 = three times faster)."""
    if serial is None or not parallel:
        return None
    return serial / parallel


def efficiency(serial: float | None, parallel: float | None) -> float | None:
    """The seed's figure, in percent: (serial − parallel) / serial × 100 (30 → 10 min: 66.7)."""
    if not serial or parallel is None:
        return None
    return (serial - parallel) / serial * 100.0


def gap(elapsed: float | None, ideal: float | None) -> float | None:
    """Seconds lost against the ideal: elapsed − ideal (≥ 0 unless requests sped up)."""
    if elapsed is None or ideal is None:
        return None
    return elapsed - ideal
