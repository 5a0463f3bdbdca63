"""A run's concurrency trace: the limit, the requests in flight and every 429, over time.

Pure functions of a :class:`~arboris_nb.results.Run` and the ``(t, limit)`` pairs of the
``LimitChanged`` events it emitted (the engine announces the starting limit, then every
move). Requests in flight and 429s are read from each version's attempt log, so nothing
else needs recording. The Recorder's ``limits_frame()``, ``plot_limit()`` and the
widget's Timeline tab (:func:`limit_trace_html`) all draw from :func:`limit_trace`.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..results import Run

__all__ = ["TracePoint", "limit_trace", "limit_trace_html"]

# Sort order of what happens at the same instant: a limit move, attempts ending (their
# slots free), attempts starting, and last the ends of attempts that started then too
# (a 429 answered at once).
_LIMIT, _END, _START, _INSTANT_END = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class TracePoint:
    """The state from ``t_s`` (seconds after the run started) until the next point."""

    t_s: float
    limit: int | None  # the concurrency limit (None before the first one is known)
    in_flight: int  # attempts started and not finished
    rate_limited: bool  # this point is an attempt answered 429


def limit_trace(run: Run, limits: Sequence[tuple[float, int]] = ()) -> list[TracePoint]:
    """The trace of ``run``: one point per limit move, attempt start and attempt end."""
    moments: list[tuple[float, int, int]] = [(t, _LIMIT, value) for t, value in limits]
    for version in run.versions:
        for attempt in version.attempts:
            moments.append((attempt.started_at, _START, 0))
            if attempt.finished_at is not None:
                kind = _INSTANT_END if attempt.finished_at <= attempt.started_at else _END
                moments.append((attempt.finished_at, kind, int(attempt.status_code == 429)))
    limit: int | None = _fixed_limit(run) if not limits else None
    in_flight, points = 0, []
    for t, kind, value in sorted(moments):
        if kind == _LIMIT:
            limit = value
        else:
            in_flight += 1 if kind == _START else -1
        refused = kind in (_END, _INSTANT_END) and bool(value)
        points.append(TracePoint(t, limit, in_flight, refused))
    return points


def _fixed_limit(run: Run) -> int | None:
    if not run.parallel:
        return 1
    value = run.max_parallel_requests
    return value if isinstance(value, int) else None


def limit_trace_html(
    run: Run | None, limits: Sequence[tuple[float, int]] = (), now: float | None = None
) -> str:
    """The trace as inline SVG (no script): the limit as a blue step line, the requests in
    flight as a grey area, each 429 as a red tick. ``now`` extends the last step for a
    run still going (seconds since its start)."""
    if run is None:
        return '<div class="arboris-limit-trace"><i>No run yet.</i></div>'
    points = limit_trace(run, limits)
    end = max([now or 0.0, run.elapsed_s or 0.0, *(p.t_s for p in points)]) or 1.0
    top = max([1, *(p.limit or 0 for p in points), *(p.in_flight for p in points)])
    w, h = 600.0, 120.0

    def xy(t: float, y: float) -> str:
        return f"{t / end * w:.1f},{h - y / top * (h - 10):.1f}"

    flight = _steps([(p.t_s, p.in_flight) for p in points], end, xy)
    limit = _steps([(p.t_s, p.limit) for p in points if p.limit is not None], end, xy)
    ticks = "".join(
        f'<line x1="{p.t_s / end * w:.1f}" x2="{p.t_s / end * w:.1f}" y1="{h}" y2="{h - 12}" '
        'stroke="#d0463b" stroke-width="2"/>'
        for p in points
        if p.rate_limited
    )
    refused = sum(p.rate_limited for p in points)
    caption = html.escape(
        f"limit (blue), in flight (grey), 429s (red): {refused} · 0–{end:.2f} s · max {top}"
    )
    return (
        f'<div class="arboris-limit-trace"><svg viewBox="0 0 {w:g} {h:g}" width="100%" '
        f'height="{h:g}" preserveAspectRatio="none" role="img" aria-label="{caption}">'
        f'<polygon points="0,{h:g} {flight} {w:g},{h:g}" fill="#d9d9d9"/>'
        f'<polyline points="{limit}" fill="none" stroke="#3b75af" stroke-width="2"/>{ticks}'
        f'</svg><div style="font-size:smaller">{caption}</div></div>'
    )


def _steps(
    values: list[tuple[float, int | None]], end: float, xy: Callable[[float, float], str]
) -> str:
    """SVG points of a step line through ``(t, y)`` pairs, held until ``end``."""
    out: list[str] = []
    last: int | None = None
    for t, y in values:
        if last is not None:
            out.append(xy(t, last))
        out.append(xy(t, y or 0))
        last = y
    if last is not None:
        out.append(xy(end, last))
    return " ".join(out)
