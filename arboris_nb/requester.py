"""One request of a version: built, streamed into a buffer of its own under the version's
time limits, billed as it ends (a cancelled one at once), and reported to the limiter.

The :class:`~arboris_nb.runner.Runner` decides which requests to make (retries), the
:class:`~arboris_nb.hedging.HedgeRacer` when to duplicate one, :mod:`arboris_nb.fanout`
when one request carries every version; this module makes each of them. ``read_stream``
is the hot loop — once per streamed chunk of every version — so it keeps to locals and
builds no event unless a subscriber wants tokens.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .announce import Announcer
from .backends.base import ChatRequest, Connection, Message, Served, Usage, closing_stream
from .billing import Tally, bill, fill_estimates
from .deadlines import RunClock
from .errors import BackendError, ServerError
from .events import LimitChanged
from .fanout import Outcome
from .limits import Limiter
from .pricing import Price
from .results import Attempt, Run, Version

if TYPE_CHECKING:
    from .hedging import HedgeClock

if sys.version_info >= (3, 11):
    from asyncio import timeout_at as _timeout_at
else:  # pragma: no cover - Python 3.10
    from async_timeout import timeout_at as _timeout_at

__all__ = ["Raced", "Requester", "Stream"]

T = TypeVar("T")


class Stream:
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


Raced = tuple[Stream, Outcome]  # a request that finished: its stream and its reply


class Requester:
    """Makes one run's requests. ``shown`` maps a version to the request whose text it
    streams (the first of a hedge race to send a token); ``open_streams`` holds the
    requests in flight, so one cancelled on purpose is billed at once."""

    def __init__(
        self,
        run: Run,
        messages: list[Message],
        *,
        limiter: Limiter,
        clock: RunClock,
        events: Announcer,
        temperature: float,
        max_tokens: int | None,
        price: Price | None,
    ) -> None:
        self.run = run
        self.messages = messages
        self.limiter = limiter
        self.clock = clock
        self.events = events
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.price = price
        self.hedges: HedgeClock | None = None  # set by the runner when it hedges
        # The prompt's size as a server reported it: the estimate for a broken stream.
        self.prompt_tokens: int | None = None
        self.shown: dict[int, Stream] = {}
        self.open_streams: dict[int, Stream] = {}  # id(attempt) -> its request in flight

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

    async def request_once(
        self, conn: Connection, version: Version, stream: Stream, request: ChatRequest
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
        stream: Stream,
        guard: Any,
        deadline: float | None,
    ) -> Outcome:
        """Stream one request's reply into its private buffer (timeouts: ``guard``)."""
        parts, tally = stream.parts, stream.tally
        token_handlers = self.events.token_handlers
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
                        self.events.emit_token(version, item)
                elif isinstance(item, Usage):
                    tally.usage = item
                elif isinstance(item, Served):
                    version.key_id = item.key_id
        text = "".join(parts)
        if not text.strip():
            raise ServerError("the model returned an empty reply")
        return Outcome(text, len(parts))

    def first_token(self, version: Version, stream: Stream) -> None:
        """A request's first token: it settles (no hedge needed), feeds the hedge delay,
        and — when no other request of the version streams yet — is the one shown."""
        attempt = stream.attempt
        attempt.first_token_at = self.clock.now()
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
            version.first_token_at = self.clock.now()
        if self.clock.stall_s is not None:  # a token came: the stall limit starts again
            guard.reschedule(self.clock.abandon_at(deadline))
        if self.events.token_handlers:
            self.events.emit_token(version, text)

    def end_attempt(self, attempt: Attempt, error: BackendError | None) -> None:
        attempt.finished_at = self.clock.now()
        if error is not None:
            attempt.error_type = type(error).__name__
            attempt.status_code = error.status
            attempt.retry_after_s = error.retry_after_s

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
            self.events.emit(LimitChanged, limit=self.limiter.limit)

    # -- billing ------------------------------------------------------------------------
    def bill(self, attempts: list[Attempt], tally: Tally, error: BaseException | None) -> None:
        """Record what the request behind ``attempts`` was billed (see billing.py)."""
        if tally.usage is not None and tally.usage.input_tokens is not None:
            self.prompt_tokens = tally.usage.input_tokens
        bill(attempts, tally, error=error, prompt_tokens=self.prompt_tokens, price=self.price)

    def bill_stream(self, stream: Stream, error: BaseException | None) -> None:
        """Bill one request once: when it ends, or earlier when it is cancelled on purpose."""
        if not stream.billed:
            stream.billed = True
            self.bill([stream.attempt], stream.tally, error)

    def bill_open(self, attempt: Attempt, error: BaseException) -> None:
        """Bill ``attempt``'s request if it is still in flight (it is being cancelled)."""
        stream = self.open_streams.get(id(attempt))
        if stream is not None:
            self.bill_stream(stream, error)

    def close_bill(self, version: Version) -> None:
        """The version's bill is final: estimates made before the prompt's size was
        known get it now."""
        fill_estimates(version.attempts, self.prompt_tokens, self.price)
