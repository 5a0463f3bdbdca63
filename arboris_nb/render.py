"""Static HTML of a run's final view, for readers of a saved notebook.

A live widget needs a kernel (or saved widget state and a renderer that reads it); GitHub
and a kernel-less JupyterLab show only its text repr. :func:`render_run` draws the final
panels — each version's status and full text — with the selection, the judge's verdict and
a table of :func:`~arboris_nb.textstats.text_metrics`, as plain HTML saved in the cell's
output. :func:`render_book` does the same for a book job's progress. Model text is
untrusted: every string is ``html.escape``d; no scripts, no ``<style>`` (inline styles
only, so nothing leaks into the page, and the markup still reads where styles are
stripped).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .textstats import text_metrics
from .versionkeys import VersionKey, linked_versions, spoken

if TYPE_CHECKING:
    import pandas as pd

    from .results import Run, Version

__all__ = ["Snapshot", "metrics_table", "render_book", "render_run"]

_PANEL = (
    "flex:1 1 18em;min-width:0;border:1px solid #ccc;border-radius:4px;padding:0 .6em;"
    "line-height:1.5"
)
_CELL = ' style="padding:2px 10px;text-align:left"'  # readable where no table CSS applies
_STATUS_COLOUR = {"ok": "#2e7d32", "failed": "#c62828", "cancelled": "#8d6e00"}


class _Judged(Protocol):
    best_choice: VersionKey

    def to_html(self) -> str: ...


class _Book(Protocol):
    job_id: str

    def frame(self) -> pd.DataFrame: ...


@dataclass(frozen=True)
class Snapshot:
    """Rendered HTML that Jupyter displays as itself; ``text`` is the one-line summary."""

    html: str
    text: str

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return self.text


def render_run(
    source: Any,
    *,
    selected: VersionKey | None = None,
    evaluation: _Judged | None = None,
) -> Snapshot:
    """The final view of a run: ``source`` is a ``Run`` or a ``VersionsWidget`` (its run,
    selection and the Compare tab's last evaluation are used unless ``selected`` /
    ``evaluation`` are given). Each linked retry (``Run.retries``) follows the version it
    retries, as in the widget, titled ``Version 2 · retry 1`` (``selected=(2, 1)`` marks
    that one); the metrics table's rows are in the same order.
    """
    run: Run | None = getattr(source, "run", source)
    if run is None:
        return Snapshot("<p>No run yet.</p>", "<no run yet>")
    if selected is None and getattr(source, "selected", None) is not None:
        selected = getattr(source, "selected_key", None) or source.selected.index
    evaluation = evaluation or _last_evaluation(source)
    shown = linked_versions(run)
    panels = "".join(_panel(v, key == selected, key) for key, v in shown)
    body = [
        f"<p>{_summary(run, selected, evaluation)}</p>",
        f'<div style="display:flex;flex-wrap:wrap;gap:8px">{panels}</div>',
        metrics_table([v for _, v in shown], [_row_label(key) for key, _ in shown]),
    ]
    if evaluation is not None:
        body.append(evaluation.to_html())
    statuses = " ".join(v.status for v in run.versions)
    text = f"<run {run.run_id}: {run.version_count} versions, {statuses}>"
    return Snapshot(f'<div class="arboris-run">{"".join(body)}</div>', text)


def _last_evaluation(source: Any) -> _Judged | None:
    """A widget keeps its last verdict on its Compare tab; a run has none."""
    return getattr(getattr(source, "compare", None), "evaluation", None)


def _summary(run: Run, selected: VersionKey | None, evaluation: _Judged | None) -> str:
    counts = {s: sum(v.status == s for v in run.versions) for s in ("ok", "failed", "cancelled")}
    mode = f"parallel, C={run.max_parallel_requests}" if run.parallel else "serial"
    parts = [
        f"<b>Run {_esc(run.run_id)}</b>",
        f"{run.version_count} versions ({mode})",
        f"model {_esc(run.model or '–')}",
        ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "nothing finished",
    ]
    if selected is not None:
        parts.append(f"selected: {spoken(selected)}")
    if evaluation is not None:
        parts.append(f"judge's choice: {spoken(evaluation.best_choice)}")
    return " · ".join(parts)


def _row_label(key: VersionKey) -> str:
    """A metrics row's name, as the widget's Compare tab writes it: ``2``, ``2 · retry 1``."""
    return spoken(key).removeprefix("version ")


def _panel(version: Version, selected: bool, key: VersionKey) -> str:
    """One version's panel (a linked retry's: CSS class ``arboris-run-retry``)."""
    css = "arboris-run-retry" if isinstance(key, tuple) else "arboris-run-version"
    colour = _STATUS_COLOUR.get(version.status, "#555")
    head = [
        f"<b>{_esc(spoken(key).capitalize())}</b>",
        f'<span style="color:{colour}">{version.status}</span>',
    ]
    if version.ok:
        head.append(f"{version.output_tokens} tokens")
    head += [word for flag, word in ((version.edited, "edited"), (selected, "✔ selected")) if flag]
    title = f"<p><i>{_esc(version.title)}</i></p>" if version.title else ""
    border = ";border:2px solid #1976d2" if selected else ""
    return (
        f'<div class="{css}" style="{_PANEL}{border}">'
        f"<p>{' · '.join(head)}</p>{title}{_paragraphs(_shown_text(version))}</div>"
    )


def _shown_text(version: Version) -> str:
    if version.done:
        return version.display_text() or f"({version.status}: no text)"
    return "(not finished)"


def _paragraphs(text: str) -> str:
    """One ``<p>`` per non-blank line: line breaks survive where CSS is stripped."""
    lines = [line for line in text.splitlines() if line.strip()]
    return "".join(f"<p>{_esc(line)}</p>" for line in lines)


def metrics_table(versions: Sequence[Version], labels: Sequence[str] | None = None) -> str:
    """The text metrics of the ok versions as an HTML table (class ``arboris-run-metrics``;
    empty when none is ok) — for the readers' view and the widget's Compare tab.
    ``labels`` name the rows (one per version, escaped; default: the version number)."""
    head = "".join(
        f"<th{_CELL}>{h}</th>"
        for h in ("version", "characters", "words", "paragraphs", "dialogue", "repeated phrases",
                  "reading time")
    )  # fmt: skip
    rows = []
    names = labels if labels is not None else [str(v.index) for v in versions]
    for v, name in zip(versions, names, strict=True):
        if not v.ok:
            continue
        m = text_metrics(v.content or "")
        cells = (
            _esc(name), m["chars"], m["words"], m["paragraphs"], f"{m['dialogue_share']:.0%}",
            f"{m['repeated_phrase_ratio']:.0%}", f"{m['reading_min']:.1f} min",
        )  # fmt: skip
        rows.append("<tr>" + "".join(f"<td{_CELL}>{c}</td>" for c in cells) + "</tr>")
    if not rows:
        return ""
    return f'<table class="arboris-run-metrics"><tr>{head}</tr>{"".join(rows)}</table>'


def render_book(job: _Book) -> Snapshot:
    """A book job's progress: one row per chapter, each version's status and length."""
    frame = job.frame()
    counts = frame["status"].value_counts().to_dict()
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    chapters = frame.groupby("chapter", sort=True)
    done = sum(bool((units["status"] == "ok").all()) for _, units in chapters)
    width = int(frame["version"].max()) if len(frame) else 0
    head = "".join(f"<th{_CELL}>v{i}</th>" for i in range(1, width + 1))
    rows = "".join(
        f"<tr><td{_CELL}>{chapter}</td>"
        + "".join(_unit_cell(u) for u in units.itertuples())
        + "</tr>"
        for chapter, units in chapters
    )
    line = (
        f"<b>{_esc(job.job_id)}</b> · {done}/{frame['chapter'].nunique()} chapters complete · "
        f"{len(frame)} versions: {summary}"
    )
    table = (
        f'<table class="arboris-book-chapters"><tr><th{_CELL}>chapter</th>{head}</tr>{rows}</table>'
    )
    text = f"<book job {job.job_id}: {len(frame)} versions, {summary}>"
    return Snapshot(f'<div class="arboris-book-view"><p>{line}</p>{table}</div>', text)


def _unit_cell(unit: Any) -> str:
    colour = _STATUS_COLOUR.get(unit.status, "#555")
    size = f" · {unit.chars} chars" if unit.status == "ok" else ""
    return f'<td{_CELL}><span style="color:{colour}">{_esc(unit.status)}</span>{size}</td>'


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)
