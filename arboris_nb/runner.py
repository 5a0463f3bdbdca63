"""The runner: one run's version tasks — admission, attempts, retries, timing, events.

This is the only module that knows about concurrency, retries and timing. It is given a
backend, a limiter, a retry policy and the event subscribers, and knows nothing about
files: the run store and the reply cache are wired in by the handle layer
(:mod:`arboris_nb.engine`), the store as a subscriber and the cache as ``known``, a
look-up of replies that need no request. Each version is its own task;
``gather(return_exceptions=True)`` collects them so a failing version never cancels the
others. With ``fanout="n"`` one task first asks for every version in one request
(:mod:`arboris_nb.fanout`); versions it leaves missing get their own tasks here. Every
attempt is billed (:mod:`arboris_nb.billing`) as it ends.
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
from .fanout import Outcome, fan_out
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
    ``request_with_retries`` (admitted by the limiter, ``begin_attempt`` …
    ``request_once`` → ``read_stream`` … ``end_attempt``, ``wait_retry``) → ``mark_ok`` /
    ``mark_failed`` / ``mark_cancelled``. Why one class of about 300 lines: every step
    reads the same state (the run, the limiter, the retry policy, the subscribers); the
    time limits, which need none of it, live apart in ``_Clock``.
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
        # The prompt's size as a server reported it: the estimate for a broken stream.
        self.prompt_tokens: int | None = None
        # One task per version in parallel mode (one for all in serial mode); a version
        # added later would get its task here too, and ``settle`` waits for it.
        self.tasks: list[asyncio.Task[None]] = []
        self.stopping = False  # set by cancel(), even before any task exists

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
        for version in self.run.versions:
            version.queued_at = self.now()
            self.emit(VersionQueued, version=version)
        # cancel() before the start leaves every version to close_unfinished.
        if not self.stopping and self.run.parallel:
            self.emit(LimitChanged, limit=self.limiter.limit)  # where the limit trace starts
            if self.fanout == "n":
                self.tasks = [asyncio.ensure_future(fan_out(self, conn))]
            else:
                self.tasks = [
                    asyncio.ensure_future(self.generate_version(conn, v)) for v in self.run.versions
                ]
        elif not self.stopping:
            self.tasks = [asyncio.ensure_future(self.generate_in_order(conn))]
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

    async def generate_in_order(self, conn: Connection) -> None:
        for version in self.run.versions:
            await self.generate_version(conn, version)

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
        self.ended(version)
        self.emit(VersionCancelled, version=version)

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
            await self.request_with_retries(conn, version, first=len(version.attempt_log) + 1)
        except asyncio.CancelledError:
            self.mark_cancelled(version)
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
        await self.wait_retry(version, version.attempt_log[-1], error, delay)
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
                attempt = self.begin_attempt(version, number)
                tally = Tally()
                try:
                    outcome = await self.request_once(conn, version, request, tally)
                except BackendError as exc:
                    error: BackendError = exc
                    # Inside the slot: an adaptive limiter must hear of a 429 before the
                    # slot it frees is handed to the next request (else 429s cascade).
                    self.report_to_limiter(
                        ok=False,
                        rate_limited=exc.status == 429,
                        ttft_s=None,
                        retry_after_s=exc.retry_after_s,
                    )
                except asyncio.CancelledError:
                    self.bill([attempt], tally, asyncio.CancelledError())
                    raise
                else:
                    self.report_to_limiter(ok=True, rate_limited=False, ttft_s=version.ttft_s)
                    self.bill([attempt], tally, None)
                    self.mark_ok(version, attempt, outcome)
                    return
            # Outside the slot: a waiting retry must not hold a concurrency slot.
            self.bill([attempt], tally, error)
            self.end_attempt(attempt, error)
            if not self.retry.should_retry(error, number):
                self.mark_failed(version, error)
                return
            delay = self.retry.delay(number, error, self.rng)
            if self.clock.past_deadline(version, delay):
                self.mark_failed(version, self.clock.no_time_to_retry(error))
                return
            await self.wait_retry(version, attempt, error, delay)

    def report_to_limiter(
        self,
        *,
        ok: bool,
        rate_limited: bool,
        ttft_s: float | None,
        retry_after_s: float | None = None,
    ) -> None:
        """Tell the limiter how an attempt went; announce a limit it moved."""
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

    def bill(self, attempts: list[Attempt], tally: Tally, error: BaseException | None) -> None:
        """Record what the request behind ``attempts`` was billed (see billing.py)."""
        if tally.usage is not None and tally.usage.input_tokens is not None:
            self.prompt_tokens = tally.usage.input_tokens
        bill(attempts, tally, error=error, prompt_tokens=self.prompt_tokens, price=self.price)

    def ended(self, version: Version) -> None:
        """The version's bill is final: estimates made before the prompt's size was
        known get it now (the store writes the version on the event that follows)."""
        fill_estimates(version.attempt_log, self.prompt_tokens, self.price)

    def build_request(
        self, version: Version, number: int, choices: list[Version] | None = None
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
        )

    async def request_once(
        self, conn: Connection, version: Version, request: ChatRequest, tally: Tally
    ) -> Outcome:
        """One request. Its partial text is private to it, so a retry never mixes texts."""
        return await self.within_limits(
            version,
            lambda guard, deadline: self.read_stream(
                conn, request, version, tally, guard, deadline
            ),
        )

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
        tally: Tally,
        guard: Any,
        deadline: float | None,
    ) -> Outcome:
        """Stream one attempt's reply into a private buffer (timeouts: ``guard``)."""
        parts: list[str] = []
        token_handlers = self.token_handlers
        stalls = self.clock.stall_s is not None
        # This loop runs once per streamed chunk of every version: keep it lean.
        # aclosing: an abandoned stream (stall, cancel) closes its HTTP response now,
        # not whenever the garbage collector finalizes the generator.
        async with closing_stream(conn.stream(request)) as stream:
            async for item in stream:
                if isinstance(item, str):
                    if not parts:
                        version.first_token_at = self.now()
                    parts.append(item)
                    tally.add(0, item)
                    if stalls:  # a token came: the stall limit starts again
                        guard.reschedule(self.clock.abandon_at(deadline))
                    if token_handlers:
                        self.emit_token(version, item)
                elif isinstance(item, Usage):
                    tally.usage = item
                elif isinstance(item, Served):
                    version.key_id = item.key_id
        text = "".join(parts)
        if not text.strip():
            raise ServerError("the model returned an empty reply")
        return Outcome(text, len(parts))

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
        """The version is ok with ``outcome``, its reply (billed already)."""
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
        version.finished_at = self.now() if outcome.ended_at is None else outcome.ended_at
        version.status = "ok"
        version.error = version.error_type = None
        self._say(
            "finish",
            version,
            s=version.duration_s or 0.0,
            tokens=version.output_tokens,
            attempts=version.attempts,
        )
        self.ended(version)
        self.emit(VersionFinished, version=version)

    def mark_failed(self, version: Version, error: BaseException) -> None:
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
        self.ended(version)
        self.emit(VersionFailed, version=version)
