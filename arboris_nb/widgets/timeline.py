"""A run's timeline as an HTML/CSS bar chart: one row per version, one bar per phase.

Phases come from the version's own timestamps (offsets from the run start): queue wait,
each failed attempt and its backoff, waiting for the first token, generating. A version
still in flight is drawn up to ``now``. Pure function of the run, so it is testable and
cheap enough to redraw at the widget's refresh rate.
"""

from __future__ import annotations

import html

from ..results import Run, Version

__all__ = ["PHASE_COLORS", "phases", "timeline_html"]

PHASE_COLORS: dict[str, str] = {
    "queue": "#d9d9d9",
    "failed attempt": "#e57373",
    "backoff": "#f3d9a4",
    "first token": "#ffb74d",
    "generating": "#66bb6a",
}


def phases(version: Version, now: float) -> list[tuple[str, float, float]]:
    """(phase, start_s, end_s) spans of one version, clipped to ``now`` if unfinished."""
    end = version.finished_at if version.finished_at is not None else now
    spans: list[tuple[str, float, float]] = []
    start = version.started_at
    spans.append(("queue", version.queued_at, start if start is not None else end))
    log = version.attempts
    for attempt in log[:-1]:  # earlier attempts all failed, then waited
        stop = attempt.finished_at if attempt.finished_at is not None else end
        spans.append(("failed attempt", attempt.started_at, stop))
        spans.append(("backoff", stop, stop + attempt.wait_s))
    if log:
        last = log[-1]
        first = version.first_token_at
        if first is None:
            name = "failed attempt" if version.status == "failed" else "first token"
            spans.append((name, last.started_at, end))
        else:
            spans.append(("first token", last.started_at, first))
            spans.append(("generating", first, end))
    return [(name, a, min(b, end)) for name, a, b in spans if min(b, end) > a]


def timeline_html(run: Run | None, now: float | None = None) -> str:
    """The chart for ``run`` (``now``: seconds since its start, for unfinished versions)."""
    if run is None:
        return '<div class="arboris-timeline"><i>No run yet.</i></div>'
    now = run.elapsed_s if run.elapsed_s is not None else (now or 0.0)
    spans = {v.index: phases(v, now) for v in run.versions}
    scale = max([now, *(b for s in spans.values() for _, _, b in s)]) or 1.0
    rows = [_row(v, spans[v.index], scale) for v in run.versions]
    legend = " ".join(
        f'<span style="background:{color};padding:0 6px">{name}</span>'
        for name, color in PHASE_COLORS.items()
    )
    return (
        f'<div class="arboris-timeline">{"".join(rows)}'
        f'<div style="font-size:smaller;margin-top:4px">{legend} · 0–{scale:.2f} s</div></div>'
    )


def _row(version: Version, spans: list[tuple[str, float, float]], scale: float) -> str:
    bars = "".join(
        f'<div title="{html.escape(name)} {a:.2f}–{b:.2f} s" style="position:absolute;'
        f"left:{a / scale * 100:.2f}%;width:{(b - a) / scale * 100:.2f}%;top:0;bottom:0;"
        f'background:{PHASE_COLORS[name]}"></div>'
        for name, a, b in spans
    )
    return (
        '<div style="display:flex;align-items:center;margin:2px 0">'
        f'<span style="width:3em">v{version.index}</span>'
        f'<div style="position:relative;flex:1;height:14px;background:#f7f7f7">{bars}</div>'
        f'<span style="width:6em;text-align:right">{html.escape(version.status)}</span></div>'
    )
