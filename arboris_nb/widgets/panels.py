"""One version's panel: its state, its transitions, its live view and its action buttons.

The panel owns what it shows. The widget calls one transition per engine event
(:meth:`VersionPanel.queued`, :meth:`~VersionPanel.started`, :meth:`~VersionPanel.append`,
:meth:`~VersionPanel.retrying`, :meth:`~VersionPanel.finished` …) and never writes a
panel's fields. Header and body are drawn in the browser by :class:`PanelView` (an
anywidget, ``static/panel.js``): a transition changes a few synced traits (one message),
streamed text leaves through a :class:`~arboris_nb.widgets.stream.DeltaStream` as deltas,
and the final text lands in the synced ``text`` trait, so a saved notebook keeps it.
Model output only ever reaches the page as text nodes, never as HTML.

Under the buttons, the panel's note (an HTML widget, CSS class ``arboris-panel-note``)
says in words how the last action started on this panel ended — "✓ edit saved",
"Regenerated: done.", or what to do after an error (``actions.py`` writes it, escaped).

A panel's own **Stop** stops this version only (the others go on). A cancelled version
keeps what it had written: the body shows it, the note says why it stopped (stopped, or
``surplus`` — the run kept the first N to finish) and that it cannot be selected.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anywidget
import ipywidgets as widgets
import traitlets

from ..console import version_bill
from ..results import Version
from .actions import note_html
from .desk import VersionKey, key_label

__all__ = ["STATUS_WORDS", "PanelView", "VersionPanel", "status_word"]

_STATIC = Path(__file__).parent / "static"

#: What the panel shows for each engine status (the engine's "ok" reads "done").
STATUS_WORDS: dict[str, str] = {
    "idle": "idle",
    "queued": "queued",
    "running": "running",
    "retrying": "retrying",
    "ok": "done",
    "failed": "failed",
    "cancelled": "cancelled",
}
_LIVE = {"running", "retrying"}
_ENDED = {"done", "failed", "cancelled"}
_STOPPABLE = {"queued", *_LIVE}
_WHY_CANCELLED = {
    "surplus": "Surplus: the run kept the first versions to finish.",
    "stopped": "Stopped on request.",
    "run_cancelled": "Stopped with the run.",
}


def status_word(status: str) -> str:
    return STATUS_WORDS.get(status, status)


def _num(value: float | None, unit: str, digits: int = 2) -> str | None:
    return None if value is None else f"{value:.{digits}f}{unit}"


def _units(text: str) -> int:
    """Length in UTF-16 code units, as the browser's ``String.length`` counts."""
    return len(text.encode("utf-16-le")) // 2


class PanelView(anywidget.AnyWidget):
    """The browser side of one panel: header (title, status, stats, clock) and text."""

    _esm = _STATIC / "panel.js"
    _css = _STATIC / "arboris.css"
    index = traitlets.Int(0).tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)
    status = traitlets.Unicode("idle").tag(sync=True)
    badges = traitlets.List(traitlets.Unicode()).tag(sync=True)
    stats = traitlets.Unicode("").tag(sync=True)
    clock_s = traitlets.Float(0.0).tag(sync=True)  # run time when sent; ticks in the browser
    text = traitlets.Unicode("").tag(sync=True)  # the final text; "" while streaming
    placeholder = traitlets.Unicode("").tag(sync=True)  # shown while the body is empty
    gen = traitlets.Int(0).tag(sync=True)  # bumped whenever the body starts over
    wide = traitlets.Bool(False).tag(sync=True)
    channel = anywidget.WidgetTrait().tag(sync=True)  # the DeltaStream's channel model


