"""The runner: one run's version tasks — admission, attempts, retries, hedges, timing,
events — and its live pool (versions added, stopped, or cancelled as surplus).

This is the only module that knows about concurrency, retries and timing. It is given a
backend, a limiter, a retry policy and the event subscribers, and knows nothing about
files: the run store and the reply cache are wired in by the handle layer
(:mod:`arboris_nb.engine`), the store as a subscriber and the cache as ``known``, a
look-up of replies that need no request. Each version is its own task (in serial mode
one at a time); ``gather(return_exceptions=True)`` collects them so a failing version
never cancels the others, and stopping one version cancels only its task, whose slot
goes at once to the next queued version. With ``fanout="n"`` one task first asks for
every version in one request (:mod:`arboris_nb.fanout`); versions it leaves missing get
their own tasks here. Every request is billed (:mod:`arboris_nb.billing`) as it ends —
a cancelled one (a stopped version, a losing hedge) at once.

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
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

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
from .billing import Tally, bill, fill_estimates
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
from .fanout import Outcome, fan_out
from .hedging import HedgeClock
from .limits import Limiter
from .pacing import ready
from .pricing import Price
from .prompts import parse_reply
from .results import Attempt, Run, Version
from .retry import RetryPolicy

if sys.version_info >= (3, 11):
    from asyncio import timeout_at as _timeout_at
else:  # pragma: no cover - Python 3.10
    from async_timeout import timeout_at as _timeout_at

__all__ = ["KnownReply", "Runner"]

log = logging.getLogger("arboris_nb")
T = TypeVar("T")


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


class _Stream:
    """One request in progress: its attempt, its own text (a retry or a hedge never mixes
    texts), what it streamed for the bill (``tally``), and ``settled``, resolved at its
    first token or when it ends (what a hedge waits on)."""

    __slots__ = ("attempt", "billed", "parts", "settled", "tally")

    def __init__(self, attempt: Attempt) -> None:
        self.attempt = attempt
        self.parts: list[str] = []
        self.tally = Tally()
        self.billed = False
        self.settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def settle(self) -> None:
        if not self.settled.done():
            self.settled.set_result(None)


Raced = tuple[_Stream, Outcome]  # a request that finished: its stream and its reply


class _Clock:
    """The run's clock, and a version's time limits (``RetryPolicy.deadline_s``, ``stall_s``).

    ``now()`` is seconds since the run started on the loop's monotonic clock, so a fake
    loop clock makes every timing exact in tests; deadlines are loop times.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, retry: RetryPolicy) -> None:
        self.loop = loop
        self.t0 = loop.time()
        self.deadline_s = retry.deadline_s
        self.stall_s = retry.stall_s

    def now(self) -> float:
        return self.loop.time() - self.t0

    def time_left(self, version: Version) -> float | None:
        if self.deadline_s is None or version.started_at is None:
            return None
        return self.deadline_s - (self.now() - version.started_at)

    def past_deadline(self, version: Version, wait_s: float = 0.0) -> bool:
        """True when the deadline has passed, or would before a retry after ``wait_s``."""
        left = self.time_left(version)
        return left is not None and left <= wait_s

    def deadline_at(self, version: Version) -> float | None:
        left = self.time_left(version)
        return None if left is None else self.loop.time() + left

    def abandon_at(self, deadline: float | None) -> float | None:
        """Loop time at which an attempt is abandoned: the deadline, or the stall limit
        from now (no token for ``stall_s``), whichever is earlier."""
        stall_at = None if self.stall_s is None else self.loop.time() + self.stall_s
        limits = [t for t in (deadline, stall_at) if t is not None]
        return min(limits) if limits else None

    def timed_out(self, deadline: float | None) -> BackendTimeout:
        """The error for an attempt abandoned at :meth:`abandon_at`."""
        if deadline is not None and self.loop.time() >= deadline - 1e-9:
            return BackendTimeout(f"version deadline of {self.deadline_s:g} s passed")
        return BackendTimeout(f"no token for {self.stall_s:g} s (stalled)")

    def no_time_to_retry(self, error: BackendError) -> BackendError:
        if isinstance(error, BackendTimeout) and "deadline" in str(error):
            return error
        return BackendTimeout(
            f"version deadline of {self.deadline_s:g} s (RetryPolicy.deadline_s) "
            f"leaves no time to retry; last error: {error}",
            status=error.status,
        )


