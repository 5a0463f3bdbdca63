"""The runner: one run's version tasks — admission, attempts, retries, hedges, timing,
events — and its live pool (versions added, stopped, or cancelled as surplus).

This is the only module that knows about concurrency, retries and timing. It is given a
backend, a limiter, a retry policy and the event subscribers, and knows nothing about
files: the run store and the reply cache are wired in by the handle layer
(:mod:`arboris_nb.engine`), the store as a subscriber and the cache as ``known``, a
look-up of replies that need no request. Each version is its own task (in serial mode
one at a time); ``gather(return_exceptions=True)`` collects them so a failing version
never cancels the others, and stopping one version cancels only its task, whose slot
goes at once to the next queued version.

Keep the first N: once ``run.keep`` versions are ok, the others are cancelled (reason
``surplus``). Hedging: an attempt with no first token after the
:class:`~arboris_nb.hedging.HedgeClock`'s delay gets one duplicate request, in a slot of
its own; the first of the two to finish wins and the other is cancelled at once.
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
from .config import COUNT_RANGE
from .errors import BackendError, BackendTimeout, ConfigError, ServerError, StateError
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
    VersionHedged,
    VersionQueued,
    VersionRetrying,
    VersionStarted,
)
from .hedging import HedgeClock
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
    attempt: Attempt


class _Stream:
    """One request in progress: its own text (a retry or a hedge never mixes texts) and
    ``settled``, resolved at its first token or when it ends (what a hedge waits on)."""

    __slots__ = ("attempt", "parts", "settled")

    def __init__(self, attempt: Attempt) -> None:
        self.attempt = attempt
        self.parts: list[str] = []
        self.settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def settle(self) -> None:
        if not self.settled.done():
            self.settled.set_result(None)


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
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.rng = random.Random(retry.seed)
        self.known = known
        self.hedges = HedgeClock(retry, self.now) if retry.hedging else None
        # Every task of the run (version tasks and, in serial mode, the driver); a
        # version added later gets its task here too, and ``settle`` waits for it.
        self.tasks: list[asyncio.Task[None]] = []
        self.version_tasks: dict[int, asyncio.Task[None]] = {}
        self.shown: dict[int, _Stream] = {}  # the request whose text a version streams
        self.conn: Connection | None = None
        self.stopping = False  # set by cancel(), even before any task exists
        self.accepting = True  # add_versions() allowed: until the last task is done

    # -- plumbing ---------------------------------------------------------------------
    def now(self) -> float:
        return self.loop.time() - self.t0

    def emit(self, cls: Callable[..., Event], **fields: Any) -> None:
        if not self.handlers:
            return
        event = cls(run=self.run, t=self.now(), **fields)
        for handler in self.handlers:
            try:
                handler(event)
            except Exception:  # a broken subscriber must not break generation
                log.exception("on_event handler %r failed on %s", handler, type(event).__name__)

    def _say(self, key: str, version: Version, **values: object) -> None:
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
        self.conn = conn
        for version in self.run.versions:
            self.enqueue(version)
        # cancel() before the start leaves every version to close_unfinished.
        if not self.stopping and self.run.parallel:
            for version in self.run.versions:
                self.spawn(version)
        elif not self.stopping:
            self.tasks.append(asyncio.ensure_future(self.serial()))
        try:
            await self.settle()
        finally:
            self.accepting = False
            self.close_unfinished()

    async def settle(self) -> None:
        """Wait for every task, including any started while waiting."""
        waited = 0
        while waited < len(self.tasks):
            batch, waited = self.tasks[waited:], len(self.tasks)
            await asyncio.gather(*batch, return_exceptions=True)

    def enqueue(self, version: Version) -> None:
        version.queued_at = self.now()
        self.emit(VersionQueued, version=version)

    def spawn(self, version: Version) -> asyncio.Task[None]:
        """The version's own task: cancelling it stops this version only."""
        task = asyncio.ensure_future(self.one(version))
        self.version_tasks[version.index] = task
        self.tasks.append(task)
        return task

    async def serial(self) -> None:
        """One version at a time, in index order, skipping those already ended (stopped,
        surplus); a version added meanwhile is picked up."""
        while (version := next((v for v in self.run.versions if not v.done), None)) is not None:
            # wait(), not await: a stopped version's CancelledError must not stop the rest.
            await asyncio.wait([self.spawn(version)])
            self.mark_cancelled(version)  # ended without a verdict (cancelled unstarted)

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

    def mark_cancelled(self, version: Version, reason: str = "run_cancelled") -> None:
        """Status ``cancelled``; what it had streamed stays as ``partial`` (not content)."""
        if version.done:
            return
        now = self.now()
        shown = self.shown.get(version.index)
        version.status = "cancelled"
        version.cancel_reason = reason
        version.content = None
        version.partial = "".join(shown.parts) or None if shown is not None else None
        version.output_tokens = shown.attempt.output_tokens if shown is not None else 0
        version.finished_at = now
        for attempt in version.attempt_log:
            if attempt.finished_at is None:
                attempt.finished_at = now
                attempt.error_type = "CancelledError"
        self._say("cancel", version)
        self.emit(VersionCancelled, version=version)

    # -- the live pool ------------------------------------------------------------------
    def add_versions(self, count: int) -> list[Version]:
        """Start ``count`` more versions of the same prompt in this run (indices continue);
        the run then keeps ``count`` more. Raises StateError once the run has ended."""
        if not self.accepting or self.stopping:
            raise StateError("this run has ended: start a new run to write more versions")
        keep = self.run.keep_count
        room = COUNT_RANGE[1] - keep
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= room:
            raise ConfigError(
                f"add_versions(k): k must be a whole number from 1 to {room} — the versions "
                f"kept are capped at {COUNT_RANGE[1]} (version_count's range) and this run "
                f"keeps {keep}; got {count!r}"
            )
        first = max((v.index for v in self.run.versions), default=0) + 1
        added = [Version(index=first + i) for i in range(count)]
        self.run.versions.extend(added)
        self.run.keep = keep + count
        if self.conn is None:  # not started yet: execute() queues them with the others
            return added
        for version in added:
            self.enqueue(version)
            if self.run.parallel:
                self.spawn(version)
        if not self.run.parallel and all(t.done() for t in self.tasks):
            self.tasks.append(asyncio.ensure_future(self.serial()))
        return added

    def cancel_version(self, index: int, reason: str = "stopped") -> bool:
        """Stop one version: its slot is freed (a queued version takes it), what it had
        streamed is kept as ``partial``. False when it had already ended."""
        version = self.find(index)
        if version.done:
            return False
        self.mark_cancelled(version, reason)
        task = self.version_tasks.get(index)
        if task is not None:
            task.cancel()
        return True

    def find(self, index: int) -> Version:
        for version in self.run.versions:
            if version.index == index:
                return version
        known = ", ".join(str(v.index) for v in self.run.versions)
        raise ConfigError(f"this run has no version {index!r} (its versions: {known})")

    def keep_first(self) -> None:
        """Once the run has the versions it keeps, the others are surplus: cancel them."""
        if len(self.run.ok) < self.run.keep_count:
            return
        for version in self.run.versions:
            if not version.done:
                self.cancel_version(version.index, "surplus")

    # -- one version ------------------------------------------------------------------
    async def one(self, version: Version) -> None:
        if self.replay(version):
            return
        try:
            await self.attempts(version)
        except asyncio.CancelledError:
            self.mark_cancelled(version)  # a no-op when stopped on purpose (already marked)
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
        self.keep_first()
        return True

    async def attempts(self, version: Version) -> None:
        for number in range(1, self.retry.attempts + 1):
            async with self.limiter.slot():
                attempt = self.begin(version, number)
                try:
                    outcome = await self.attempt(version, attempt)
                except BackendError as exc:
                    error: BackendError = exc
                else:
                    self.succeed(version, outcome)
                    return
            # Outside the slot: a waiting retry must not hold a concurrency slot.
            self.shown.pop(version.index, None)  # a retry's text starts afresh
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
        """Tell the limiter how a request went; announce a limit it moved. Called inside
        the request's slot: an adaptive limiter must hear of a 429 before the slot it
        frees is handed to the next request (else 429s cascade)."""
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

    # -- one attempt, and its hedge -----------------------------------------------------
    async def attempt(self, version: Version, attempt: Attempt) -> _Outcome:
        """One attempt: a request, or — when it is slow to start — a hedged race."""
        stream = _Stream(attempt)
        if self.hedges is None or version.hedged:  # a version is hedged at most once
            return await self.request(version, stream)
        return await self.race(version, stream)

    async def race(self, version: Version, primary: _Stream) -> _Outcome:
        """Run ``primary``; if it has no first token within the hedge delay, start one
        duplicate in a slot of its own. The first to finish wins; the other is cancelled
        at once. When both fail, the first error counts (the retry loop sees it)."""
        assert self.hedges is not None
        first = asyncio.ensure_future(self.request(version, primary))
        racers = [first]
        try:
            if not await self.hedges.straggling(primary.attempt.started_at, primary.settled):
                return await first
            racers.append(asyncio.ensure_future(self.hedge(version, primary.attempt.number)))
            return await self.first_finished(version, racers)
        finally:
            for task in racers:  # the loser, or both when this version was stopped
                task.cancel()
            await asyncio.gather(*racers, return_exceptions=True)

    async def first_finished(
        self, version: Version, racers: list[asyncio.Task[_Outcome]]
    ) -> _Outcome:
        errors: list[BaseException] = []
        pending = set(racers)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=racers.index):  # the primary first on a tie
                error = task.exception()
                if error is None:
                    outcome = task.result()
                    self.lose(version, outcome.attempt, pending)
                    version.hedge_won = outcome.attempt.hedge
                    return outcome
                errors.append(error)
        raise errors[0]

    def lose(self, version: Version, winner: Attempt, losers: set[asyncio.Task[_Outcome]]) -> None:
        """Cancel the race's loser now; its attempt is marked ``lost``, its tokens stay."""
        for task in losers:
            task.cancel()
        for attempt in version.attempt_log:
            if attempt is not winner and attempt.finished_at is None:
                attempt.finished_at = self.now()
                attempt.lost = True
                attempt.error_type = "CancelledError"

    async def hedge(self, version: Version, number: int) -> _Outcome:
        """The duplicate of attempt ``number``: it waits for a slot like any request."""
        async with self.limiter.slot():
            if version.done:  # stopped (or surplus) while the hedge waited for its slot
                raise asyncio.CancelledError
            version.hedged = True
            attempt = Attempt(number=number, started_at=self.now(), hedge=True)
            version.attempt_log.append(attempt)
            self.emit(VersionHedged, version=version, attempt=number)
            return await self.request(version, _Stream(attempt))

    async def request(self, version: Version, stream: _Stream) -> _Outcome:
        """One request, in the slot its caller holds: its attempt records how it ended and
        the limiter hears of it (a request cancelled as a race's loser tells neither)."""
        attempt = stream.attempt
        try:
            outcome = await self.timed(version, stream)
        except BackendError as exc:
            self.end_attempt(attempt, exc)
            self.observe(ok=False, rate_limited=exc.status == 429, ttft_s=None)
            raise
        finally:
            stream.settle()
        self.observe(ok=True, rate_limited=False, ttft_s=attempt.ttft_s)
        return outcome

    async def timed(self, version: Version, stream: _Stream) -> _Outcome:
        """The request under its deadline and stall guard."""
        attempt = stream.attempt
        request = ChatRequest(
            messages=self.messages,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            run_id=self.run.run_id,
            version_index=version.index,
            attempt=attempt.number,
            hedge=attempt.hedge,
        )
        left = self.time_left(version)
        stall = self.retry.stall_s
        deadline = None if left is None else self.loop.time() + left
        try:
            async with _timeout_at(self._next_deadline(deadline, stall)) as guard:
                return await self.consume(request, version, stream, guard, deadline, stall)
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
        request: ChatRequest,
        version: Version,
        stream: _Stream,
        guard: Any,
        deadline: float | None,
        stall: float | None,
    ) -> _Outcome:
        usage: Usage | None = None
        assert self.conn is not None
        # aclosing: an abandoned stream (stall, cancel) closes its HTTP response now,
        # not whenever the garbage collector finalizes the generator.
        async with closing_stream(self.conn.stream(request)) as items:
            async for item in items:
                if isinstance(item, str):
                    self.token(version, stream, item)
                    if stall is not None:
                        guard.reschedule(self._next_deadline(deadline, stall))
                elif isinstance(item, Usage):
                    usage = item
                elif isinstance(item, Served):
                    version.key_id = item.key_id
        text = "".join(stream.parts)
        if not text.strip():
            raise ServerError("the model returned an empty reply")
        if usage is not None and usage.output_tokens > 0:
            return _Outcome(text, usage.output_tokens, True, stream.attempt)
        return _Outcome(text, len(stream.parts), False, stream.attempt)

    def token(self, version: Version, stream: _Stream, text: str) -> None:
        """A streamed delta. The version shows one request's text: the first of a hedge
        race to send a token (the winner's full text replaces it at the finish)."""
        attempt = stream.attempt
        if attempt.first_token_at is None:
            attempt.first_token_at = self.now()
            stream.settle()
            if self.hedges is not None:
                self.hedges.observe(attempt.first_token_at - attempt.started_at)
        stream.parts.append(text)
        attempt.output_tokens += 1
        shown = self.shown.setdefault(version.index, stream)
        if shown is stream:
            if version.first_token_at is None:
                version.first_token_at = attempt.first_token_at
            self.emit(TokenDelta, version=version, text=text)

    def succeed(self, version: Version, outcome: _Outcome) -> None:
        attempt = outcome.attempt
        self.end_attempt(attempt, None)
        parsed = parse_reply(outcome.text)
        version.content, version.title, version.summary = (
            parsed.content,
            parsed.title,
            parsed.summary,
        )
        attempt.output_tokens = outcome.tokens  # the server's count when it sent one
        version.output_tokens = outcome.tokens
        version.tokens_from_usage = outcome.from_usage
        version.first_token_at = attempt.first_token_at
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
        self.keep_first()

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
