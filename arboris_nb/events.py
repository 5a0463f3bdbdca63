"""Typed events the engine emits, in order, on the loop that runs it.

Subscribers (widget, recorder, store, CLI printer) receive them through ``on_event``;
they must return quickly — ``TokenDelta`` arrives once per streamed chunk. An event
carries the live ``Version`` (or ``Run``) object so subscribers never need to copy state.

A subscriber with the attribute ``wants_tokens = False`` (the run store's recorder, the
reply cache) is not called for ``TokenDelta`` at all, and when no subscriber wants tokens
none is built: per-chunk work is most of the engine's own cost at load-test scale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .results import Run, Version

__all__ = [
    "Event",
    "EventHandler",
    "LimitChanged",
    "RunFinished",
    "RunStarted",
    "TokenDelta",
    "VersionCancelled",
    "VersionEvent",
    "VersionFailed",
    "VersionFinished",
    "VersionHedged",
    "VersionQueued",
    "VersionRetrying",
    "VersionStarted",
]


@dataclass(frozen=True, slots=True)
class Event:
    run: Run
    t: float  # seconds since the run started (engine clock)


@dataclass(frozen=True, slots=True)
class RunStarted(Event):
    pass


@dataclass(frozen=True, slots=True)
class VersionEvent(Event):
    version: Version


@dataclass(frozen=True, slots=True)
class VersionQueued(VersionEvent):
    pass


@dataclass(frozen=True, slots=True)
class VersionStarted(VersionEvent):
    attempt: int


@dataclass(frozen=True, slots=True)
class TokenDelta(VersionEvent):
    text: str


@dataclass(frozen=True, slots=True)
class VersionRetrying(VersionEvent):
    attempt: int  # the attempt that failed
    error: str
    delay_s: float


@dataclass(frozen=True, slots=True)
class VersionHedged(VersionEvent):
    """A duplicate request started for a slow ``attempt`` (it holds a slot of its own)."""

    attempt: int


@dataclass(frozen=True, slots=True)
class VersionFinished(VersionEvent):
    pass


@dataclass(frozen=True, slots=True)
class VersionFailed(VersionEvent):
    pass


@dataclass(frozen=True, slots=True)
class VersionCancelled(VersionEvent):
    pass


@dataclass(frozen=True, slots=True)
class LimitChanged(Event):
    limit: int


@dataclass(frozen=True, slots=True)
class RunFinished(Event):
    pass


EventHandler = Callable[[Event], None]
