"""Benchmark analytics: record runs, compute the numbers, sweep concurrency, plot.

Data flows one way: the engine's events → :class:`Recorder` → DataFrames → plots.
"""

from __future__ import annotations

from .metrics import efficiency, gap, ideal_time, percentile, percentiles, speedup
from .plots import (
    plot_concurrency,
    plot_distributions,
    plot_limit,
    plot_serial_vs_parallel,
    plot_timeline,
)
from .recorder import LIMITS_COLUMNS, RUNS_COLUMNS, VERSIONS_COLUMNS, Recorder
from .sweep import Recommendation, SweepResult, plan_sweep, sweep, sweep_sync
from .trace import limit_trace, limit_trace_html

__all__ = [
    "LIMITS_COLUMNS",
    "RUNS_COLUMNS",
    "VERSIONS_COLUMNS",
    "Recommendation",
    "Recorder",
    "SweepResult",
    "efficiency",
    "gap",
    "ideal_time",
    "limit_trace",
    "limit_trace_html",
    "percentile",
    "percentiles",
    "plan_sweep",
    "plot_concurrency",
    "plot_distributions",
    "plot_limit",
    "plot_serial_vs_parallel",
    "plot_timeline",
    "speedup",
    "sweep",
    "sweep_sync",
]
