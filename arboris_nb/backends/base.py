"""The one narrow interface every backend implements.

A backend is a factory of connections: ``async with backend.open() as conn`` runs on
the loop that will use it (so HTTP clients are created in, and closed by, that loop).
``conn.stream(request)`` yields text deltas (``str``), optionally a ``Served`` first
(which key or endpoint took the request) and a ``Usage`` last. It raises
:class:`~arboris_nb.errors.BackendError` subclasses; retries, concurrency, timing and
display all live in the engine, once.

One request may ask for several choices (``request.n > 1``, the ``"n"`` fan-out): the
backend then yields ``ChoiceDelta`` and ``ChoiceEnd`` items tagged with the choice's
0-based index, interleaved as they arrive, and one ``Usage`` for the whole request (the
prompt counted once). A backend that cannot do that may ignore ``n`` and stream one
plain reply: the engine gives it to the first choice and asks again for the others. A
connection may say up front that it will refuse ``n > 1`` with ``accepts_n() -> False``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "Backend",
    "ChatRequest",
    "ChoiceDelta",
    "ChoiceEnd",
    "Connection",
    "Message",
    "Served",
    "StreamItem",
    "Usage",
    "closing_stream",
]

Message = dict[str, str]


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What the engine asks of a backend for one attempt of one version."""

    messages: list[Message]
    temperature: float = 0.75
    max_tokens: int | None = None
    run_id: str = ""
    version_index: int = 1
    attempt: int = 1
    hedge: bool = False  # a duplicate of ``attempt``, started because it was slow
    # With the "n" fan-out: the version index of each choice (``n`` = their count).
    choice_versions: tuple[int, ...] = ()

    @property
    def n(self) -> int:
        """Choices asked for in this one request (1 unless fanned out by ``n``)."""
        return max(1, len(self.choice_versions))

    @property
    def prompt(self) -> str:
        """The last user message (what simple backends respond to)."""
        users = [m["content"] for m in self.messages if m.get("role") == "user"]
        return users[-1] if users else ""


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts reported by the server at the end of a stream (for an ``n > 1``
    request: the whole request's, the prompt counted once). ``cached_input_tokens`` are
    the part of ``input_tokens`` served from the provider's prompt cache (None: not said).
    """

    output_tokens: int
    input_tokens: int | None = None
    cached_input_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class ChoiceDelta:
    """A text delta of choice ``index`` (0-based) of an ``n > 1`` request."""

    index: int
    text: str


@dataclass(frozen=True, slots=True)
class ChoiceEnd:
    """Choice ``index`` of an ``n > 1`` request is complete (its ``finish_reason``)."""

    index: int
    finish_reason: str


@dataclass(frozen=True, slots=True)
class Served:
    """Which key (masked) or endpoint served this request; yielded before any text."""

    key_id: str


StreamItem = str | ChoiceDelta | ChoiceEnd | Usage | Served


@runtime_checkable
class Connection(Protocol):
    def stream(self, request: ChatRequest) -> AsyncIterator[StreamItem]:
        """Stream one completion: text deltas, then optionally ``Usage``."""
        ...


@runtime_checkable
class Backend(Protocol):
    model: str

    def open(self) -> AbstractAsyncContextManager[Connection]:
        """A connection bound to the running event loop; closed on exit."""
        ...


@asynccontextmanager
async def closing_stream(
    items: AsyncIterator[StreamItem],
) -> AsyncIterator[AsyncIterator[StreamItem]]:
    """``contextlib.aclosing`` for any async iterator (a backend need not be a generator):
    an abandoned stream (stall, cancel) closes its HTTP response now, not at GC time."""
    try:
        yield items
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()
