"""Hedged requests: when an attempt has waited too long for its first token.

A run's latency is its slowest version's, and real APIs have heavy tails: a request
stuck behind a busy replica takes many times the usual time. A hedge is a duplicate of
such a request, started while the first still runs; whichever finishes first wins and
the other is cancelled (the runner does the race, see :meth:`Runner.race`). This module
decides *when*: :class:`HedgeClock` knows the delay — the policy's ``hedge_after_s``, or
the run's own time-to-first-token quantile once enough attempts have one — and wakes the
attempts that wait on it when a new sample moves the delay.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence

from .retry import RetryPolicy

__all__ = ["HedgeClock", "quantile"]


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
