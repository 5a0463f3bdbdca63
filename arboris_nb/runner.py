"""The runner: one run's version tasks — admission, attempts, retries, timing, events.

This is the only module that knows about concurrency, retries and timing. It is given a
backend, a limiter, a retry policy and the event subscribers, and knows nothing about
files: the run store and the reply cache are wired in by the handle layer
(:mod:`arboris_nb.engine`), the store as a subscriber and the cache as ``known``, a
look-up of replies that need no request. Each version is its own task;
``gather(return_exceptions=True)`` collects them so a failing version never cancels the
others.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from . import _messages
from .backends.base import (
    Backend,
    ChatRequest,
    Connection,
    Message,
    Served,
    Usage,
    closing_stream,
)
from .errors import BackendError, BackendTimeout, ServerError
from .events import (
    Event,
    EventHandler,
    LimitChanged,
    RunFinished,
    RunStarted,
    TokenDelta,
    VersionCancelled,
    VersionFailed,
    VersionFinished,
    VersionQueued,
    VersionRetrying,
    VersionStarted,
)
from .limits import Limiter
from .prompts import parse_reply
from .results import Attempt, Run, Version
from .retry import RetryPolicy

if sys.version_info >= (3, 11):
    from asyncio import timeout_at as _timeout_at
else:  # pragma: no cover - Python 3.10
    from async_timeout import timeout_at as _timeout_at

__all__ = ["KnownReply", "Runner"]

log = logging.getLogger("arboris_nb")


class KnownReply(Protocol):
    """A reply known before asking (the reply cache's): the version needs no request."""

    @property
    def content(self) -> str: ...

    @property
    def title(self) -> str | None: ...

    @property
    def summary(self) -> str | None: ...

    @property
    def output_tokens(self) -> int: ...


#: Looks up a version index's known reply; None means "ask the model".
KnownReplies = Callable[[int], KnownReply | None]


@dataclass
class _Outcome:
    text: str
    tokens: int
    from_usage: bool


class Runner:
    """One run: the shared state of its version tasks.

    Made by :func:`~arboris_nb.engine.start_versions` and driven by its
    :class:`~arboris_nb.handle.RunHandle`. ``known`` answers versions without a request
    (the reply cache); ``handlers`` hear every event, in order.
    """

    def __init__(
        self,
        run: Run,
        messages: list[Message],
        *,
        backend: Backend,
        limiter: Limiter,
        retry: RetryPolicy,
        handlers: list[EventHandler],
        temperature: float,
        max_tokens: int | None,
        known: KnownReplies | None = None,
    ) -> None:
        self.run = run
        self.messages = messages
        self.backend = backend
        self.limiter = limiter
        self.retry = retry
        self.handlers = handlers
        # TokenDelta is most of the traffic (one per streamed chunk): it is built only
        # when a subscriber wants it, and only they hear it (events.py: wants_tokens).
        self.token_handlers = [h for h in handlers if getattr(h, "wants_tokens", True)]
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.rng = random.Random(retry.seed)
        self.known = known
        # One task per version in parallel mode (one for all in serial mode); a version
        # added later would get its task here too, and ``settle`` waits for it.
        self.tasks: list[asyncio.Task[None]] = []
        self.stopping = False  # set by cancel(), even before any task exists

    # -- plumbing ---------------------------------------------------------------------
    def now(self) -> float:
        return self.loop.time() - self.t0

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

    def _say(self, key: str, version: Version, **values: object) -> None:
        if log.isEnabledFor(logging.INFO):  # the text is not even built otherwise
            log.info(_messages.text(key, i=version.index, n=self.run.version_count, **values))

    # -- the run ----------------------------------------------------------------------
    async def go(self) -> None:
        """The whole run: announce it, open the backend, run the versions, close."""
        run = self.run
        log.info(
            _messages.text(
                "plan",
                project=run.project,
                chapter=run.chapter,
                n=run.version_count,
                parallel=run.parallel,
            )
        )
        self.emit(RunStarted)
        try:
            async with self.backend.open() as conn:
                await self.execute(conn)
        finally:
            run.elapsed_s = self.now()
            log.info(_messages.text("done", s=run.elapsed_s, parallel=run.parallel))
            self.emit(RunFinished)

    async def execute(self, conn: Connection) -> None:
        for version in self.run.versions:
            version.queued_at = self.now()
            self.emit(VersionQueued, version=version)
        # cancel() before the start leaves every version to close_unfinished.
        if not self.stopping and self.run.parallel:
            self.tasks = [asyncio.ensure_future(self.one(conn, v)) for v in self.run.versions]
        elif not self.stopping:
            self.tasks = [asyncio.ensure_future(self.serial(conn))]
        try:
            await self.settle()
        finally:
            self.close_unfinished()

    async def settle(self) -> None:
        """Wait for every version task, including any started while waiting."""
        waited = 0
        while waited < len(self.tasks):
            batch, waited = self.tasks[waited:], len(self.tasks)
            await asyncio.gather(*batch, return_exceptions=True)

    async def serial(self, conn: Connection) -> None:
        for version in self.run.versions:
            await self.one(conn, version)

    def cancel(self) -> None:
        """Cancel every version still queued or running (finished ones are kept)."""
        self.stopping = True
        for task in self.tasks:
            task.cancel()

    def close_unfinished(self) -> None:
        """Anything not finished when the run ends was cancelled (serial leftovers)."""
        for version in self.run.versions:
            if not version.done:
                self.mark_cancelled(version)

    def mark_cancelled(self, version: Version) -> None:
        version.status = "cancelled"
        version.content = None
        version.finished_at = self.now()
        if version.attempt_log and version.attempt_log[-1].finished_at is None:
            version.attempt_log[-1].finished_at = version.finished_at
            version.attempt_log[-1].error_type = "CancelledError"
        self._say("cancel", version)
        self.emit(VersionCancelled, version=version)

    # -- one version ------------------------------------------------------------------
    async def one(self, conn: Connection, version: Version) -> None:
        if self.replay(version):
            return
        try:
            await self.attempts(conn, version)
        except asyncio.CancelledError:
            self.mark_cancelled(version)
            raise
        except Exception as exc:  # a backend bug fails this version, not the batch
            self.fail(version, exc)

    def replay(self, version: Version) -> bool:
        """Answer from a known reply: no request, no attempt, no timings but the finish."""
        reply = self.known(version.index) if self.known is not None else None
        if reply is None:
            return False
        version.content, version.title, version.summary = reply.content, reply.title, reply.summary
        version.output_tokens = reply.output_tokens
        version.cached = True
        version.finished_at = self.now()
        version.status = "ok"
        self.emit(VersionFinished, version=version)
        return True

    async def attempts(self, conn: Connection, version: Version) -> None:
        for number in range(1, self.retry.attempts + 1):
            async with self.limiter.slot():
                attempt = self.begin(version, number)
                try:
                    outcome = await self.attempt(conn, version, attempt)
                except BackendError as exc:
                    error: BackendError = exc
                    # Inside the slot: an adaptive limiter must hear of a 429 before the
                    # slot it frees is handed to the next request (else 429s cascade).
                    self.observe(ok=False, rate_limited=exc.status == 429, ttft_s=None)
                else:
                    self.observe(ok=True, rate_limited=False, ttft_s=version.ttft_s)
                    self.succeed(version, attempt, outcome)
                    return
            # Outside the slot: a waiting retry must not hold a concurrency slot.
            self.end_attempt(attempt, error)
            if not self.retry.should_retry(error, number):
                self.fail(version, error)
                return
            delay = self.retry.delay(number, error, self.rng)
            if self.past_deadline(version, delay):
                self.fail(version, self.deadline_error(error))
                return
            await self.wait_retry(version, attempt, error, delay)

    def deadline_error(self, error: BackendError) -> BackendError:
        if isinstance(error, BackendTimeout) and "deadline" in str(error):
            return error
        return BackendTimeout(
            f"version deadline of {self.retry.deadline_s:g} s (RetryPolicy.deadline_s) "
            f"leaves no time to retry; last error: {error}",
            status=error.status,
        )

    def observe(self, *, ok: bool, rate_limited: bool, ttft_s: float | None) -> None:
        """Tell the limiter how an attempt went; announce a limit it moved."""
        before = self.limiter.limit
        self.limiter.observe(ok=ok, rate_limited=rate_limited, ttft_s=ttft_s)
        if self.limiter.limit != before:
            self.emit(LimitChanged, limit=self.limiter.limit)

    def begin(self, version: Version, number: int) -> Attempt:
        now = self.now()
        if version.started_at is None:
            version.started_at = now
            self._say("start", version)
        attempt = Attempt(number=number, started_at=now)
        version.attempt_log.append(attempt)
        version.attempts = number
        version.status = "running"
        version.first_token_at = None
        self.emit(VersionStarted, version=version, attempt=number)
        return attempt

    def end_attempt(self, attempt: Attempt, error: BackendError | None) -> None:
        attempt.finished_at = self.now()
        if error is not None:
            attempt.error_type = type(error).__name__
            attempt.status_code = error.status
            attempt.retry_after_s = error.retry_after_s

    async def wait_retry(
        self, version: Version, attempt: Attempt, error: BackendError, delay: float
    ) -> None:
        attempt.wait_s = delay
        version.status = "retrying"
        self._say("retry", version, attempt=attempt.number, error=error, delay=delay)
        self.emit(
            VersionRetrying,
            version=version,
            attempt=attempt.number,
            error=str(error),
            delay_s=delay,
        )
        await asyncio.sleep(delay)

    def past_deadline(self, version: Version, wait_s: float = 0.0) -> bool:
        """True when the deadline has passed, or would before a retry after ``wait_s``."""
        left = self.time_left(version)
        return left is not None and left <= wait_s

    def time_left(self, version: Version) -> float | None:
        if self.retry.deadline_s is None or version.started_at is None:
            return None
        return self.retry.deadline_s - (self.now() - version.started_at)

    async def attempt(self, conn: Connection, version: Version, attempt: Attempt) -> _Outcome:
        """One request. Its partial text is private to it, so a retry never mixes texts."""
        request = ChatRequest(
            messages=self.messages,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            run_id=self.run.run_id,
            version_index=version.index,
            attempt=attempt.number,
        )
        left = self.time_left(version)
        stall = self.retry.stall_s
        deadline = None if left is None else self.loop.time() + left
        try:
            async with _timeout_at(self._next_deadline(deadline, stall)) as guard:
                return await self.consume(conn, request, version, guard, deadline, stall)
        except TimeoutError:
            if deadline is not None and self.loop.time() >= deadline - 1e-9:
                raise BackendTimeout(
                    f"version deadline of {self.retry.deadline_s:g} s passed"
                ) from None
            raise BackendTimeout(f"no token for {stall:g} s (stalled)") from None

    def _next_deadline(self, deadline: float | None, stall: float | None) -> float | None:
        """Loop time at which the attempt is abandoned: the earlier of deadline and stall."""
        stall_at = None if stall is None else self.loop.time() + stall
        limits = [t for t in (deadline, stall_at) if t is not None]
        return min(limits) if limits else None

    async def consume(
        self,
        conn: Connection,
        request: ChatRequest,
        version: Version,
        guard: Any,
        deadline: float | None,
        stall: float | None,
    ) -> _Outcome:
        parts: list[str] = []
        usage: Usage | None = None
        token_handlers = self.token_handlers
        # This loop runs once per streamed chunk of every version: keep it lean.
        # aclosing: an abandoned stream (stall, cancel) closes its HTTP response now,
        # not whenever the garbage collector finalizes the generator.
        async with closing_stream(conn.stream(request)) as stream:
            async for item in stream:
                if isinstance(item, str):
                    if not parts:
                        version.first_token_at = self.now()
                    parts.append(item)
                    if stall is not None:
                        guard.reschedule(self._next_deadline(deadline, stall))
                    if token_handlers:
                        self.emit_token(version, item)
                elif isinstance(item, Usage):
                    usage = item
                elif isinstance(item, Served):
                    version.key_id = item.key_id
        text = "".join(parts)
        if not text.strip():
            raise ServerError("the model returned an empty reply")
        if usage is not None and usage.output_tokens > 0:
            return _Outcome(text, usage.output_tokens, True)
        return _Outcome(text, len(parts), False)

    def succeed(self, version: Version, attempt: Attempt, outcome: _Outcome) -> None:
        self.end_attempt(attempt, None)
        parsed = parse_reply(outcome.text)
        version.content, version.title, version.summary = (
            parsed.content,
            parsed.title,
            parsed.summary,
        )
        version.output_tokens = outcome.tokens
        version.tokens_from_usage = outcome.from_usage
        version.finished_at = self.now()
        version.status = "ok"
        version.error = version.error_type = None
        self._say(
            "finish",
            version,
            s=version.duration_s or 0.0,
            tokens=version.output_tokens,
            attempts=version.attempts,
        )
        self.emit(VersionFinished, version=version)

    def fail(self, version: Version, error: BaseException) -> None:
        version.status = "failed"
        version.content = None
        version.error = str(error) or type(error).__name__
        version.error_type = type(error).__name__
        version.finished_at = self.now()
        if version.attempt_log and version.attempt_log[-1].finished_at is None:
            version.attempt_log[-1].finished_at = version.finished_at
            version.attempt_log[-1].error_type = version.error_type
        log.warning(
            _messages.text("fail", i=version.index, n=self.run.version_count, error=version.error)
        )
        self.emit(VersionFailed, version=version)
