"""One version's panel: a header (status word and timings), the streamed text, actions.

The panel buffers streamed text; :meth:`VersionPanel.flush` is the only place that
writes the text widget, so the owner decides how often that happens (see
``versions.py``). Everything model-made is ``html.escape``d before it becomes HTML.
"""

from __future__ import annotations

import html
from collections.abc import Callable

import ipywidgets as widgets

from ..results import Version, failure_text

__all__ = ["STATUS_WORDS", "VersionPanel", "status_word"]

#: What the panel shows for each engine status (the engine's "ok" reads "done").
STATUS_WORDS: dict[str, str] = {
    "queued": "queued",
    "running": "running",
    "retrying": "retrying",
    "ok": "done",
    "failed": "failed",
    "cancelled": "cancelled",
}


def status_word(status: str) -> str:
    return STATUS_WORDS.get(status, status)


def _num(value: float | None, unit: str, digits: int = 2) -> str | None:
    return None if value is None else f"{value:.{digits}f}{unit}"


class VersionPanel:
    """The widgets of one version; ``box`` is what goes into the grid."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.version: Version | None = None
        self.status = "queued"
        self.attempt = 0
        self.parts: list[str] = []  # text streamed by the current attempt
        self.deltas = 0
        self.dirty = False
        self.edited = False
        self.selected = False
        self.busy = False  # the owner is running something: no Retry meanwhile
        self.t0 = 0.0  # loop time at which this version's run started
        self.header = widgets.HTML()
        self.header.add_class("arboris-panel-header")
        self.body = widgets.HTML(layout=widgets.Layout(max_height="24em", overflow="auto"))
        self.body.add_class("arboris-panel-text")
        self.select_button = widgets.Button(description="Select", disabled=True)
        self.retry_button = widgets.Button(description="Retry", disabled=True)
        self.edit_button = widgets.Button(description="Edit", disabled=True)
        self.instruction = widgets.Text(placeholder="extra instruction for Retry (optional)")
        self.editor = widgets.Textarea(layout=widgets.Layout(width="100%", height="16em"))
        self.save_button = widgets.Button(description="Save", button_style="primary")
        self.cancel_button = widgets.Button(description="Cancel")
        self.edit_box = widgets.VBox(
            [self.editor, widgets.HBox([self.save_button, self.cancel_button])],
            layout=widgets.Layout(display="none"),
        )
        actions = widgets.HBox([self.select_button, self.retry_button, self.edit_button])
        self.note = widgets.HTML()  # the outcome of this panel's last action, in words
        self.note.add_class("arboris-panel-note")
        self.box = widgets.VBox(
            [self.header, self.body, self.edit_box, actions, self.note, self.instruction],
            layout=widgets.Layout(border="1px solid #ddd", padding="4px", min_width="0"),
        )
        self.box.add_class("arboris-panel")
        self.box.add_class(f"arboris-panel-{index}")
        self.cancel_button.on_click(lambda _b: self.close_editor())
        self.render_header(0.0)

    # -- state changes (from engine events) -------------------------------------------
    def queued(self, version: Version) -> None:
        self.version, self.status, self.attempt = version, "queued", 0
        self.parts, self.deltas, self.edited, self.selected = [], 0, False, False
        self.dirty = True
        self.show_note("")

    def started(self, attempt: int) -> None:
        """A new attempt: its text replaces the previous attempt's partial text."""
        self.attempt = attempt
        self.status = "retrying" if attempt > 1 else "running"
        self.parts, self.deltas, self.dirty = [], 0, True

    def retrying(self) -> None:
        self.status = "retrying"
        self.parts, self.deltas, self.dirty = [], 0, True

    def append(self, text: str) -> bool:
        """Buffer a delta; True when it is the attempt's first (to be shown at once)."""
        self.parts.append(text)
        self.deltas += 1
        self.dirty = True
        return self.deltas == 1

    def finished(self, version: Version) -> None:
        self.version, self.status, self.dirty = version, version.status, True

    # -- rendering ---------------------------------------------------------------------
    def text(self, lang: str = "en") -> str:
        """What the body shows: the final text when done, else the streamed text."""
        version = self.version
        if self.status == "ok" and version is not None:
            return version.content or ""
        if self.status == "failed" and version is not None:
            return failure_text(version.error, lang)
        if self.status == "cancelled":
            return ""
        return "".join(self.parts)

    def flush(self, now: float, lang: str = "en", *, header: bool = False) -> int:
        """Write buffered text to the body (one message); returns characters sent.

        The header (timings, token count) is redrawn only when ``header`` is set: on
        state changes and at the owner's slower refresh, not at every text flush.
        """
        if header:
            self.render_header(now)
        if not self.dirty:
            return 0
        self.dirty = False
        text = self.text(lang)
        with self.body.hold_sync():
            self.body.value = (
                f'<div class="arboris-text" style="white-space: pre-wrap">{html.escape(text)}</div>'
            )
        return len(text)

    def render_header(self, now: float) -> None:
        """Title, status word, badges and timings (``now``: seconds since run start)."""
        word = status_word(self.status)
        title = f"Version {self.index}"
        if self.version is not None and self.version.title:
            title += f" · {self.version.title}"
        badges = "".join(
            f' <span class="arboris-badge">{name}</span>'
            for name, on in (("selected", self.selected), ("edited", self.edited))
            if on
        )
        stats = " · ".join(s for s in self._stats(now) if s)
        value = (
            f'<b class="arboris-title">{html.escape(title)}</b> '
            f'<span class="arboris-status arboris-status-{word}" data-status="{word}">{word}</span>'
            f'{badges} <span class="arboris-stats">{html.escape(stats)}</span>'
        )
        with self.header.hold_sync():
            self.header.value = value
        self.sync_buttons()

    def _stats(self, now: float) -> list[str | None]:
        v = self.version
        if v is None or v.started_at is None:
            return []
        final = v.done
        duration = v.duration_s if final else now - v.started_at
        tokens = v.output_tokens if v.ok else self.deltas
        rate = v.tokens_per_s if v.ok else None
        attempt = f"attempt {self.attempt}" if self.attempt > 1 else None
        return [
            attempt,
            _num(v.ttft_s, " s TTFT"),
            _num(duration, " s"),
            f"{tokens} tok" if tokens else None,
            _num(rate, " tok/s", 0),
        ]

    # -- actions -------------------------------------------------------------------------
    def sync_buttons(self) -> None:
        """Select/Edit only for a done version; Retry once it ended and nothing runs."""
        ok = self.status == "ok"
        ended = self.status in {"ok", "failed", "cancelled"}
        self.select_button.disabled = not ok or self.selected
        self.edit_button.disabled = not ok
        self.retry_button.disabled = self.busy or not ended

    def show_note(self, value: str) -> None:
        """Show escaped HTML (an action's outcome or error) under the panel's buttons."""
        self.note.value = value

    def open_editor(self) -> None:
        self.editor.value = self.text()
        self.edit_box.layout.display = "flex"

    def close_editor(self) -> None:
        self.edit_box.layout.display = "none"

    def on(
        self,
        *,
        select: Callable[[int], object],
        retry: Callable[[int, str], object],
        save: Callable[[int, str], object],
    ) -> None:
        """Wire the buttons to the owner's actions (called with this panel's index)."""
        self.select_button.on_click(lambda _b: select(self.index))
        self.retry_button.on_click(lambda _b: retry(self.index, self.instruction.value))
        self.edit_button.on_click(lambda _b: self.open_editor())
        self.save_button.on_click(lambda _b: save(self.index, self.editor.value))