class VersionPanel:
    """One version: ``box`` (view + buttons) goes into the grid.

    What it shows is public and read-only: :attr:`status` (a word of
    :data:`STATUS_WORDS`), :attr:`title`, :attr:`stats`, :attr:`badges`, :attr:`note`
    (escaped HTML) and :attr:`text` (exactly the text the browser has been sent).
    ``retry=n`` makes it the panel of retry n of version ``index`` (a linked version,
    :attr:`key` ``(index, n)``; CSS classes ``arboris-retry-panel``,
    ``arboris-panel-<index>-retry-<n>``). :attr:`notes` is its scene-notes field.
    """

    def __init__(self, index: int, channel: widgets.Widget, *, retry: int | None = None) -> None:
        self.index = index
        self.key: VersionKey = index if retry is None else (index, retry)
        self.version: Version | None = None
        self.view = PanelView(index=index, channel=channel, title=key_label(self.key))
        self.view.on_msg(self._on_front_end)
        self._attempt = 0
        self._sent: list[str] = []  # the attempt's text the browser has
        self._pending: list[str] = []  # streamed, not sent yet
        self._units = 0  # UTF-16 length of _sent (the next delta's offset)
        self._tokens = 0
        self._selected = self._edited = False
        self._busy = False  # the owner runs something: no Retry meanwhile
        self._build_actions()
        self.idle()

    def _build_actions(self) -> None:
        self.select_button = widgets.Button(description="Select", disabled=True)
        self.stop_button = widgets.Button(
            description="Stop", disabled=True, tooltip="Stop this version; the others go on"
        )
        self.retry_button = widgets.Button(description="Retry", disabled=True)
        self.edit_button = widgets.Button(description="Edit", disabled=True)
        self.wide_button = widgets.ToggleButton(
            description="Wide", tooltip="Give this panel the full width"
        )
        self.instruction = widgets.Text(placeholder="extra instruction for Retry (optional)")
        self.notes = widgets.Textarea(
            placeholder="scene notes: kept with this version, sent with Retry",
            rows=2,
            continuous_update=False,  # stored when the field loses focus, not per key
            layout=widgets.Layout(width="auto"),
        )
        self.notes.add_class("arboris-panel-notes")
        self.editor = widgets.Textarea(layout=widgets.Layout(width="100%", height="16em"))
        self.save_button = widgets.Button(description="Save", button_style="primary")
        self.cancel_button = widgets.Button(description="Cancel")
        self.edit_box = widgets.VBox(
            [self.editor, widgets.HBox([self.save_button, self.cancel_button])],
            layout=widgets.Layout(display="none"),
        )
        buttons = [
            self.select_button,
            self.retry_button,
            self.edit_button,
            self.stop_button,
            self.wide_button,
        ]
        for button in buttons:  # sized to their words, so five fit a third of the page
            button.layout = widgets.Layout(width="auto", min_width="3.5em", flex="1 1 auto")
        actions = widgets.HBox(buttons, layout=widgets.Layout(flex_flow="row wrap"))
        self.note_view = widgets.HTML()  # the outcome of this panel's last action, in words
        self.note_view.add_class("arboris-panel-note")
        self.box = widgets.VBox(
            [self.view, self.edit_box, actions, self.note_view, self.instruction, self.notes],
            layout=widgets.Layout(border="1px solid #ddd", padding="4px", min_width="0"),
        )
        self.box.add_class("arboris-panel")
        if isinstance(self.key, tuple):
            self.box.add_class("arboris-retry-panel")
            self.box.add_class(f"arboris-panel-{self.index}-retry-{self.key[1]}")
        else:
            self.box.add_class(f"arboris-panel-{self.index}")
        self.cancel_button.on_click(lambda _b: self.close_editor())
        self.edit_button.on_click(lambda _b: self.open_editor())
        self.wide_button.observe(self._widen, "value")

    # -- what it shows ----------------------------------------------------------------
    @property
    def status(self) -> str:
        return str(self.view.status)

    @property
    def title(self) -> str:
        return str(self.view.title)

    @property
    def stats(self) -> str:
        return str(self.view.stats)

    @property
    def badges(self) -> tuple[str, ...]:
        return tuple(self.view.badges)

    @property
    def note(self) -> str:
        """The note under the buttons, as the escaped HTML shown (see :meth:`show_note`)."""
        return str(self.note_view.value)

    @property
    def text(self) -> str:
        """The body's text: the final text, else what has been streamed to the browser."""
        return str(self.view.text) or "".join(self._sent)

    # -- transitions (one per engine event; each is one message to the browser) --------
    def idle(self) -> None:
        """Before the first run: nothing is queued yet."""
        self.version = None
        self._show("idle", placeholder="Press Generate to write this version.", restart=True)

    def queued(self, version: Version | None = None) -> None:
        self.version, self._attempt = version, 0
        self._selected = self._edited = False
        self.notes.value = ""
        self.show_note("")  # a new run or a retry: the last action's outcome is history
        self._show("queued", placeholder="Waiting for a free slot…", restart=True)

    def started(self, version: Version, attempt: int, t: float) -> None:
        """A new attempt: its text replaces the previous attempt's partial text."""
        self.version, self._attempt = version, attempt
        word = "retrying" if attempt > 1 else "running"
        self._show(word, placeholder="Waiting for the first token…", restart=True, t=t)

    def retrying(self, version: Version, failed: int, error: str, delay_s: float, t: float) -> None:
        """Attempt ``failed`` failed: its partial text goes; the backoff shows."""
        self.version = version
        waiting = f"Attempt {failed} failed ({error}); trying again in {delay_s:.1f} s…"
        self._show("retrying", placeholder=waiting, restart=True, t=t)

    def append(self, text: str, t: float) -> tuple[int, bool]:
        """Buffer a streamed delta; returns (its bytes, whether it is the attempt's first)."""
        first = not self._tokens
        self._pending.append(text)
        self._tokens += 1
        if first and self.version is not None:  # the header gains the TTFT
            self._show(self.status, placeholder="", t=t)
        return len(text.encode()), first

    def take(self) -> list[Any] | None:
        """The unsent text as a delta ``[gen, offset, text, tokens]`` (the stream's source)."""
        if not self._pending:
            return None
        text = "".join(self._pending)
        delta = [self.view.gen, self._units, text, self._tokens]
        self._sent.append(text)
        self._units += _units(text)
        self._pending = []
        return delta

    def finished(self, version: Version, lang: str = "en") -> None:
        """Done, failed or cancelled: the final text replaces the streamed one. A cancelled
        version shows what it had written, and the note says why it stopped."""
        self.version, self._edited = version, version.edited
        word = status_word(version.status)
        placeholder = "Stopped before it finished." if word == "cancelled" else ""
        text = version.display_text(lang) or (version.partial or "" if word == "cancelled" else "")
        self._show(word, placeholder=placeholder, text=text, restart=True)
        if word == "cancelled":
            self.show_note(note_html(_cancelled_note(version)))

    def mark_selected(self, selected: bool) -> None:
        self._selected = selected
        self._show(self.status, text=self.view.text)

    def mark_edited(self, version: Version) -> None:
        """The editor saved ``version``'s new text: show it, say so, close the editor."""
        self.version, self._edited = version, True
        self.close_editor()
        self._show(self.status, text=version.content or "")
        self.show_note(note_html("✓ edit saved"))

    def set_busy(self, busy: bool) -> None:
        self._busy = busy
        self._sync_buttons()

    def _show(
        self,
        word: str,
        *,
        placeholder: str | None = None,
        text: str = "",
        restart: bool = False,
        t: float | None = None,
    ) -> None:
        """Write the view's traits in one message; ``restart`` empties the body."""
        view = self.view
        with view.hold_sync():
            if restart and (self._sent or self._pending or view.text):
                view.gen += 1  # the browser drops the streamed text it holds
            if restart:
                self._sent, self._pending, self._units, self._tokens = [], [], 0, 0
            view.status, view.text = word, text
            if placeholder is not None:
                view.placeholder = placeholder
            view.title, view.badges, view.stats = self._title(), self._badges(), self._stats()
            if t is not None and self.version is not None and self.version.started_at is not None:
                view.clock_s = round(t - self.version.started_at, 3)
        self._sync_buttons()

    def _title(self) -> str:
        version = self.version
        title = key_label(self.key)
        return title + (f" · {version.title}" if version is not None and version.title else "")

    def _badges(self) -> list[str]:
        v = self.version
        hedged = v is not None and v.hedged
        partial = v is not None and self.status == "cancelled" and bool(v.partial)
        flags = (
            ("selected", self._selected),
            ("edited", self._edited),
            ("hedged", hedged),
            ("partial", partial),
        )
        return [name for name, on in flags if on]

    @property
    def outcome(self) -> str:
        """The progress line's word for this panel: its status, ``surplus`` for a version
        cancelled because the run kept the first N (not a stop)."""
        v = self.version
        surplus = v is not None and self.status == "cancelled" and v.cancel_reason == "surplus"
        return "surplus" if surplus else self.status

    def _stats(self) -> str:
        """Timings: the TTFT while running (the browser adds the clock), all when done."""
        v = self.version
        if v is None or v.started_at is None:
            return ""
        final = self.status in _ENDED
        attempt = f"attempt {self._attempt}" if self._attempt > 1 else None
        parts = [attempt, _num(v.ttft_s, " s TTFT")]
        if final:
            tokens = v.output_tokens if v.ok else None
            wasted = v.wasted_tokens
            parts += [
                _num(v.duration_s, " s"),
                f"{tokens} tok" if tokens else None,
                _num(v.tokens_per_s if v.ok else None, " tok/s", 0),
                "hedge won" if v.hedge_won else None,
                f"{wasted} tok not kept" if wasted else None,
                version_bill(v),  # input billed and cost, once it ended
            ]
        return " · ".join(p for p in parts if p)

    # -- actions -------------------------------------------------------------------------
    def _sync_buttons(self) -> None:
        """Select/Edit only for a done version; Retry once it ended and nothing runs."""
        ok = self.status == "done"
        self.select_button.disabled = not ok or self._selected
        self.edit_button.disabled = not ok
        self.retry_button.disabled = self._busy or self.status not in _ENDED
        self.stop_button.disabled = self.status not in _STOPPABLE

    def show_note(self, value: str) -> None:
        """Show escaped HTML (an action's outcome or error) under the panel's buttons."""
        self.note_view.value = value

    def open_editor(self) -> None:
        self.editor.value = self.text
        self.edit_box.layout.display = "flex"

    def close_editor(self) -> None:
        self.edit_box.layout.display = "none"

    def _widen(self, change: dict[str, Any]) -> None:
        wide = bool(change["new"])
        self.view.wide = wide
        self.box.layout.grid_column = "1 / -1" if wide else None

    def _on_front_end(self, _view: object, content: Any, _buffers: object) -> None:
        """A view that missed deltas asks for the attempt's text so far."""
        if isinstance(content, dict) and content.get("sync") == self.view.gen:
            self.view.send({"sync": [self.view.gen, "".join(self._sent), self._tokens]})

    def on(
        self,
        *,
        select: Callable[[VersionKey], object],
        retry: Callable[[VersionKey, str, str], object],
        save: Callable[[VersionKey, str], object],
        stop: Callable[[VersionKey], object],
        notes: Callable[[VersionKey, str], object],
    ) -> None:
        """Wire the buttons to the owner's actions (called with this panel's key); the
        notes field calls ``notes`` when the person leaves it with a change."""
        self.select_button.on_click(lambda _b: select(self.key))
        self.stop_button.on_click(lambda _b: stop(self.key))
        self.retry_button.on_click(
            lambda _b: retry(self.key, self.instruction.value, self.notes.value)
        )
        self.save_button.on_click(lambda _b: save(self.key, self.editor.value))
        self.notes.observe(lambda change: self._notes_changed(notes, change["new"]), "value")

    def _notes_changed(self, notes: Callable[[VersionKey, str], object], text: str) -> None:
        """Only a change to what the version holds is stored (not a load showing it)."""
        held = (self.version.notes if self.version is not None else None) or ""
        if self.version is not None and text != held:
            notes(self.key, text)

    def show_notes(self, text: str | None) -> None:
        """Show the version's stored notes (nothing is stored again)."""
        self.notes.value = text or ""


def _cancelled_note(version: Version) -> str:
    """Why a version was cancelled, and what became of its text."""
    why = _WHY_CANCELLED.get(version.cancel_reason or "", "Stopped before it finished.")
    if version.partial:
        return f"{why} The text above is what it had written; it cannot be selected."
    return why
