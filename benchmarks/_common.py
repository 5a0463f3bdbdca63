"""Shared bits of the benchmark scripts: the machine line and the mock server's own view."""

from __future__ import annotations

import os
import platform
import statistics
from importlib.metadata import version
from typing import Any


def machine() -> str:
    """One line naming the machine and the versions that matter to the numbers."""
    return (
        f"machine: {os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, openai {version('openai')}, "
        f"aiohttp {version('aiohttp')}, arboris-nb {version('arboris-nb')}"
    )


def server_view(stats: dict[str, Any], expected_s: float) -> str:
    """The mock's own timings: if it served each request in about the configured time,
    with nothing queued at the server, the mock was not the bottleneck."""
    served = [
        e["end_s"] - e["arrival_s"]
        for e in stats["log"]
        if e["end_s"] is not None and e["status"] == 200
    ]
    mean = statistics.fmean(served) if served else float("nan")
    return (
        f"mock server: {stats['requests']} requests, statuses {stats['by_status']}, "
        f"max in flight {stats['max_in_flight']}, max queued {stats['max_queued']}, "
        f"server-side time per request {mean:.3f} s (configured ≈ {expected_s:.3f} s, "
        f"{mean / expected_s:.3f}×)"
    )
