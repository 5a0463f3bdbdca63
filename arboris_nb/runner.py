"""The runner: one run's version tasks — admission, attempts, retries, and how each
version ends — on the collaborators that do one job each.

This is the only part of the package that knows about concurrency, retries and timing.
It is given a backend, a limiter, a retry policy and the event subscribers, and knows
nothing about files: the run store and the reply cache are wired in by the handle layer
(:mod:`arboris_nb.engine`), the store as a subscriber and the cache as ``known``, a
look-up of replies that need no request. Each version is its own task (in serial mode
one at a time); ``gather(return_exceptions=True)`` collects them so a failing version
never cancels the others, and stopping one version cancels only its task, whose slot
goes at once to the next queued version.

Its collaborators, one job each:

* :class:`~arboris_nb.requester.Requester` makes one request: builds it, streams it into
  a buffer of its own under the version's time limits (:class:`~arboris_nb.deadlines.RunClock`),
  bills it as it ends (:mod:`arboris_nb.billing`) and reports it to the limiter;
* :class:`~arboris_nb.hedging.HedgeRacer` races a slow attempt against one duplicate;
* :mod:`arboris_nb.fanout` asks for every version in one request (``fanout="n"``);
  versions it leaves missing get their own tasks here;
* :class:`~arboris_nb.livepool.LivePool` adds and stops versions while the run runs and
  cancels the surplus once ``run.keep`` versions are ok;
* :class:`~arboris_nb.announce.Announcer` delivers the events, in order.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Protocol

from . import _messages
from .announce import Announcer
from .backends.base import Backend, ChatRequest, Connection, Message
from .deadlines import RunClock
from .errors import BackendError
from .events import (
    EventHandler,
    LimitChanged,
    RunFinished,
    RunStarted,
    VersionCancelled,
    VersionFailed,
    VersionFinished,
    VersionQueued,
    VersionRetrying,
    VersionStarted,
)
from .fanout import Outcome, fan_out
from .hedging import HedgeClock, HedgeRacer
from .limits import Limiter
from .livepool import LivePool
from .pacing import ready
from .pricing import Price
from .prompts import parse_reply
from .requester import Raced, Requester, Stream
from .results import Attempt, Run, Version
from .retry import RetryPolicy

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


class Runner:
    """One run: the shared state of its version tasks.

    Made by :func:`~arboris_nb.engine.start_versions` and driven by its
    :class:`~arboris_nb.handle.RunHandle` (``run_versions``, ``cancel``, and ``pool`` for
    ``add_versions`` / ``cancel_version``). ``known`` answers versions without a request
    (the reply cache); ``handlers`` hear every event, in order.

    A version's life, one method a step: ``generate_version`` → ``answer_from_known`` or
    ``request_with_retries`` (admitted by the limiter, ``begin_attempt`` →
    ``attempt``: the requester's ``request_once``, or the hedge racer's ``race``;
    ``wait_retry`` between attempts) → ``mark_ok`` / ``mark_failed`` / ``mark_cancelled``.
    Why these stay in one class (a little over 300 lines): each step reads and writes
    the same state — the run's tasks, the limiter, the retry policy, the requester — and
    a version's status changes only here; the parts that need less (one request, a hedge
    race, the live pool, the events, the time limits) live in their own classes.
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
        self.backend = backend
        self.limiter = limiter
        self.retry = retry
        self.clock = RunClock(asyncio.get_running_loop(), retry)
        self.now = self.clock.now
        self.events = Announcer(run, handlers, self.now)
        self.emit = self.events.emit
        self.rng = random.Random(retry.seed)
        self.known = known
        self.fanout = fanout
        self.requests = Requester(
            run,
            messages,
            limiter=limiter,
            clock=self.clock,
            events=self.events,
            temperature=temperature,
            max_tokens=max_tokens,
            price=price,
        )
        self.hedges: HedgeRacer | None = None
        if retry.hedging:
            hedge_clock = HedgeClock(retry, self.now)
            self.requests.hedges = hedge_clock  # first tokens feed its delay
            self.hedges = HedgeRacer(hedge_clock, self.requests, limiter, self.events)
        self.pool = LivePool(self)
        # Every task of the run (version tasks, the serial driver, a shared request); a
        # version added later gets its task here too, and ``settle`` waits for it.
        self.tasks: list[asyncio.Task[None]] = []
        self.version_tasks: dict[int, asyncio.Task[None]] = {}
        self.conn: Connection | None = None
        self.stopping = False  # set by cancel(), even before any task exists
        self.accepting = True  # add_versions() allowed: until the last task is done

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
        self.pool.one_ok()
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
                request = self.requests.build_request(version, number)
                # Pacing waits (rate-limit budget, Retry-After gate) are queue time, not
                # part of the attempt: they count toward neither TTFT nor a stall.
                await ready(conn, request)
                stream = Stream(self.begin_attempt(version, number))
                try:
                    won, outcome = await self.attempt(conn, version, stream, request)
                except BackendError as exc:
                    error: BackendError = exc  # its request ended (and billed) the attempt
                else:
                    self.mark_ok(version, won.attempt, outcome)
                    return
            # Outside the slot: a waiting retry must not hold a concurrency slot.
            self.requests.shown.pop(version.index, None)  # a retry's text starts afresh
            if not self.retry.should_retry(error, number):
                self.mark_failed(version, error)
                return
            delay = self.retry.delay(number, error, self.rng)
            if self.clock.past_deadline(version, delay):
                self.mark_failed(version, self.clock.no_time_to_retry(error))
                return
            await self.wait_retry(version, stream.attempt, error, delay)

    async def attempt(
        self, conn: Connection, version: Version, stream: Stream, request: ChatRequest
    ) -> Raced:
        """One attempt: a request, or — when it is slow to start — a hedged race."""
        if self.hedges is None or version.hedged:  # a version is hedged at most once
            return stream, await self.requests.request_once(conn, version, stream, request)
        return await self.hedges.race(conn, version, stream, request)

    def begin_attempt(self, version: Version, number: int) -> Attempt:
        now = self.now()
        if version.started_at is None:
            version.started_at = now
            self.events.say("start", version)
        attempt = Attempt(number=number, started_at=now)
        version.attempts.append(attempt)
        version.status = "running"
        version.first_token_at = None
        self.emit(VersionStarted, version=version, attempt=number)
        return attempt

    async def wait_retry(
        self, version: Version, attempt: Attempt, error: BackendError, delay: float
    ) -> None:
        attempt.wait_s = delay
        version.status = "retrying"
        self.events.say("retry", version, attempt=attempt.number, error=error, delay=delay)
        self.emit(
            VersionRetrying,
            version=version,
            attempt=attempt.number,
            error=str(error),
            delay_s=delay,
        )
        await asyncio.sleep(delay)

    # -- how a version ends -----------------------------------------------------------
    def mark_ok(self, version: Version, attempt: Attempt, outcome: Outcome) -> None:
        """The version is ok with ``outcome``, the reply of ``attempt`` (billed already)."""
        if version.done:  # stopped while its reply came in: the stop stands
            return
        self.requests.end_attempt(attempt, None)
        _keep_reply(version, attempt, outcome)
        version.finished_at = self.now() if outcome.ended_at is None else outcome.ended_at
        self.events.say(
            "finish",
            version,
            s=version.duration_s or 0.0,
            tokens=version.output_tokens,
            attempts=version.attempt_count,
        )
        self.ended(version)
        self.emit(VersionFinished, version=version)
        self.pool.one_ok()

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

    def mark_cancelled(self, version: Version, reason: str = "run_cancelled") -> None:
        """Status ``cancelled``; what it had streamed stays as ``partial`` (not content).
        Its requests in flight are billed now (the store writes it on this event)."""
        if version.done:
            return
        now = self.now()
        for attempt in version.attempts:
            if attempt.finished_at is None:
                self.requests.bill_open(attempt, asyncio.CancelledError())
                attempt.finished_at = now
                attempt.error_type = "CancelledError"
        shown = self.requests.shown.get(version.index)
        version.status = "cancelled"
        version.cancel_reason = reason
        version.content = None
        version.partial = "".join(shown.parts) or None if shown is not None else None
        version.output_tokens = sum(shown.tally.chunks) if shown is not None else 0
        version.finished_at = now
        self.events.say("cancel", version)
        self.ended(version)
        self.emit(VersionCancelled, version=version)

    def ended(self, version: Version) -> None:
        """The version's bill is final (the store writes the version on the event that
        follows)."""
        self.requests.close_bill(version)


def _keep_reply(version: Version, attempt: Attempt, outcome: Outcome) -> None:
    """Make ``outcome``, the reply of ``attempt``, the version's content (status ok)."""
    parsed = parse_reply(outcome.text)
    version.content, version.title, version.summary = parsed.content, parsed.title, parsed.summary
    billed = attempt.output_tokens
    from_usage = not attempt.usage_estimated and billed is not None and billed > 0
    version.output_tokens = billed if from_usage and billed is not None else outcome.chunks
    version.tokens_from_usage = from_usage
    estimated = attempt.usage_estimated
    version.input_tokens = None if estimated else attempt.input_tokens
    version.cached_input_tokens = None if estimated else attempt.cached_input_tokens
    if attempt.first_token_at is not None:  # the kept request's (a hedge's, if it won)
        version.first_token_at = attempt.first_token_at
    version.status = "ok"
    version.error = version.error_type = None
