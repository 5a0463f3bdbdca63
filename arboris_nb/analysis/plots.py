"""Figures from the Recorder's frames. Each function returns a matplotlib ``Figure``.

Only the object API is used (``Figure()`` and its axes, never ``pyplot``): no global
state, nothing shown as a side effect, safe in threads and tests. The figures are
:class:`~arboris_nb.analysis._figure.NotebookFigure`s: in Jupyter a returned figure
displays as an image (PNG) in any kernel, with no ``%matplotlib`` magic; elsewhere call
``fig.savefig(path)``. Other plotting modules build their figures with :func:`_figure`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .metrics import ideal_time

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = ["plot_concurrency", "plot_distributions", "plot_serial_vs_parallel", "plot_timeline"]

# Colours of the timeline's phases, also used by the legend.
_PHASES = {
    "queue wait": "#c7c7c7",
    "waiting for first token": "#f2a541",
    "generating": "#3b75af",
    "failed / cancelled": "#d0463b",
}


def _figure(width: float, height: float) -> Figure:
    """An empty figure of ``width`` × ``height`` inches that displays as an image in
    Jupyter (constrained layout: titles and legends are not cut off)."""
    # Imported here so that ``import arboris_nb`` (and the CLI) does not load matplotlib.
    from ._figure import NotebookFigure

    return NotebookFigure(figsize=(width, height), layout="constrained")


def _need(frame: pd.DataFrame, what: str) -> None:
    if frame.empty:
        raise ValueError(f"{what}: the frame has no rows (record a run first)")


def plot_timeline(versions_frame: pd.DataFrame, run_id: str | None = None) -> Figure:
    """Gantt chart of one run (default: the last recorded): one row per version, showing
    the queue wait, the wait for the first token and the generation."""
    _need(versions_frame, "plot_timeline")
    if run_id is None:
        last = versions_frame["run_index"].max()
        rows = versions_frame[versions_frame["run_index"] == last]
    else:
        rows = versions_frame[versions_frame["run_id"] == run_id]
        if rows.empty:
            raise ValueError(f"plot_timeline: no run with run_id={run_id!r}")
    rows = rows.sort_values("version")
    fig = _figure(8, 0.45 * len(rows) + 1.6)
    ax = fig.subplots()
    y = list(range(len(rows)))
    for phase, (lo, hi) in _phase_spans(rows).items():
        left = [a if _num(a) else 0.0 for a in lo]
        width = [(b - a) if _num(a) and _num(b) else 0.0 for a, b in zip(lo, hi, strict=True)]
        ax.barh(y, width, left=left, height=0.6, color=_PHASES[phase], label=phase)
    ax.set_yticks(y, [f"v{int(v)}" for v in rows["version"]])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the run started")
    head = rows.iloc[0]
    mode = "serial" if head["mode"] == "serial" else f"parallel, C={head['max_parallel_requests']}"
    ax.set_title(f"Run {head['run_id']}: N={head['version_count']}, {mode}")
    fig.legend(loc="outside upper center", ncols=len(_PHASES), fontsize="small")
    return fig


def _num(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _phase_spans(rows: pd.DataFrame) -> dict[str, tuple[list[Any], list[Any]]]:
    """(start, end) lists per phase; a version that did not finish ok shows one red span."""
    ok = (rows["status"] == "ok").tolist()
    queued, start = rows["queued_s"].tolist(), rows["start_s"].tolist()
    first, finish = rows["first_token_s"].tolist(), rows["finish_s"].tolist()

    def only(mask: list[bool], values: list[Any]) -> list[Any]:
        return [v if m else None for m, v in zip(mask, values, strict=True)]

    bad = [not m for m in ok]
    return {
        "queue wait": (queued, [s if _num(s) else f for s, f in zip(start, finish, strict=True)]),
        "waiting for first token": (only(ok, start), only(ok, first)),
        "generating": (only(ok, first), only(ok, finish)),
        "failed / cancelled": (only(bad, start), only(bad, finish)),
    }


def plot_serial_vs_parallel(runs_frame: pd.DataFrame) -> Figure:
    """Mean wall time, serial against parallel at each C, per N — the seed's 30 → 10 min
    picture from measured runs. A serial bar is hatched when it is only estimated (no
    serial run of that N was recorded); each parallel bar is labelled with its efficiency."""
    _need(runs_frame, "plot_serial_vs_parallel")
    fig = _figure(8, 4.5)
    ax = fig.subplots()
    ns = sorted(runs_frame["version_count"].unique())
    ticks: list[float] = []
    labels: list[str] = []
    x = 0.0
    for n in ns:
        group = runs_frame[runs_frame["version_count"] == n]
        bars = _serial_vs_parallel_bars(group)
        for i, (name, value, hatch, note) in enumerate(bars):
            colour = "#8c8c8c" if name == "serial" else "#3b75af"
            (rect,) = ax.bar(x + i, value, color=colour, hatch=hatch, edgecolor="black")
            ax.annotate(
                f"{value:.2f} s" + (f"\n{note}" if note else ""),
                (rect.get_x() + rect.get_width() / 2, value),
                ha="center",
                va="bottom",
                fontsize="small",
            )
        ticks.extend(x + i for i in range(len(bars)))
        labels.extend(f"N={n}\n{name}" for name, *_ in bars)
        x += len(bars) + 1
    ax.set_xticks(ticks, labels, fontsize="small")
    ax.set_ylabel("wall time (s), mean over repeats")
    ax.set_title("Serial vs parallel generation")
    ax.margins(y=0.2)
    return fig


def _serial_vs_parallel_bars(group: pd.DataFrame) -> list[tuple[str, float, str | None, str]]:
    """(name, mean elapsed, hatch, note) for one N: serial first, then each C."""
    serial = group[group["mode"] == "serial"]
    parallel = group[group["mode"] == "parallel"]
    bars: list[tuple[str, float, str | None, str]] = []
    if not serial.empty:
        bars.append(("serial", float(serial["elapsed_s"].mean()), None, ""))
    elif not parallel.empty:
        bars.append(("serial (est.)", float(parallel["serial_s"].mean()), "//", "estimated"))
    for c, runs in parallel.groupby("max_parallel_requests", sort=True):
        eff = runs["efficiency"].mean()
        note = f"saves {round(eff)}%" if _num(eff) else ""  # round(): no "-0%"
        bars.append((f"C={c}", float(runs["elapsed_s"].mean()), None, note))
    return bars


def plot_concurrency(runs_frame: pd.DataFrame) -> Figure:
    """Wall time and efficiency against the concurrency limit C, one line per N.

    Points are means over repeats with ±1 standard deviation error bars; the dashed line
    is the ideal ⌈N/C⌉·L (L = mean version duration over the runs of that N); a dotted
    horizontal line marks the measured serial time when there is one.
    """
    _need(runs_frame, "plot_concurrency")
    fig = _figure(10, 4.2)
    wall, eff = fig.subplots(1, 2)
    parallel = runs_frame[runs_frame["mode"] == "parallel"]
    if parallel.empty:
        raise ValueError("plot_concurrency: no parallel runs in the frame")
    for n, runs in parallel.groupby("version_count", sort=True):
        stats = runs.groupby("max_parallel_requests", sort=True).agg(
            elapsed=("elapsed_s", "mean"),
            elapsed_sd=("elapsed_s", "std"),
            eff=("efficiency", "mean"),
            eff_sd=("efficiency", "std"),
        )
        cs = [int(c) for c in stats.index]
        line = wall.errorbar(
            cs,
            stats["elapsed"],
            yerr=stats["elapsed_sd"].fillna(0),
            marker="o",
            capsize=3,
            label=f"N={n} measured",
        )
        colour = line.lines[0].get_color()
        latency = float(runs["mean_duration_s"].mean())
        count = int(runs["version_count"].iloc[0])
        dense = list(range(1, max(cs) + 1))
        wall.plot(
            dense,
            [ideal_time(count, c, latency) for c in dense],
            "--",
            color=colour,
            label=f"N={n} ideal ⌈N/C⌉·L",
        )
        serial = runs_frame[(runs_frame["mode"] == "serial") & (runs_frame["version_count"] == n)]
        if not serial.empty:
            wall.axhline(serial["elapsed_s"].mean(), ls=":", color=colour, label=f"N={n} serial")
        eff.errorbar(
            cs,
            stats["eff"],
            yerr=stats["eff_sd"].fillna(0),
            marker="o",
            capsize=3,
            color=colour,
            label=f"N={n}",
        )
    wall.set(xlabel="concurrency limit C", ylabel="wall time (s)", title="Wall time vs C")
    eff.set(
        xlabel="concurrency limit C",
        ylabel="efficiency (%)",
        title="Efficiency (serial − parallel) / serial"
        + (" — serial estimated" if (parallel["serial_source"] == "estimated").any() else ""),
    )
    for ax in (wall, eff):
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    return fig


def plot_distributions(versions_frame: pd.DataFrame) -> Figure:
    """Box plots of time to first token and of version duration, per mode and C
    (ok versions only)."""
    _need(versions_frame, "plot_distributions")
    ok = versions_frame[versions_frame["status"] == "ok"]
    if ok.empty:
        raise ValueError("plot_distributions: no ok versions in the frame")
    fig = _figure(10, 4.2)
    axes = fig.subplots(1, 2)
    groups = list(ok.groupby(["mode", "max_parallel_requests"], sort=True))
    groups.sort(key=lambda item: (item[0][0] == "parallel", item[0][1]))  # serial first
    labels = ["serial" if mode == "serial" else f"C={c}" for (mode, c), _ in groups]
    for ax, column, title in (
        (axes[0], "ttft_s", "Time to first token"),
        (axes[1], "duration_s", "Version duration"),
    ):
        data = [g[column].dropna().tolist() for _, g in groups]
        ax.boxplot(data, tick_labels=labels)
        ax.set(title=title, ylabel="seconds", xlabel="mode / concurrency limit")
        ax.grid(alpha=0.3, axis="y")
    return fig
