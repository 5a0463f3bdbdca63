"""Adaptive concurrency: a limit that finds how many requests the API takes at once.

``AdaptiveLimit`` is **AIMD** (additive increase, multiplicative decrease — TCP's congestion
control) with slow start, rather than a pure gradient method such as Netflix's
concurrency-limits ``Gradient2``. Why: the signal an LLM API gives is mostly *explicit* —
a 429 with Retry-After when a per-account concurrency or rate cap is hit — and often no
latency rise before it (the cap rejects, it does not queue). A gradient law only moves on
latency, so it would overshoot into 429s. Latency still counts: when the time to first
token (TTFT) of recent requests rises well above its long-run level (a self-hosted server
that queues), the limit falls the same way as on a 429. The control law:

* **slow start** — until the first decrease, each success while the limiter is saturated
  adds 1 (the limit doubles per round trip), so a good limit is found in a few rounds;
* **additive increase** — afterwards, +1 after ``limit × patience`` saturated successes;
* **multiplicative decrease** — a 429, or short-term TTFT above ``latency_tolerance`` ×
  the long-term TTFT, sets ``limit = max(min, floor(limit × backoff))`` (at least −1),
  at most once per ``cooldown_s`` (one overload event often returns several 429s);
* **no cascade** — a 429 also lowers the limit to the other requests still in flight, so
  the slot it frees is not handed to the next queued request (which would get a 429 too);
* **probe backoff** — each 429 doubles ``patience`` (at least 4, up to ``max_patience``), so a hard
  cap is probed ever more rarely: that keeps the 429 share low once the cap is known.
  Growing past the level of the last 429 without a new one resets ``patience`` to 1.

Only a *saturated* limiter grows (all slots busy or someone waiting): successes at low
load say nothing about the capacity above it. Errors other than 429 (5xx, timeouts,
disconnects) are not load signals here; the retry policy handles them.

The limiter is shareable across runs (pass the same object as ``limiter=``) and records
its limit over time in ``history``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = ["AdaptiveLimit", "plot_limit_history"]

Clock = Callable[[], float]


def _loop_clock() -> float:
    """The running loop's clock (fake under looptime), else the monotonic clock."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


