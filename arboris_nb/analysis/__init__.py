"""Benchmark analytics: record runs, compute the numbers, sweep concurrency, plot.

Data flows one way: the engine's events → :class:`Recorder` → DataFrames → plots.
"""

from __future__ import annotations

from .metrics import efficiency, gap, ideal_time, percentile, percentiles, speedup
from .plots import plot_concurrency, plot_distributions, plot_serial_vs_parallel, plot_timeline
from .recorder import RUNS_COLUMNS, VERSIONS_COLUMNS, Recorder
from .sweep import SweepResult, plan_sweep, sweep, sweep_sync

__all__ = [
    "RUNS_COLUMNS",
    "VERSIONS_COLUMNS",
    "Recorder",
    "SweepResult",
    "efficiency",
    "gap",
    "ideal_time",
    "percentile",
    "percentiles",
    "plan_sweep",
    "plot_concurrency",
    "plot_distributions",
    "plot_serial_vs_parallel",
    "plot_timeline",
    "speedup",
    "sweep",
    "sweep_sync",
]
