"""Shared bits of the benchmark scripts: the machine line and the mock server's own view."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
from collections.abc import Callable, Coroutine
from importlib.metadata import version
from typing import Any

from arboris_nb.mockserver import MockServer


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


Measure = Callable[[str, int], Coroutine[Any, Any, None]]


def run_on_mock(
    measure: Measure,
    *,
    description: str,
    repeats: int,
    ttft_s: float,
    tokens_per_s: float,
    tokens: int,
    what: str,
) -> None:
    """The scripts' common main: parse ``--repeats``, start the mock in its own process
    (so it does not share the client's GIL), run ``measure(base_url, repeats)``, then
    print the mock's own view of the latency it served."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=repeats)
    args = parser.parse_args()
    latency_s = ttft_s + (tokens - 1) / tokens_per_s
    print(machine())
    print(f"mock (own process): ttft {ttft_s} s, {tokens} tokens at {tokens_per_s:g}/s ≈ "
          f"{latency_s:.2f} s a version{what}; over {args.repeats} repeats")  # fmt: skip
    server = MockServer(
        ttft_s=ttft_s, tokens_per_s=tokens_per_s, output_tokens=tokens, process=True
    )
    with server as base_url:
        asyncio.run(measure(base_url, args.repeats))
        print(server_view(server.stats(), latency_s))