class AdaptiveLimit:
    """A :class:`~arboris_nb.limits.Limiter` whose limit moves between ``min`` and ``max``.

    ``AdaptiveLimit(min=1, max=10, initial=2)``; ``clock`` is injectable for tests.
    ``history`` holds ``(t, limit)`` pairs, ``t`` in seconds since the first use.
    """

    adaptive = True  # the engine labels runs under it max_parallel_requests="auto"

    def __init__(
        self,
        *,
        min: int = 1,
        max: int = 10,
        initial: int | None = None,
        backoff: float = 0.9,
        latency_tolerance: float = 1.5,
        cooldown_s: float = 0.5,
        max_patience: int = 32,
        clock: Clock | None = None,
    ) -> None:
        start = min if initial is None else initial
        if not 1 <= min <= max:
            raise ConfigError(f"AdaptiveLimit needs 1 <= min <= max, got min={min}, max={max}")
        if not min <= start <= max:
            raise ConfigError(f"AdaptiveLimit initial must be from {min} to {max}, got {start}")
        if not 0 < backoff < 1:
            raise ConfigError(f"AdaptiveLimit backoff must be between 0 and 1, got {backoff}")
        if latency_tolerance <= 1 or cooldown_s < 0 or max_patience < 1:
            raise ConfigError(
                "AdaptiveLimit needs latency_tolerance > 1, cooldown_s >= 0, max_patience >= 1"
            )
        self.min, self.max = min, max
        self.backoff = backoff
        self.latency_tolerance = latency_tolerance
        self.cooldown_s = cooldown_s
        self.max_patience = max_patience
        self._clock = clock or _loop_clock
        self._t0: float | None = None
        self._limit = start
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._slow_start = True
        self._successes = 0
        self._patience = 1
        self._ceiling: int | None = None  # the limit at which the last 429 came
        self._last_decrease: float | None = None
        self._limit_before_decrease = start
        self._ttft_short: float | None = None
        self._ttft_long: float | None = None
        self.history: list[tuple[float, int]] = []
        self.rate_limited = 0  # 429s observed
        self.decreases = 0

    def __repr__(self) -> str:
        return (
            f"AdaptiveLimit(limit={self._limit}, min={self.min}, max={self.max}, "
            f"in_flight={self._in_flight})"
        )

    # -- the Limiter protocol ----------------------------------------------------------
    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_flight(self) -> int:
        """Slots held right now."""
        return self._in_flight

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of ``limit`` slots; waiters are admitted first come, first served."""
        self._now()  # starts the history clock at first use
        if self._in_flight >= self._limit or self._waiters:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._release()  # the slot was handed over just as we were cancelled
                else:
                    self._waiters.remove(waiter)
                raise
        else:
            self._in_flight += 1
        try:
            yield
        finally:
            self._release()

    def observe(self, *, ok: bool, rate_limited: bool, ttft_s: float | None) -> None:
        """Learn from one finished attempt (the engine calls this once per attempt)."""
        if rate_limited:
            self.rate_limited += 1
            self._on_rate_limited()
        elif ok:
            if ttft_s is not None and self._latency_inflated(ttft_s):
                self._decrease()
            else:
                self._on_success()

    # -- the control law ---------------------------------------------------------------
    def _on_rate_limited(self) -> None:
        if self._decrease():
            self._ceiling = self._limit_before_decrease
            # At least 4: one probe per ~4 × limit requests keeps 429s to a few percent.
            self._patience = min(self.max_patience, max(4, self._patience * 2))
        # The engine observes inside the attempt's slot. The slot this 429 frees must not
        # go straight to the next waiter — the server just said it is full — or every
        # queued request in turn burns a 429. So the limit drops to the requests that are
        # still in flight (those the server took), whatever the cooldown says.
        if self._in_flight >= 1:
            self._set_limit(min(self._limit, self._in_flight - 1))

    def _on_success(self) -> None:
        if not self._saturated():
            return
        self._successes += 1
        needed = 1 if self._slow_start else self._limit * self._patience
        if self._successes >= needed:
            self._successes = 0
            self._set_limit(self._limit + 1)
            if self._ceiling is not None and self._limit > self._ceiling:
                self._ceiling, self._patience = None, 1  # the cap moved up

    def _saturated(self) -> bool:
        # Called inside the slot of the observed attempt, so it counts itself.
        return self._in_flight >= self._limit or bool(self._waiters)

    def _latency_inflated(self, ttft: float) -> bool:
        """Short-term TTFT (EWMA α=0.3) against long-term TTFT (EWMA α=0.05)."""
        if self._ttft_long is None or self._ttft_short is None:
            self._ttft_long = self._ttft_short = ttft
            return False
        self._ttft_short += 0.3 * (ttft - self._ttft_short)
        self._ttft_long += 0.05 * (ttft - self._ttft_long)
        return self._ttft_short > self.latency_tolerance * max(self._ttft_long, 1e-3)

    def _decrease(self) -> bool:
        now = self._now()
        if self._last_decrease is not None and now - self._last_decrease < self.cooldown_s:
            return False  # the same overload event as the last decrease
        self._last_decrease = now
        self._limit_before_decrease = self._limit
        self._slow_start = False
        self._successes = 0
        self.decreases += 1
        self._set_limit(min(self._limit - 1, math.floor(self._limit * self.backoff)))
        return True

    def _set_limit(self, value: int) -> None:
        value = max(self.min, min(self.max, value))
        if value != self._limit:
            self._limit = value
            self.history.append((self._now(), value))
            self._wake()

    # -- slots -------------------------------------------------------------------------
    def _release(self) -> None:
        self._in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._in_flight < self._limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._in_flight += 1  # the slot passes straight to the waiter
                waiter.set_result(None)

    def _now(self) -> float:
        now = self._clock()
        if self._t0 is None:
            self._t0 = now
            self.history.append((0.0, self._limit))
        return now - self._t0

    # -- reporting ---------------------------------------------------------------------
    def frame(self) -> pd.DataFrame:
        """``history`` as a DataFrame with columns ``t_s`` and ``limit``."""
        import pandas as pd

        return pd.DataFrame(self.history, columns=["t_s", "limit"])


def plot_limit_history(frame: pd.DataFrame, *, title: str = "Adaptive limit") -> Figure:
    """A step plot of an :meth:`AdaptiveLimit.frame` (the limit over time)."""
    from .analysis.plots import _figure  # displays as an image in Jupyter

    fig = _figure(6, 3)
    ax = fig.add_subplot()
    if len(frame):
        ts, limits = list(frame["t_s"]), list(frame["limit"])
        ax.step(ts, limits, where="post")
    ax.set_xlabel("time since first request (s)")
    ax.set_ylabel("concurrency limit")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig
