"""How a Retry becomes a *linked* version on the desk: a panel of its own after the version
it retries, which hears only that retry's events (issue #13).

:class:`RetryLinks` opens the panel (numbered ``(i, n)``: retry n of version i), gives the
engine the subscribers that fill it, tells the desk which run the retry is as soon as its
first event arrives, takes the panel away again if the retry ended before its run began
(an error, a Stop), and says on the panel how it ended. The widget keeps the job itself.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Coroutine
from typing import Any

from ..events import Event, EventHandler, RunFinished
from ..results import Version
from .board import PanelBoard
from .desk import Desk
from .panels import VersionPanel

__all__ = ["RetryLinks"]


class RetryLinks:
    """The panels of retries on ``board``, known to ``desk``; ``on_finished`` is called
    when a retry's run finishes (the widget redraws what depends on the run)."""

    def __init__(self, board: PanelBoard, desk: Desk, on_finished: Callable[[], None]) -> None:
        self._board, self._desk, self._on_finished = board, desk, on_finished

    def open(self, index: int) -> VersionPanel:
        """A queued panel for the next retry of version ``index``, after its last one."""
        taken = sum(1 for k in self._board.panels if isinstance(k, tuple) and k[0] == index)
        return self._board.add_retry(index, taken + 1)

    def subscribers(self, panel: VersionPanel) -> list[EventHandler]:
        """What hears the retry's events: its panel, and the desk (which run it is)."""
        key = panel.key

        def follow(event: Event) -> None:
            if isinstance(key, tuple) and key not in self._desk.retries:
                self._desk.add_retry(key, event.run)
            if isinstance(event, RunFinished):
                self._on_finished()

        return [self._board.follow(panel), follow]

    async def run(self, coro: Coroutine[Any, Any, Version], panel: VersionPanel) -> Version:
        """Await the retry; one that ended before its run began leaves no panel."""
        try:
            return await coro
        finally:
            if panel.key not in self._desk.retries:
                self._board.drop(panel.key)

    @staticmethod
    def ended(panel: VersionPanel) -> Callable[[Version], None]:
        """What the retry's panel says when it ends (its error shows where Retry was pressed)."""

        def then(version: Version) -> None:
            if version.status == "cancelled":
                note = f"Retry stopped; version {panel.index} is unchanged."
            else:
                word = "done" if version.ok else version.status
                note = f"Retry of version {panel.index}: {word}."
            panel.show_note(html.escape(note))
            panel.show_notes(version.notes)

        return then
