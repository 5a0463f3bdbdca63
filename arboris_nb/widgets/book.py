"""BookProgress: a whole-book job at a glance — chapters done, versions ok / failed /
running / waiting, elapsed, ETA — as a progress bar and one line of text.

It is a thin view over :meth:`BookJob.status` (a dict): it computes nothing itself. The
job pokes it on engine events (local backend) or on each poll of the store (Celery);
pokes are throttled to one redraw per ``min_interval_s``, with a timer on the kernel's
loop so the last poke of a burst is never lost.

CSS classes: ``arboris-book`` (root), ``arboris-book-bar``, ``arboris-book-line``.
"""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

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
    waiting = status["queued"] + status["pending"] + status["cancelled"]
    parts = [
        f"<b>{html.escape(str(status['job_id']))}</b>",
        f"chapters {status['chapters_done']}/{status['chapters']}",
        f"versions {status['ok']}/{status['units']} ok",
        f"{status['failed']} failed",
        f"{status['running']} running",
        f"{waiting} waiting",
        f"elapsed {format_seconds(status['elapsed_s'])}",
        f"ETA {format_seconds(status['eta_s'])}",
    ]
    return " · ".join(parts)


class BookProgress(widgets.VBox):
    """Progress of a book job; ``source()`` returns the job's status dict."""

    def __init__(self, source: Callable[[], dict[str, Any]], *, min_interval_s: float = 0.25):
        self.bar = widgets.IntProgress(value=0, min=0, max=1, description="book")
        self.bar.add_class("arboris-book-bar")
        self.line = widgets.HTML()
        self.line.add_class("arboris-book-line")
        super().__init__([self.bar, self.line])
        self.add_class("arboris-book")
        self.source = source
        self.min_interval_s = min_interval_s
        self.redraws = 0
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.refresh()

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
        """Redraw from the source now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.render(self.source())

    def render(self, status: dict[str, Any]) -> None:
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
