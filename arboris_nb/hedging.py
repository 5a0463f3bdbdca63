"""Hedged requests: when an attempt has waited too long for its first token.

A run's latency is its slowest version's, and real APIs have heavy tails: a request
stuck behind a busy replica takes many times the usual time. A hedge is a duplicate of
such a request, started while the first still runs; whichever finishes first wins and
the other is cancelled. :class:`HedgeClock` decides *when*: it knows the delay — the
policy's ``hedge_after_s``, or the run's own time-to-first-token quantile once enough
attempts have one — and wakes the attempts that wait on it when a new sample moves the
delay. :class:`HedgeRacer` runs the race: the duplicate waits for a slot of its own like
any request, the loser is cancelled and billed at once (what it streamed was paid for).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence

from .announce import Announcer
from .backends.base import ChatRequest, Connection
from .events import VersionHedged
from .limits import Limiter
from .pacing import ready
from .requester import Raced, Requester, Stream
from .results import Attempt, Version
from .retry import RetryPolicy

__all__ = ["HedgeClock", "HedgeRacer", "quantile"]


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values``, linear between ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("quantile of no values")
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


class HedgeClock:
    """The hedge delay of one run, and the wait for it.

    ``now`` is the run's clock (the event loop's, so a fake clock makes tests exact).
    """

    def __init__(self, policy: RetryPolicy, now: Callable[[], float]) -> None:
        self.policy = policy
        self.now = now
        self.samples: list[float] = []  # times to first token seen in this run
        self._wakers: set[asyncio.Future[None]] = set()

    def delay(self) -> float | None:
        """Seconds without a first token after which to hedge; None = not (yet)."""
        policy = self.policy
        fixed = policy.hedge_after_s
        if policy.hedge_quantile is None or len(self.samples) < policy.hedge_min_samples:
            return fixed
        learned = quantile(self.samples, policy.hedge_quantile)
        return learned if fixed is None else max(learned, fixed)

    def observe(self, ttft_s: float) -> None:
        """An attempt's time to first token: with a quantile it may move the delay."""
        self.samples.append(ttft_s)
        if self.policy.hedge_quantile is not None:
            for waker in self._wakers:
                if not waker.done():
                    waker.set_result(None)

    async def straggling(self, started_at: float, settled: asyncio.Future[None]) -> bool:
        """Wait for an attempt started at ``started_at`` (run clock): True once it has gone
        without a first token past the delay, False when ``settled`` (its first token came,
        or it ended) is resolved first."""
        loop = asyncio.get_running_loop()
        while not settled.done():
            delay = self.delay()
            left = None if delay is None else started_at + delay - self.now()
            if left is not None and left <= 0:
                return True
            waker = loop.create_future()
            self._wakers.add(waker)
            try:
                await asyncio.wait((settled, waker), timeout=left, return_when="FIRST_COMPLETED")
            finally:
                self._wakers.discard(waker)
                waker.cancel()
        return False


class HedgeRacer:
    """One attempt's request raced against a duplicate when it is slow to start.

    ``race`` runs the primary; if it has no first token within the clock's delay, one
    duplicate (an :class:`~arboris_nb.results.Attempt` with ``hedge=True`` and the same
    number) starts in a slot of its own. The first to finish wins; the other is cancelled
    at once and its attempt marked ``lost``. When both fail, the first error counts (the
    retry loop sees it).
    """

    def __init__(
        self, clock: HedgeClock, requester: Requester, limiter: Limiter, events: Announcer
    ) -> None:
        self.clock = clock
        self.requester = requester
        self.limiter = limiter
        self.events = events

    async def race(
        self, conn: Connection, version: Version, primary: Stream, request: ChatRequest
    ) -> Raced:
        first = asyncio.ensure_future(self._request(conn, version, primary, request))
        racers = [first]
        try:
            if not await self.clock.straggling(primary.attempt.started_at, primary.settled):
                return await first
            racers.append(asyncio.ensure_future(self.hedge(conn, version, primary.attempt.number)))
            return await self.first_finished(version, racers)
        finally:
            for task in racers:  # the loser, or both when this version was stopped
                task.cancel()
            await asyncio.gather(*racers, return_exceptions=True)

    async def _request(
        self, conn: Connection, version: Version, stream: Stream, request: ChatRequest
    ) -> Raced:
        return stream, await self.requester.request_once(conn, version, stream, request)

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
                self.requester.bill_open(attempt, asyncio.CancelledError())
                attempt.finished_at = self.clock.now()
                attempt.lost = True
                attempt.error_type = "CancelledError"

    async def hedge(self, conn: Connection, version: Version, number: int) -> Raced:
        """The duplicate of attempt ``number``: it waits for a slot like any request."""
        async with self.limiter.slot():
            if version.done:  # stopped (or surplus) while the hedge waited for its slot
                raise asyncio.CancelledError
            request = self.requester.build_request(version, number, hedge=True)
            await ready(conn, request)  # a hedge is a request: the key's budget counts it
            version.hedged = True
            attempt = Attempt(number=number, started_at=self.clock.now(), hedge=True)
            version.attempts.append(attempt)
            self.events.emit(VersionHedged, version=version, attempt=number)
            stream = Stream(attempt)
            return stream, await self.requester.request_once(conn, version, stream, request)
