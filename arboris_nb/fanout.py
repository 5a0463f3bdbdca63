"""The ``"n"`` fan-out: one request asks for every version (``n = N``), the streamed
choices go to their versions by index, and the prompt is billed once.

Failure isolation stays per version. A choice that ends badly — no text, or the stream
broke before that choice's end — and every choice of a request that failed as a whole
fall back to separate requests of their own, after the wait a retry would take when the
request failed with a 429 or a 5xx. Choices that ended well are kept even when the
stream broke later. A connection that says it refuses ``n > 1`` (``accepts_n()``; the
OpenAI backend remembers a server's 400 per base URL and model) gets separate requests
from the start.

The request holds one concurrency slot for all its choices: with ``fanout="n"``,
``max_parallel_requests`` limits requests (across the runs that share a limiter), not
versions. Each version still gets its own attempt in its log, billed its share of the
request's usage (:mod:`arboris_nb.billing`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .backends.base import (
    ChatRequest,
    ChoiceDelta,
    ChoiceEnd,
    Connection,
    Served,
    Usage,
    closing_stream,
)
from .billing import Tally
from .errors import BackendError, ServerError
from .pacing import ready
from .results import Attempt, Version

if TYPE_CHECKING:
    from .runner import Runner

__all__ = ["Outcome", "accepts_n", "fan_out"]


@dataclass
class Outcome:
    """A reply that came back whole: its text, the chunks it streamed in and, when it
    ended before its request did (one choice of several), when."""

    text: str
    chunks: int
    ended_at: float | None = None


def accepts_n(conn: Connection) -> bool:
    """False when the connection knows its server refuses ``n > 1``."""
    check = getattr(conn, "accepts_n", None)
    return check is None or bool(check())


async def fan_out(runner: Runner, conn: Connection) -> None:
    """The run's versions: one shared request, then separate ones for what it left."""
    pending = [v for v in runner.run.versions if not runner.answer_from_known(v)]
    error: BaseException | None = None
    if len(pending) > 1 and accepts_n(conn):
        shared = _Shared(runner, pending)
        try:
            await shared.run(conn)
        except asyncio.CancelledError:
            shared.settle(cancelled=True)  # choices that ended are kept
            for version in pending:
                if not version.done:
                    runner.mark_cancelled(version)
            raise
        error = shared.error
    if runner.stopping:
        return
    for version in pending:
        if not version.done:  # its own task: a stop (cancel_version) reaches it
            runner.spawn(version, looked_up=True, after=error)


class _Shared:
    """One request for several versions: routes its choices, then settles each version."""

    def __init__(self, runner: Runner, versions: list[Version]) -> None:
        self.runner = runner
        self.versions = versions
        self.attempts: list[Attempt] = []
        self.tally = Tally(len(versions))
        self.parts: list[list[str]] = [[] for _ in versions]
        self.ended: list[float | None] = [None] * len(versions)
        self.error: BaseException | None = None

    async def run(self, conn: Connection) -> None:
        runner, first = self.runner, self.versions[0]
        async with runner.limiter.slot():
            numbers = [v.attempt_count + 1 for v in self.versions]
            request = runner.requests.build_request(first, numbers[0], self.versions)
            await ready(conn, request)  # pacing counts the n choices' output (pacing.py)
            self.attempts = [
                runner.begin_attempt(v, n) for v, n in zip(self.versions, numbers, strict=True)
            ]
            try:
                await runner.requests.within_limits(
                    first, lambda guard, deadline: self.consume(conn, request, guard, deadline)
                )
            except Exception as exc:  # a BackendError, or a backend's bug: all fall back
                self.error = exc
                runner.requests.report_to_limiter(
                    ok=False,
                    rate_limited=getattr(exc, "status", None) == 429,
                    ttft_s=None,
                    retry_after_s=getattr(exc, "retry_after_s", None),
                )
            else:
                runner.requests.report_to_limiter(ok=True, rate_limited=False, ttft_s=first.ttft_s)
        self.settle()

    async def consume(
        self, conn: Connection, request: ChatRequest, guard: Any, deadline: float | None
    ) -> None:
        async with closing_stream(conn.stream(request)) as stream:
            async for item in stream:
                if isinstance(item, ChoiceDelta):
                    self.text(item.index, item.text, guard, deadline)
                elif isinstance(item, str):  # a backend that ignored n: the first choice
                    self.text(0, item, guard, deadline)
                elif isinstance(item, ChoiceEnd):
                    if 0 <= item.index < len(self.ended) and self.ended[item.index] is None:
                        self.ended[item.index] = self.runner.now()
                elif isinstance(item, Usage):
                    self.tally.usage = item
                elif isinstance(item, Served):
                    for version in self.versions:
                        version.key_id = item.key_id

    def text(self, index: int, text: str, guard: Any, deadline: float | None) -> None:
        if not 0 <= index < len(self.versions):  # more choices than asked for: not ours
            return
        if self.versions[index].done:  # stopped meanwhile: its panel shows no more text
            return
        self.runner.requests.token(self.versions[index], text, guard, deadline)
        self.parts[index].append(text)
        self.tally.add(index, text)

    def complete(self, index: int, cancelled: bool) -> bool:
        """The choice has text and ended, or the whole stream ended cleanly."""
        if not "".join(self.parts[index]).strip():
            return False
        return self.ended[index] is not None or (self.error is None and not cancelled)

    def settle(self, *, cancelled: bool = False) -> None:
        """Bill the request, keep the choices that ended well, end the others' attempts."""
        runner = self.runner
        if not self.attempts:  # cancelled while waiting for a slot: nothing was asked
            return
        error = asyncio.CancelledError() if cancelled else self.error
        runner.requests.bill(self.attempts, self.tally, error)
        for index, (version, attempt) in enumerate(zip(self.versions, self.attempts, strict=True)):
            if version.done:  # stopped while the request ran (its attempt is closed)
                continue
            if self.complete(index, cancelled):
                text, chunks = "".join(self.parts[index]), self.tally.chunks[index]
                runner.mark_ok(version, attempt, Outcome(text, chunks, self.ended[index]))
            elif not cancelled:  # a cancelled attempt is closed by mark_cancelled
                runner.requests.end_attempt(attempt, self.choice_error(index))

    def choice_error(self, index: int) -> BackendError:
        if isinstance(self.error, BackendError):
            return self.error
        if self.error is not None:
            return ServerError(f"the shared request failed: {type(self.error).__name__}")
        return ServerError(
            f"no text for this version in the request for {len(self.versions)} choices "
            f"(choice {index}); asking separately"
        )
