"""PanelBoard: the grid of version panels and the progress line, wired to engine events.

The board is an ``on_event`` subscriber and nothing more: each engine event becomes one
panel transition (the panels own their state), streamed text goes to the
:class:`~arboris_nb.widgets.stream.DeltaStream`, and the progress line is redrawn once per
loop iteration in which some version changed state — never per token. It never times,
retries or limits anything; elapsed times come from the events' own clock. A version
added to the running run (``RunHandle.add_versions``) gets its panel when it is queued.

A retry is a run of its own whose version is linked to one of the run's: it gets a new
panel after that version's (:meth:`PanelBoard.add_retry`), and its events reach only
that panel (:meth:`PanelBoard.follow`); the progress line counts the run's own versions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import ipywidgets as widgets

from .. import _messages
from ..console import run_bill
from ..events import (
    Event,
    EventHandler,
    RunFinished,
    RunStarted,
    TokenDelta,
    VersionCancelled,
    VersionEvent,
    VersionFailed,
    VersionFinished,
    VersionQueued,
    VersionRetrying,
    VersionStarted,
)
from ..results import Run, Version
from .desk import VersionKey
from .panels import VersionPanel
from .progress import RunProgress
from .stream import DeltaStream

__all__ = ["PanelBoard"]

Select = Callable[[VersionKey], object]
Retry = Callable[[VersionKey, str, str], object]
Save = Callable[[VersionKey, str], object]
Stop = Callable[[VersionKey], object]
Notes = Callable[[VersionKey, str], object]


class PanelBoard:
    """``grid`` holds one :class:`VersionPanel` per version; ``progress`` is the line."""

    def __init__(self, n: int, stream: DeltaStream | None = None) -> None:
        self.stream = stream or DeltaStream()
        self.progress = RunProgress()
        self.grid = widgets.GridBox(layout=widgets.Layout(grid_gap="8px", width="100%"))
        self.grid.add_class("arboris-panels")
        self.panels: dict[VersionKey, VersionPanel] = {}
        self._actions: tuple[Select, Retry, Save, Stop, Notes] | None = None
        self._live: set[int] = set()  # id() of runs between RunStarted and RunFinished
        self._t0: float | None = None  # loop time at which the latest run started
        self._elapsed = 0.0  # the latest finished run's elapsed seconds
        self._run: Run | None = None  # the owner's run, whose bill the progress line shows
        self._progress_due = False
        self._make_panels(n)
        self._render_progress()

    def on(self, *, select: Select, retry: Retry, save: Save, stop: Stop, notes: Notes) -> None:
        """Wire every panel's buttons (now, after a resize, on a panel added) to the
        owner's actions."""
        self._actions = (select, retry, save, stop, notes)
        for panel in self.panels.values():
            self._wire(panel)

    def _wire(self, panel: VersionPanel) -> None:
        if self._actions is not None:
            select, retry, save, stop, notes = self._actions
            panel.on(select=select, retry=retry, save=save, stop=stop, notes=notes)

    @property
    def live(self) -> bool:
        """True while a run streams into the board."""
        return bool(self._live)

    def clock(self) -> float:
        """Seconds since the latest run started (its elapsed time once it finished)."""
        if self._live and self._t0 is not None:
            return asyncio.get_running_loop().time() - self._t0
        return self._elapsed

    # -- the owner's commands ----------------------------------------------------------
    def start(self, n: int, run: Run | None = None) -> None:
        """A run is about to start: ``n`` panels, all queued (``run``: its bill is shown)."""
        self._elapsed, self._t0, self._run = 0.0, None, run
        if n != len(self._own()) or len(self._own()) != len(self.panels):
            self._make_panels(n)
        for panel in self.panels.values():
            panel.queued()
        self._render_progress()

    def show(self, run: Run, retries: dict[tuple[int, int], Run], lang: str = "en") -> None:
        """A stored run, as it ended: one panel per version, then each retry's after the
        version it retries (the engine sends no events for it)."""
        self._elapsed, self._t0, self._run = run.elapsed_s or 0.0, None, run
        self._make_panels(0)
        for version in run.versions:
            self._shown(self._add_panel(version.index), version, lang)
            for key in sorted(k for k in retries if k[0] == version.index):
                self._shown(self._add_panel(*key), retries[key].versions[0], lang)
        self._render_progress()

    def _shown(self, panel: VersionPanel, version: Version, lang: str) -> None:
        panel.finished(version, lang)
        panel.show_notes(version.notes)

    def add_retry(self, index: int, n: int) -> VersionPanel:
        """A new panel for retry ``n`` of version ``index``, queued, after its version."""
        panel = self._add_panel(index, n)
        panel.queued()
        return panel

    def drop(self, key: VersionKey) -> None:
        """Take a retry's panel away (its run never began: nothing to show)."""
        panel = self.panels.pop(key, None)
        if panel is not None:
            panel.view.close()
            self._lay_out()

    def follow(self, panel: VersionPanel) -> EventHandler:
        """A subscriber that shows one retry's events on ``panel`` (and nowhere else)."""

        def on_retry_event(event: Event) -> None:
            if isinstance(event, TokenDelta):
                nbytes, first = panel.append(event.text, event.t)
                self.stream.push(panel, nbytes, urgent=first)
            elif isinstance(event, VersionEvent):
                self._show_event(panel, event)
            elif isinstance(event, RunFinished):
                self.stream.flush()

        return on_retry_event

    def abandon(self) -> None:
        """The run could not start (e.g. its client did not open): back to idle."""
        self._elapsed, self._t0 = 0.0, None
        for panel in self.panels.values():
            panel.idle()
        self._render_progress()

    def set_busy(self, busy: bool) -> None:
        for panel in self.panels.values():
            panel.set_busy(busy)

    # -- engine events -------------------------------------------------------------------
    def on_event(self, event: Event) -> None:
        if isinstance(event, TokenDelta):  # the hot path: once per streamed chunk
            panel = self.panels.get(event.version.index)
            if panel is not None:
                nbytes, first = panel.append(event.text, event.t)
                self.stream.push(panel, nbytes, urgent=first)
        elif isinstance(event, VersionEvent):
            self._transition(event)
        elif isinstance(event, RunStarted):
            self._live.add(id(event.run))
            self._t0 = asyncio.get_running_loop().time() - event.t
            self._progress_soon()
        elif isinstance(event, RunFinished):
            self._live.discard(id(event.run))
            self._elapsed = event.run.elapsed_s if event.run.elapsed_s is not None else event.t
            self.stream.flush()
            self._render_progress()

    def _transition(self, event: VersionEvent) -> None:
        panel = self.panels.get(event.version.index)
        if panel is None and isinstance(event, VersionQueued) and self.live:
            panel = self._add_panel(event.version.index)  # added to the running run
        if panel is None:
            return
        self._show_event(panel, event)
        self._progress_soon()

    def _show_event(self, panel: VersionPanel, event: VersionEvent) -> None:
        version = event.version
        if isinstance(event, VersionQueued):
            panel.queued(version)
        elif isinstance(event, VersionStarted):
            panel.started(version, event.attempt, event.t)
        elif isinstance(event, VersionRetrying):
            panel.retrying(version, event.attempt, event.error, event.delay_s, event.t)
        elif isinstance(event, VersionFinished | VersionFailed | VersionCancelled):
            panel.finished(version, _messages.lang())

    # -- drawing -------------------------------------------------------------------------
    def _own(self) -> list[VersionPanel]:
        """The panels of the run's own versions (not its retries)."""
        return [p for k, p in self.panels.items() if isinstance(k, int)]

    def _make_panels(self, n: int) -> None:
        for panel in self.panels.values():
            panel.view.close()
        self.panels = {i: VersionPanel(i, self.stream.channel) for i in range(1, n + 1)}
        for panel in self.panels.values():
            self._wire(panel)
        self._lay_out()

    def _add_panel(self, index: int, retry: int | None = None) -> VersionPanel:
        panel = VersionPanel(index, self.stream.channel, retry=retry)
        self.panels[panel.key] = panel
        self._wire(panel)
        self._lay_out()
        return panel

    def _lay_out(self) -> None:
        """Each retry right after the version it retries; three panels side by side."""
        self.panels = dict(sorted(self.panels.items(), key=lambda item: _order(item[0])))
        columns = min(len(self.panels), 3)  # side by side; wraps beyond three
        self.grid.layout.grid_template_columns = f"repeat({max(columns, 1)}, minmax(0, 1fr))"
        self.grid.children = [p.box for p in self.panels.values()]

    def _progress_soon(self) -> None:
        """Several versions often change state in one loop iteration: draw once."""
        if not self._progress_due:
            self._progress_due = True
            asyncio.get_running_loop().call_soon(self._render_progress)

    def _render_progress(self) -> None:
        self._progress_due = False
        statuses = [p.outcome for p in self._own()]
        live = self.live
        bill = run_bill(self._run) if self._run is not None else None
        self.progress.show(
            statuses, self.clock() if live else self._elapsed, live=live, bill=bill or ""
        )


def _order(key: VersionKey) -> tuple[int, int]:
    return key if isinstance(key, tuple) else (key, 0)