class Runner:
    """One run: the shared state of its version tasks.

    Made by :func:`~arboris_nb.engine.start_versions` and driven by its
    :class:`~arboris_nb.handle.RunHandle`. ``known`` answers versions without a request
    (the reply cache); ``handlers`` hear every event, in order.

    A version's life, one method a step: ``generate_version`` → ``answer_from_known`` or
    ``request_with_retries`` (admitted by the limiter, ``begin_attempt`` … ``attempt``:
    ``request_once`` → ``read_stream``, or a hedged ``race`` of two; ``wait_retry``) →
    ``mark_ok`` / ``mark_failed`` / ``mark_cancelled``. The live pool (``add_versions``,
    ``cancel_version``, ``keep_first``) starts and stops version tasks. Why one class:
    every step reads the same state (the run, the limiter, the retry policy, the
    subscribers); the time limits, which need none of it, live apart in ``_Clock``.
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
        fanout: str = "requests",
        price: Price | None = None,
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
        self.clock = _Clock(asyncio.get_running_loop(), retry)
        self.rng = random.Random(retry.seed)
        self.known = known
        self.fanout = fanout
        self.price = price
        self.hedges = HedgeClock(retry, self.now) if retry.hedging else None
        # The prompt's size as a server reported it: the estimate for a broken stream.
        self.prompt_tokens: int | None = None
        # Every task of the run (version tasks, the serial driver, a shared request); a
        # version added later gets its task here too, and ``settle`` waits for it.
        self.tasks: list[asyncio.Task[None]] = []
        self.version_tasks: dict[int, asyncio.Task[None]] = {}
        self.shown: dict[int, _Stream] = {}  # the request whose text a version streams
        self.open_streams: dict[int, _Stream] = {}  # id(attempt) -> its request in flight
        self.conn: Connection | None = None
        self.stopping = False  # set by cancel(), even before any task exists
        self.accepting = True  # add_versions() allowed: until the last task is done

    # -- plumbing ---------------------------------------------------------------------
    def now(self) -> float:
        return self.clock.now()

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
    async def run_versions(self) -> None:
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
                await self.generate_all(conn)
        finally:
            run.elapsed_s = self.now()
            log.info(_messages.text("done", s=run.elapsed_s, parallel=run.parallel))
            self.emit(RunFinished)

    async def generate_all(self, conn: Connection) -> None:
        """Queue every version, start their tasks (or one task in serial mode), wait."""
        self.conn = conn
        for version in self.run.versions:
            self.enqueue(version)
        # cancel() before the start leaves every version to close_unfinished.
        if not self.stopping and self.run.parallel:
            self.emit(LimitChanged, limit=self.limiter.limit)  # where the limit trace starts
            if self.fanout == "n":
                self.tasks.append(asyncio.ensure_future(fan_out(self, conn)))
            else:
                for version in self.run.versions:
                    self.spawn(version)
        elif not self.stopping:
            self.tasks.append(asyncio.ensure_future(self.generate_in_order()))
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

    def spawn(
        self, version: Version, *, looked_up: bool = False, after: BaseException | None = None
    ) -> asyncio.Task[None]:
        """The version's own task: cancelling it stops this version only."""
        assert self.conn is not None
        task = asyncio.ensure_future(
            self.generate_version(self.conn, version, looked_up=looked_up, after=after)
        )
        self.version_tasks[version.index] = task
        self.tasks.append(task)
        return task

    async def generate_in_order(self) -> None:
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
        """Status ``cancelled``; what it had streamed stays as ``partial`` (not content).
        Its requests in flight are billed now (the store writes it on this event)."""
        if version.done:
            return
        now = self.now()
        for attempt in version.attempts:
            if attempt.finished_at is None:
                self.bill_open(attempt, asyncio.CancelledError())
                attempt.finished_at = now
                attempt.error_type = "CancelledError"
        shown = self.shown.get(version.index)
        version.status = "cancelled"
        version.cancel_reason = reason
        version.content = None
        version.partial = "".join(shown.parts) or None if shown is not None else None
        version.output_tokens = sum(shown.tally.chunks) if shown is not None else 0
        version.finished_at = now
        self._say("cancel", version)
        self.ended(version)
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
        if self.conn is None:  # not started yet: generate_all() queues them with the others
            return added
        for version in added:
            self.enqueue(version)
            if self.run.parallel:
                self.spawn(version)
        if not self.run.parallel and all(t.done() for t in self.tasks):
            self.tasks.append(asyncio.ensure_future(self.generate_in_order()))
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
    async def generate_version(
        self,
        conn: Connection,
        version: Version,
        *,
        looked_up: bool = False,
        after: BaseException | None = None,
    ) -> None:
        """One version from queued to ok, failed or cancelled; only cancellation propagates.
        ``looked_up``: the known replies were asked already; ``after``: the error of a
        shared request it falls back from (waited on if retryable, as a retry would)."""
        if not looked_up and self.answer_from_known(version):
            return
        try:
            if after is not None and not await self.wait_after(version, after):
                return
            await self.request_with_retries(conn, version, first=version.attempt_count + 1)
        except asyncio.CancelledError:
            self.mark_cancelled(version)  # a no-op when stopped on purpose (already marked)
            raise
        except Exception as exc:  # a backend bug fails this version, not the batch
            self.mark_failed(version, exc)

    def answer_from_known(self, version: Version) -> bool:
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

    async def wait_after(self, version: Version, error: BaseException) -> bool:
        """Before falling back from a failed shared request: wait as a retry would (a 429
        or a 5xx), unless the deadline forbids it (then the version fails: False)."""
        if not (isinstance(error, BackendError) and error.retryable):
            return True
        delay = self.retry.delay(1, error, self.rng)
        if self.clock.past_deadline(version, delay):
            self.mark_failed(version, self.clock.no_time_to_retry(error))
            return False
        await self.wait_retry(version, version.attempts[-1], error, delay)
        return True

    async def request_with_retries(
        self, conn: Connection, version: Version, first: int = 1
    ) -> None:
        """Request until an attempt succeeds or the retry policy gives up. A fallback
        from a shared request (``first`` > 1) still gets one request of its own."""
        for number in range(first, max(first, self.retry.attempts) + 1):
            async with self.limiter.slot():
                request = self.build_request(version, number)
                # Pacing waits (rate-limit budget, Retry-After gate) are queue time, not
                # part of the attempt: they count toward neither TTFT nor a stall.
                await ready(conn, request)
                stream = _Stream(self.begin_attempt(version, number))
                try:
                    won, outcome = await self.attempt(conn, version, stream, request)
                except BackendError as exc:
                    error: BackendError = exc  # its request ended (and billed) the attempt
                else:
                    self.mark_ok(version, won.attempt, outcome)
                    return
            # Outside the slot: a waiting retry must not hold a concurrency slot.
            self.shown.pop(version.index, None)  # a retry's text starts afresh
            if not self.retry.should_retry(error, number):
                self.mark_failed(version, error)
                return
            delay = self.retry.delay(number, error, self.rng)
            if self.clock.past_deadline(version, delay):
                self.mark_failed(version, self.clock.no_time_to_retry(error))
                return
            await self.wait_retry(version, stream.attempt, error, delay)

    def report_to_limiter(
        self,
        *,
        ok: bool,
        rate_limited: bool,
        ttft_s: float | None,
        retry_after_s: float | None = None,
    ) -> None:
        """Tell the limiter how a request went; announce a limit it moved. Called inside
        the request's slot: an adaptive limiter must hear of a 429 before the slot it
        frees is handed to the next request (else 429s cascade)."""
        before = self.limiter.limit
        note_retry_after = getattr(self.limiter, "note_retry_after", None)
        if retry_after_s is not None and note_retry_after is not None:
            note_retry_after(retry_after_s)  # an adaptive limit weighs what a probe costs
        self.limiter.observe(ok=ok, rate_limited=rate_limited, ttft_s=ttft_s)
        if self.limiter.limit != before:
            self.emit(LimitChanged, limit=self.limiter.limit)

    def begin_attempt(self, version: Version, number: int) -> Attempt:
        now = self.now()
        if version.started_at is None:
            version.started_at = now
            self._say("start", version)
        attempt = Attempt(number=number, started_at=now)
        version.attempts.append(attempt)
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

    # -- billing ------------------------------------------------------------------------
    def bill(self, attempts: list[Attempt], tally: Tally, error: BaseException | None) -> None:
        """Record what the request behind ``attempts`` was billed (see billing.py)."""
        if tally.usage is not None and tally.usage.input_tokens is not None:
            self.prompt_tokens = tally.usage.input_tokens
        bill(attempts, tally, error=error, prompt_tokens=self.prompt_tokens, price=self.price)

    def bill_stream(self, stream: _Stream, error: BaseException | None) -> None:
        """Bill one request once: when it ends, or earlier when it is cancelled on purpose."""
        if not stream.billed:
            stream.billed = True
            self.bill([stream.attempt], stream.tally, error)

    def bill_open(self, attempt: Attempt, error: BaseException) -> None:
        """Bill ``attempt``'s request if it is still in flight (it is being cancelled)."""
        stream = self.open_streams.get(id(attempt))
        if stream is not None:
            self.bill_stream(stream, error)

    def ended(self, version: Version) -> None:
        """The version's bill is final: estimates made before the prompt's size was
        known get it now (the store writes the version on the event that follows)."""
        fill_estimates(version.attempts, self.prompt_tokens, self.price)

    # -- one attempt, and its hedge -----------------------------------------------------
    def build_request(
        self,
        version: Version,
        number: int,
        choices: list[Version] | None = None,
        *,
        hedge: bool = False,
    ) -> ChatRequest:
        """The request of attempt ``number``; with several ``choices``, one for all of them."""
        return ChatRequest(
            messages=self.messages,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            run_id=self.run.run_id,
            version_index=version.index,
            attempt=number,
            choice_versions=tuple(v.index for v in choices) if choices and len(choices) > 1 else (),
            hedge=hedge,
        )

    async def attempt(
        self, conn: Connection, version: Version, stream: _Stream, request: ChatRequest
    ) -> Raced:
        """One attempt: a request, or — when it is slow to start — a hedged race."""
        if self.hedges is None or version.hedged:  # a version is hedged at most once
            return stream, await self.request_once(conn, version, stream, request)
        return await self.race(conn, version, stream, request)

    async def race(
        self, conn: Connection, version: Version, primary: _Stream, request: ChatRequest
    ) -> Raced:
        """Run ``primary``; if it has no first token within the hedge delay, start one
        duplicate in a slot of its own. The first to finish wins; the other is cancelled
        at once. When both fail, the first error counts (the retry loop sees it)."""
        assert self.hedges is not None
        first = asyncio.ensure_future(self.raced(conn, version, primary, request))
        racers = [first]
        try:
            if not await self.hedges.straggling(primary.attempt.started_at, primary.settled):
                return await first
            racers.append(asyncio.ensure_future(self.hedge(conn, version, primary.attempt.number)))
            return await self.first_finished(version, racers)
        finally:
            for task in racers:  # the loser, or both when this version was stopped
                task.cancel()
            await asyncio.gather(*racers, return_exceptions=True)

    async def raced(
        self, conn: Connection, version: Version, stream: _Stream, request: ChatRequest
    ) -> Raced:
        return stream, await self.request_once(conn, version, stream, request)

    async def first_finished(self, version: Version, racers: list[asyncio.Task[Raced]]) -> Raced:
        errors: list[BaseException] = []
        pending = set(racers)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=racers.index):  # the primary first on a tie
                error = task.exception()
                if error is None:
                    won = task.result()
                    self.lose(version, won[0].attempt, pending)
                    version.hedge_won = won[0].attempt.hedge
                    return won
                errors.append(error)
        raise errors[0]

    def lose(self, version: Version, winner: Attempt, losers: set[asyncio.Task[Raced]]) -> None:
        """Cancel the race's loser now; its attempt is marked ``lost`` and billed (what it
        streamed was paid for and thrown away)."""
        for task in losers:
            task.cancel()
        for attempt in version.attempts:
            if attempt is not winner and attempt.finished_at is None:
                self.bill_open(attempt, asyncio.CancelledError())
                attempt.finished_at = self.now()
                attempt.lost = True
                attempt.error_type = "CancelledError"

    async def hedge(self, conn: Connection, version: Version, number: int) -> Raced:
        """The duplicate of attempt ``number``: it waits for a slot like any request."""
        async with self.limiter.slot():
            if version.done:  # stopped (or surplus) while the hedge waited for its slot
                raise asyncio.CancelledError
            request = self.build_request(version, number, hedge=True)
            await ready(conn, request)  # a hedge is a request: the key's budget counts it
            version.hedged = True
            attempt = Attempt(number=number, started_at=self.now(), hedge=True)
            version.attempts.append(attempt)
            self.emit(VersionHedged, version=version, attempt=number)
            stream = _Stream(attempt)
            return stream, await self.request_once(conn, version, stream, request)

    async def request_once(
        self, conn: Connection, version: Version, stream: _Stream, request: ChatRequest
    ) -> Outcome:
        """One request, in the slot its caller holds. Its partial text is private to it, so
        a retry never mixes texts. Its attempt records how it ended, it is billed, and the
        limiter hears of it (a request cancelled as a race's loser tells the limiter
        nothing)."""
        attempt = stream.attempt
        self.open_streams[id(attempt)] = stream
        try:
            outcome = await self.within_limits(
                version,
                lambda guard, deadline: self.read_stream(
                    conn, request, version, stream, guard, deadline
                ),
            )
        except BackendError as exc:
            self.bill_stream(stream, exc)
            self.end_attempt(attempt, exc)
            self.report_to_limiter(
                ok=False,
                rate_limited=exc.status == 429,
                ttft_s=None,
                retry_after_s=exc.retry_after_s,
            )
            raise
        except asyncio.CancelledError:
            self.bill_stream(stream, asyncio.CancelledError())
            raise
        finally:
            stream.settle()
            del self.open_streams[id(attempt)]
        self.bill_stream(stream, None)
        self.report_to_limiter(ok=True, rate_limited=False, ttft_s=attempt.ttft_s)
        return outcome

    async def within_limits(
        self, version: Version, work: Callable[[Any, float | None], Awaitable[T]]
    ) -> T:
        """Run ``work(guard, deadline)`` under the version's deadline and the stall limit;
        ``work`` reschedules ``guard`` to ``clock.abandon_at(deadline)`` on every token."""
        deadline = self.clock.deadline_at(version)
        try:
            async with _timeout_at(self.clock.abandon_at(deadline)) as guard:
                return await work(guard, deadline)
        except TimeoutError:
            raise self.clock.timed_out(deadline) from None

    async def read_stream(
        self,
        conn: Connection,
        request: ChatRequest,
        version: Version,
        stream: _Stream,
        guard: Any,
        deadline: float | None,
    ) -> Outcome:
        """Stream one request's reply into its private buffer (timeouts: ``guard``)."""
        parts, tally = stream.parts, stream.tally
        token_handlers = self.token_handlers
        stalls = self.clock.stall_s is not None
        # This loop runs once per streamed chunk of every version: keep it lean.
        # aclosing: an abandoned stream (stall, cancel) closes its HTTP response now,
        # not whenever the garbage collector finalizes the generator.
        async with closing_stream(conn.stream(request)) as items:
            async for item in items:
                if isinstance(item, str):
                    if not parts:
                        self.first_token(version, stream)
                    parts.append(item)
                    tally.add(0, item)
                    if stalls:  # a token came: the stall limit starts again
                        guard.reschedule(self.clock.abandon_at(deadline))
                    # The version shows one request's text: the first of a hedge race to
                    # send a token (the winner's full text replaces it at the finish).
                    if token_handlers and self.shown.get(version.index) is stream:
                        self.emit_token(version, item)
                elif isinstance(item, Usage):
                    tally.usage = item
                elif isinstance(item, Served):
                    version.key_id = item.key_id
        text = "".join(parts)
        if not text.strip():
            raise ServerError("the model returned an empty reply")
        return Outcome(text, len(parts))

    def first_token(self, version: Version, stream: _Stream) -> None:
        """A request's first token: it settles (no hedge needed), feeds the hedge delay,
        and — when no other request of the version streams yet — is the one shown."""
        attempt = stream.attempt
        attempt.first_token_at = self.now()
        stream.settle()
        if self.hedges is not None:
            self.hedges.observe(attempt.first_token_at - attempt.started_at)
        shown = self.shown.setdefault(version.index, stream)
        if shown is stream and version.first_token_at is None:
            version.first_token_at = attempt.first_token_at

    def token(self, version: Version, text: str, guard: Any, deadline: float | None) -> None:
        """A streamed chunk of ``version``'s reply from a shared request (fanout.py; the
        one-version path does the same inline in ``read_stream``, its hot loop)."""
        if version.first_token_at is None:
            version.first_token_at = self.now()
        if self.clock.stall_s is not None:  # a token came: the stall limit starts again
            guard.reschedule(self.clock.abandon_at(deadline))
        if self.token_handlers:
            self.emit_token(version, text)

    def mark_ok(self, version: Version, attempt: Attempt, outcome: Outcome) -> None:
        """The version is ok with ``outcome``, the reply of ``attempt`` (billed already)."""
        if version.done:  # stopped while its reply came in: the stop stands
            return
        self.end_attempt(attempt, None)
        parsed = parse_reply(outcome.text)
        version.content, version.title, version.summary = (
            parsed.content,
            parsed.title,
            parsed.summary,
        )
        billed = attempt.output_tokens
        from_usage = not attempt.usage_estimated and billed is not None and billed > 0
        version.output_tokens = billed if from_usage and billed is not None else outcome.chunks
        version.tokens_from_usage = from_usage
        estimated = attempt.usage_estimated
        version.input_tokens = None if estimated else attempt.input_tokens
        version.cached_input_tokens = None if estimated else attempt.cached_input_tokens
        if attempt.first_token_at is not None:  # the kept request's (a hedge's, if it won)
            version.first_token_at = attempt.first_token_at
        version.finished_at = self.now() if outcome.ended_at is None else outcome.ended_at
        version.status = "ok"
        version.error = version.error_type = None
        self._say(
            "finish",
            version,
            s=version.duration_s or 0.0,
            tokens=version.output_tokens,
            attempts=version.attempt_count,
        )
        self.ended(version)
        self.emit(VersionFinished, version=version)
        self.keep_first()

    def mark_failed(self, version: Version, error: BaseException) -> None:
        if version.done:  # stopped while its last request failed: the stop stands
            return
        version.status = "failed"
        version.content = None
        version.error = str(error) or type(error).__name__
        version.error_type = type(error).__name__
        version.finished_at = self.now()
        if version.attempts and version.attempts[-1].finished_at is None:
            version.attempts[-1].finished_at = version.finished_at
            version.attempts[-1].error_type = version.error_type
        log.warning(
            _messages.text("fail", i=version.index, n=self.run.version_count, error=version.error)
        )
        self.ended(version)
        self.emit(VersionFailed, version=version)
