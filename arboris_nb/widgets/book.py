"""BookProgress: a whole-book job at a glance — chapters done, versions ok / failed,
units running (holding a slot of the limit) and waiting for one, elapsed, ETA — as a
progress bar and one line of text.

It is a thin view over :meth:`BookJob.status` (a dict): it computes nothing itself. It
subscribes to the job (:meth:`BookJob.subscribe`), which calls it on engine events (local
backend) or on each poll of Redis (Celery); the queue layer knows nothing of widgets.
Calls are throttled to one redraw per ``min_interval_s``, with a timer on the kernel's
loop so the last call of a burst is never lost.

CSS classes: ``arboris-book`` (root), ``arboris-book-bar``, ``arboris-book-line``.
"""

from __future__ import annotations

import asyncio
import html
import time
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from ..pricing import format_cost

if TYPE_CHECKING:
    from ..queue.job import BookJob

__all__ = ["BookProgress", "format_seconds"]


def format_seconds(seconds: float | None) -> str:
    """``75.2`` → ``"1:15"``; ``3700`` → ``"1:01:40"``; None → ``"–"``."""
    if seconds is None:
        return "–"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _line(status: dict[str, Any]) -> str:
    to_do = status["pending"] + status["cancelled"]
    parts = [
        f"<b>{html.escape(str(status['job_id']))}</b>",
        f"chapters {status['chapters_done']}/{status['chapters']}",
        f"versions {status['ok']}/{status['units']} ok",
        f"{status['failed']} failed",
        f"{status['running']} running (limit {status['limit']})",
        f"{status['queued']} waiting for a slot",
        *([f"{to_do} to do"] if to_do else []),
        f"elapsed {format_seconds(status['elapsed_s'])}",
        f"ETA {format_seconds(status['eta_s'])}",
    ]
    if status.get("cost") is not None:  # known only with prices (ARBORIS_PRICES, LLMConfig)
        parts.append(
            f"cost {format_cost(status['cost'])} so far, "
            f"{format_cost(status['projected_cost'])} projected"
        )
    return " · ".join(parts)


class BookProgress(widgets.VBox):
    """Progress of a book job: ``BookProgress(job)``, shown as a cell's last expression.
    It follows the job until :meth:`close` (which also unsubscribes)."""

    def __init__(self, job: BookJob, *, min_interval_s: float = 0.25):
        self.bar = widgets.IntProgress(value=0, min=0, max=1, description="book")
        self.bar.add_class("arboris-book-bar")
        self.line = widgets.HTML()
        self.line.add_class("arboris-book-line")
        super().__init__([self.bar, self.line])
        self.add_class("arboris-book")
        self.job = job
        self.min_interval_s = min_interval_s
        self.redraws = 0
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._unsubscribe = job.subscribe(self._changed)
        self.refresh()

    def _changed(self, now: bool) -> None:
        if now:
            self.refresh()
        else:
            self.poke()

    def poke(self) -> None:
        """Redraw now, or once the interval has passed if the last redraw was recent."""
        wait = self._last + self.min_interval_s - time.monotonic()
        if wait <= 0:
            self.refresh()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (plain script): the next poke will redraw
                return
            self._timer = loop.call_later(wait, self.refresh)

    def refresh(self) -> None:
        """Redraw from the job's status now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.render(self.job.status())

    def render(self, status: dict[str, Any]) -> None:
        """Draw ``status`` (a :meth:`BookJob.status` dict)."""
        self._last = time.monotonic()
        self.redraws += 1
        with self.bar.hold_sync():
            self.bar.max = max(1, status["units"])
            self.bar.value = status["ok"] + status["failed"]
            self.bar.bar_style = (
                "danger"
                if status["failed"]
                else ("success" if status["ok"] == status["units"] else "")
            )
        self.line.value = _line(status)

    def close(self) -> None:
        """Stop following the job, and close the widget."""
        self._unsubscribe()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().close()
