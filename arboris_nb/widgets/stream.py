"""DeltaStream: the panels' streamed text, sent to the browser as small deltas.

Why: a widget trait resends its whole value on every change, so streaming a chapter by
trait costs O(length) per update and O(length²) per run. Here every panel's *new* text
goes out as a delta, and one custom message on one shared channel model carries the
deltas of every panel that has any (``{"t": ms, "p": {index: [gen, offset, text,
tokens]}}``; see ``static/panel.js``). A message costs several hundred bytes of Jupyter
headers, so the flush policy batches:

* the first token of an attempt goes out at once (a reader sees the stream start);
* after that, a flush when the pending text reaches ``budget_bytes`` (but not sooner than
  ``min_interval_s`` after the last one), and at the latest ``max_interval_s`` after the
  oldest pending delta.

So a message carries ~``budget_bytes`` of text when the stream is fast and whatever
``max_interval_s`` collected when it is slow: the wire cost per character is a constant,
independent of the chapter's length (docs/benchmarks.md has the measured numbers).
Timers run on the kernel's loop clock, so a fake clock (looptime) makes them exact.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any, Protocol

import ipywidgets

from ..errors import ConfigError

__all__ = ["DeltaSource", "DeltaStream"]


class DeltaSource(Protocol):
    """A panel whose unsent text the stream collects at a flush."""

    index: int

    def take(self) -> list[Any] | None:
        """``[gen, offset, text, tokens]`` of the text not sent yet (None: nothing)."""


class DeltaStream:
    """One channel model and the flush policy for every panel's deltas."""

    def __init__(
        self,
        *,
        budget_bytes: int = 2048,
        min_interval_s: float = 0.1,
        max_interval_s: float = 1.0,
    ) -> None:
        if not 64 <= budget_bytes <= 1_000_000:
            raise ConfigError(f"budget_bytes must be from 64 to 1000000, got {budget_bytes}")
        if not 0.0 <= min_interval_s <= max_interval_s <= 10.0:
            raise ConfigError(
                "need 0 <= min_interval_s <= max_interval_s <= 10, "
                f"got {min_interval_s} and {max_interval_s}"
            )
        self.budget_bytes = budget_bytes
        self.min_interval_s = min_interval_s
        self.max_interval_s = max_interval_s
        # A bare model (no view): the panels' front-ends listen to its custom messages.
        self.channel = ipywidgets.Widget()
        self.messages = 0  # flushes that sent something (for tests and benchmarks)
        self._dirty: dict[int, DeltaSource] = {}
        self._pending = 0  # bytes of text waiting
        self._last = -math.inf  # loop time of the last flush
        self._timer: asyncio.TimerHandle | None = None
        self._due = math.inf

    def push(self, source: DeltaSource, nbytes: int, *, urgent: bool = False) -> None:
        """``source`` has ``nbytes`` more to send; ``urgent`` (a first token) flushes now."""
        self._dirty[source.index] = source
        self._pending += nbytes
        loop = asyncio.get_running_loop()
        now = loop.time()
        if urgent:
            self.flush()
        elif self._pending >= self.budget_bytes:
            self._arm(loop, max(now, self._last + self.min_interval_s))
        else:
            self._arm(loop, now + self.max_interval_s)

    def flush(self) -> None:
        """Send every pending delta now, in one message."""
        self._cancel_timer()
        deltas = {str(i): d for i, s in self._dirty.items() if (d := s.take()) is not None}
        self._dirty.clear()
        self._pending = 0
        if not deltas:
            return
        try:
            self._last = asyncio.get_running_loop().time()
        except RuntimeError:
            self._last = -math.inf
        self.messages += 1
        # Wall-clock send time: the browser compares it with Date.now() (same machine).
        self.channel.send({"t": round(time.time() * 1000), "p": deltas})

    def close(self) -> None:
        self._cancel_timer()
        self.channel.close()

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if at <= loop.time():
            self.flush()
        elif at < self._due:  # only ever earlier: the oldest pending delta sets the deadline
            self._cancel_timer()
            self._due = at
            self._timer = loop.call_at(at, self.flush)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._due = None, math.inf
