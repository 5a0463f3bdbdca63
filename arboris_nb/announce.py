"""A run's events, delivered to its subscribers in order, and its log lines.

A broken subscriber must not break generation: its exception is logged and the next
subscriber still hears the event. ``TokenDelta`` is most of the traffic (one per streamed
chunk): it is built only when a subscriber wants it, and only they hear it
(:mod:`arboris_nb.events`: ``wants_tokens``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from . import _messages
from .events import Event, EventHandler, TokenDelta
from .results import Run, Version

__all__ = ["Announcer"]

log = logging.getLogger("arboris_nb")


class Announcer:
    """Tells ``handlers`` what happens to ``run``; ``now`` is the run's clock."""

    def __init__(self, run: Run, handlers: list[EventHandler], now: Callable[[], float]) -> None:
        self.run = run
        self.handlers = handlers
        self.token_handlers = [h for h in handlers if getattr(h, "wants_tokens", True)]
        self.now = now

    def emit(self, cls: Callable[..., Event], **fields: Any) -> None:
        if self.handlers:
            self._deliver(self.handlers, cls(run=self.run, t=self.now(), **fields))

    def emit_token(self, version: Version, text: str) -> None:
        self._deliver(self.token_handlers, TokenDelta(self.run, self.now(), version, text))

    @staticmethod
    def _deliver(handlers: list[EventHandler], event: Event) -> None:
        for handler in handlers:
            try:
                handler(event)
            except Exception:  # a broken subscriber must not break generation
                log.exception("on_event handler %r failed on %s", handler, type(event).__name__)

    def say(self, key: str, version: Version, **values: object) -> None:
        """Log a line about ``version`` (``_messages`` key ``key``) at INFO."""
        if log.isEnabledFor(logging.INFO):  # the text is not even built otherwise
            log.info(_messages.text(key, i=version.index, n=self.run.version_count, **values))
