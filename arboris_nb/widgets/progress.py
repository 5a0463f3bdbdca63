"""RunProgress: the progress line — a bar coloured by outcome and "1 ok · 2 cancelled of 3",
then the elapsed time and the run's tokens and cost so far.

The kernel sends it only when a version changes state; the elapsed time ticks in the
browser (``static/progress.js``). ``text`` is the whole line as the browser shows it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import anywidget
import traitlets

__all__ = ["OUTCOMES", "RunProgress", "progress_summary"]

_STATIC = Path(__file__).parent / "static"

#: Order of the counts in the line (status words as the panels show them; ``surplus`` is
#: a version cancelled because the run kept the first N to finish — not a stop).
OUTCOMES = ("ok", "failed", "cancelled", "surplus", "running", "queued")


def progress_summary(statuses: Iterable[str]) -> tuple[dict[str, int], str]:
    """Counts per outcome and the line for the panels' ``statuses`` (panel words).

    ``done`` counts as ok, ``retrying`` as running; idle panels read "ready".
    """
    words = list(statuses)
    named = {"done": "ok", "retrying": "running"}
    counts = Counter(named.get(word, word) for word in words)
    if not words or counts["idle"] == len(words):
        return {}, f"{len(words)} versions · ready"
    parts = [f"{counts[name]} {name}" for name in OUTCOMES if counts[name]]
    return {name: counts[name] for name in OUTCOMES}, " · ".join(parts) + f" of {len(words)}"


class RunProgress(anywidget.AnyWidget):
    """The progress bar and line of a :class:`~arboris_nb.widgets.VersionsWidget`."""

    _esm = _STATIC / "progress.js"
    _css = _STATIC / "arboris.css"
    total = traitlets.Int(0).tag(sync=True)
    counts = traitlets.Dict().tag(sync=True)  # outcome -> versions
    summary = traitlets.Unicode("").tag(sync=True)
    outcome = traitlets.Unicode("idle").tag(sync=True)  # idle, live, ok, mixed, stopped, failed
    clock_s = traitlets.Float(0.0).tag(sync=True)  # elapsed at the last update
    live = traitlets.Bool(False).tag(sync=True)  # the browser ticks the clock while True
    bill = traitlets.Unicode("").tag(sync=True)  # tokens and cost so far (console.run_bill)

    def show(self, statuses: list[str], clock_s: float, *, live: bool, bill: str = "") -> None:
        """Redraw from the panels' status words (one message)."""
        counts, summary = progress_summary(statuses)
        with self.hold_sync():
            self.total, self.counts, self.summary = len(statuses), counts, summary
            self.bill = bill
            self.clock_s, self.live = round(clock_s, 3), live
            self.outcome = _outcome(counts, live)

    @property
    def text(self) -> str:
        """The line as shown (the clock as of the last update)."""
        clock = f" · {self.clock_s:.1f} s" if self.clock_s or self.live else ""
        return self.summary + clock + (f" · {self.bill}" if self.bill else "")


def _outcome(counts: dict[str, int], live: bool) -> str:
    if live:
        return "live"
    if not counts:
        return "idle"
    if counts["ok"] + counts["surplus"] == sum(counts.values()):
        return "ok"
    if counts["cancelled"]:
        return "stopped"
    return "failed" if not counts["ok"] else "mixed"
