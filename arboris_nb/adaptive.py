"""Adaptive concurrency: a limit that finds how many requests the API takes at once.

``AdaptiveLimit`` is **AIMD** (additive increase, multiplicative decrease) as in Netflix
concurrency-limits' ``AIMDLimit``, with three things taken from TCP congestion control,
and a latency rule in the spirit of Netflix's ``Gradient2``. Why AIMD and not a pure
gradient: an LLM API's overload signal is mostly *explicit* — a 429, often with
Retry-After — and often arrives with no latency rise before it (a cap or a rate limit
rejects, it does not queue). A gradient law moves only on latency, so it would run into
the 429s. Latency still counts where it is the only signal (a self-hosted server that
just gets slower). The control law:

* **slow start** (TCP) — until the first congestion event, +1 per saturated success: the
  limit doubles per round trip, so a good level is found in a few rounds.
* **one congestion event, one decrease** (TCP NewReno) — a 429 answering a request that
  was admitted *before* the last decrease is part of the event that caused it: a window
  or a burst refuses many requests at once, and counting each would collapse the limit
  (8 → 1 in 0.4 s). A 429 for a request admitted after it is a new event, which sets
  ``limit = ⌊limit × backoff⌋`` — or lower, to the other requests still in flight (the
  ones the server took), but never below half. A later 429 of the same event may still
  lower the limit to the requests still in flight: that is how a burst above a
  concurrency cap finds the cap at once, and why the slot a 429 frees is not handed to
  the next queued request (which would be refused too).
* **ssthresh** (TCP) — the limit where congestion began is remembered (``ceiling``).
  Below it the limit grows by one per round trip (+1 per ``limit`` saturated successes);
  reaching it again is a *probe*. A probe costs a 429 and, when the 429 carries
  Retry-After, every slot idle until it ends; so the first probe waits for
  ``probe_every × (1 + limit × retry_after / duration)`` successes (``duration``: the
  usual time of an attempt), which keeps probing below ~2 % of the throughput, and the
  wait doubles with every failed probe (up to 64×). A probe that survives as long again
  means the cap moved: the ceiling is dropped.
* **episodes and recovery** — ssthresh is a memory of where congestion began, not a
  ceiling forever. The first new event opens a congestion *episode*; it ends with a clean
  round (``limit`` successes in a row, so the Retry-After gate has passed). New events
  inside an episode (a budget that stays empty, a window that keeps reopening) still cut
  the limit, but only the first event sets the ceiling and only a failed probe makes
  probing rarer: a rate-limit storm says nothing about how many requests the server takes
  at once. After the episode, the limit grows by slow start (+1 per success) back to the
  episode's first cut (TCP: slow start up to ssthresh) — not to where congestion began,
  which would be a probe — and a ceiling known before the episode applies again if the
  storm's was lower. A 429 on the way up is a new episode, so a cap that really moved
  down costs one such 429.
* **latency** (Gradient2's idea: compare short-term latency with a long-term baseline) —
  with no 429s, when the short-term time to first token (EWMA α=0.3) exceeds
  ``latency_tolerance`` × its long-term average (EWMA α=0.05), that is a congestion
  event too: one multiplicative decrease, no ceiling. A mean, not a minimum, is the
  baseline: LLM latencies are noisy, and noise must not read as a queue.

Only a *saturated* limiter grows (all slots busy or someone waiting): successes at low
load say nothing about the capacity above it. Errors other than 429 (5xx, timeouts,
disconnects) are not load signals here; the retry policy handles them. The Retry-After
*gate* — no version sends before a 429's Retry-After ends — is kept per API key by the
backend's pacing budget (:mod:`arboris_nb.pacing`), so it holds under any limiter.

* **memory per endpoint** (TCP's per-destination metrics, Linux ``tcp_metrics``) — what
  a limiter learned (:meth:`learned`: the safe limit and the ceiling) outlives it:
  ``max_parallel_requests="auto"`` stores it per endpoint as it goes and the next run
  on that endpoint starts from it (:meth:`resume`) instead of slow-starting into a cap
  already found; see :mod:`arboris_nb.limit_memory` (expiry, opting out).

The limiter is shareable across runs (pass the same object as ``limiter=``) and records
its limit over time in ``history``. ``observe()`` must be called inside the attempt's
``slot()`` (the engine does): that is how it knows when the attempt was admitted.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from .errors import ConfigError
from .limit_memory import Learned

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = ["AdaptiveLimit", "plot_limit_history"]

Clock = Callable[[], float]

_MAX_PROBE_SCALE = 64  # probes of a confirmed cap grow this rare at most
_SHORT_ALPHA = 0.3  # short-term TTFT: the last few requests
_LONG_ALPHA = 0.05  # the baseline: the last few dozen requests
_MIN_SAMPLES = 5  # TTFT samples before latency may count as congestion

# (limiter id, admitted at) of the slot this task holds.
_ADMISSION: contextvars.ContextVar[tuple[int, float] | None] = contextvars.ContextVar(
    "arboris_admission", default=None
)


def _loop_clock() -> float:
    """The running loop's clock (fake under looptime), else the monotonic clock."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


class AdaptiveLimit:
    """A :class:`~arboris_nb.limits.Limiter` whose limit moves between ``min`` and ``max``.

    ``AdaptiveLimit(min=1, max=10, initial=4)``; ``clock`` is injectable for tests.
    ``history`` holds ``(t, limit)`` pairs, ``t`` in seconds since the first use.

    Size: a little over 300 lines because it is one state machine (slow start, congestion
    episode, ceiling and probing, latency back-off, warm start) whose steps read and write the
    same few fields on the event loop; split apart, each piece would have to re-check the
    others' state. The algorithm's reasons are in the module docstring.
    """

    adaptive = True  # the engine labels runs under it max_parallel_requests="auto"

    def __init__(
        self,
        *,
        min: int = 1,
        max: int = 10,
        initial: int | None = None,
        backoff: float = 0.75,
        latency_tolerance: float = 1.5,
        probe_every: int = 50,
        clock: Clock | None = None,
    ) -> None:
        start = min if initial is None else initial
        _validate(min, max, start, backoff, latency_tolerance, probe_every)
        self.min, self.max = min, max
        self.backoff = backoff
        self.latency_tolerance = latency_tolerance
        self.probe_every = probe_every
        self._clock = clock or _loop_clock
        self._t0: float | None = None
        self._limit = start
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._slow_start = True
        self._successes = 0  # saturated successes since the limit last moved
        self._ceiling: int | None = None  # where the last 429 congestion began (ssthresh)
        self._probe_scale = 1  # doubles with every failed probe
        self._probing = False  # the limit was raised to the ceiling: the next 429 is a probe's
        self._clean = 0  # successes since the last 429
        self._episode = False  # between a 429 congestion event and the next clean round
        self._recover_to: int | None = None  # after the episode, slow start back to this
        self._before: tuple[int | None, int, float] = (None, 1, 0.0)  # ceiling, scale, idle
        self._probe_idle = 0.0  # Retry-After of the event that set the ceiling
        self._retry_after: float | None = None  # of the 429 being observed
        self._duration: float | None = None  # EWMA of successful attempts, admitted → done
        self._last_decrease = -math.inf
        self._event_floor = min  # the same event may lower the limit down to this
        self._ttft_short: float | None = None
        self._ttft_base: float | None = None
        self._ttft_samples = 0
        self.history: list[tuple[float, int]] = []
        self.rate_limited = 0  # 429s observed
        self.decreases = 0  # congestion events (429 or latency)
        self.warm = False  # started from what an earlier run learned (resume)
        #: Called with :meth:`learned` whenever it changes (the endpoint memory).
        self.on_learn: Callable[[Learned], None] | None = None
        self._good: int | None = None  # the highest level a clean round held
        self._congested = False  # a 429 congestion event happened
        self._reported: Learned | None = None

    def __repr__(self) -> str:
        return (
            f"AdaptiveLimit(limit={self._limit}, min={self.min}, max={self.max}, "
            f"in_flight={self._in_flight}, ceiling={self._ceiling})"
        )

    # -- the Limiter protocol ----------------------------------------------------------
    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_flight(self) -> int:
        """Slots held right now."""
        return self._in_flight

    @property
    def ceiling(self) -> int | None:
        """The limit at which the last 429 congestion event began (None: not known)."""
        return self._ceiling

    @property
    def probe_after(self) -> int:
        """Saturated successes the limit waits at the ceiling before probing it: a probe
        costs one 429 and every slot idle for its Retry-After, so rarer when that is long."""
        idle_share = self._limit * self._probe_idle / self._duration if self._duration else 0.0
        return math.ceil(self.probe_every * self._probe_scale * (1.0 + idle_share))

    def learned(self) -> Learned | None:
        """What this limiter knows about its endpoint: the highest level a clean round
        held, else the level a 429 cut it to (None before either)."""
        if self._good is None and not self._congested:
            return None
        return Learned(
            limit=self._limit if self._good is None else self._good,
            ceiling=self._ceiling,
            probe_scale=self._probe_scale,
            probe_idle_s=self._probe_idle,
            congested=self._congested,
        )

    def resume(self, learned: Learned) -> None:
        """Start from what an earlier limiter learned (before the first request): at its
        safe limit, below its ceiling, which is probed as rarely as it was. With no
        ceiling known, slow start goes on above the safe limit."""
        start = learned.limit
        if learned.ceiling is not None:
            start = min(start, learned.ceiling - 1)
            self._ceiling = learned.ceiling
            self._probe_scale, self._probe_idle = learned.probe_scale, learned.probe_idle_s
            self._slow_start = False  # TCP: above ssthresh, one step per round trip
        self._limit = max(self.min, min(self.max, start))
        self._good = self._limit
        self.warm = True
        self._reported = self.learned()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of ``limit`` slots; waiters are admitted first come, first served."""
        self._now()  # starts the history clock at first use
        if self._in_flight >= self._limit or self._waiters:
            await self._wait_turn()
        else:
            self._in_flight += 1
        # Remember, for observe(), when this attempt was admitted.
        token = _ADMISSION.set((id(self), self._clock()))
        try:
            yield
        finally:
            _ADMISSION.reset(token)
            self._release()

    async def _wait_turn(self) -> None:
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

    def note_retry_after(self, seconds: float) -> None:
        """The Retry-After of the 429 about to be observed (the engine passes it on)."""
        self._retry_after = seconds

    def observe(self, *, ok: bool, rate_limited: bool, ttft_s: float | None) -> None:
        """Learn from one finished attempt (the engine calls this once per attempt)."""
        admitted = self._admitted()
        new_event = admitted >= self._last_decrease
        if rate_limited:
            self.rate_limited += 1
            self._clean = 0
            self._on_rate_limited(new_event)
        elif ok:
            self._note_duration(self._clock() - admitted)
            self._clean += 1
            if self._episode and self._clean >= self._limit:
                self._end_episode()
            self._note_good()
            inflated = ttft_s is not None and self._latency_inflated(ttft_s)
            if inflated and new_event:
                self._decrease(self._target(math.floor(self._limit * self.backoff)))
            elif not inflated:
                self._on_success()
        self._retry_after = None
        self._report()

    def _note_good(self) -> None:
        """A success with ``n`` requests in flight, after ``n`` clean in a row: ``n`` held."""
        if self._episode or not self._saturated():
            return
        held = min(self._clean, self._in_flight)
        if self._good is None or held > self._good:
            self._good = held

    def _report(self) -> None:
        if self.on_learn is None:
            return
        learned = self.learned()
        if learned is not None and learned != self._reported:
            self._reported = learned
            self.on_learn(learned)

    # -- the control law ---------------------------------------------------------------
    def _admitted(self) -> float:
        """When the observed attempt was admitted (now, if observed outside its slot)."""
        held = _ADMISSION.get()
        return held[1] if held is not None and held[0] == id(self) else self._clock()

    def _on_rate_limited(self, new_event: bool) -> None:
        # Inside the refused attempt's slot: the others in flight are the ones the
        # server took (or is about to refuse, if this is a burst).
        others = self._in_flight - 1
        if not new_event:
            # The same event: no new cut, but the slot this 429 frees goes to nobody,
            # and congestion began no higher than where this request was refused.
            self._set_limit(max(self._event_floor, min(self._limit, others)))
            if self._ceiling is not None:
                self._ceiling = max(self._limit + 1, min(self._ceiling, others + 1))
            return
        self._event_floor = max(self.min, self._limit // 2)
        self._congested = True
        target = self._target(min(others, math.floor(self._limit * self.backoff)))
        if self._episode:  # the same episode goes on: cut, learn nothing about the cap
            self._decrease(target)
            return
        self._episode = True
        self._before = (self._ceiling, self._probe_scale, self._probe_idle)
        failed_probe = self._probing
        self._probe_scale = min(_MAX_PROBE_SCALE, self._probe_scale * 2) if failed_probe else 1
        self._probe_idle = self._retry_after or 0.0
        self._ceiling = max(self.min, min(self._limit, others + 1))
        self._decrease(target)
        self._recover_to = self._limit  # TCP's ssthresh: the level after the first cut
        if self._good is not None:  # no longer proven: the server refused at this level
            self._good = min(self._good, self._limit)

    def _target(self, value: int) -> int:
        """A decrease: at least one step, at most halving (TCP never cuts more)."""
        return max(self._limit // 2, min(self._limit - 1, value))

    def _decrease(self, target: int) -> None:
        self._last_decrease = self._clock()
        self._slow_start = False
        self._probing = False
        self._successes = 0
        self.decreases += 1
        self._set_limit(target)

    def _note_duration(self, seconds: float) -> None:
        if self._duration is None:
            self._duration = seconds
        else:
            self._duration += 0.1 * (seconds - self._duration)

    def _on_success(self) -> None:
        if not self._saturated():
            return
        self._successes += 1
        if self._successes < self._needed():
            return
        self._successes = 0
        self._set_limit(self._limit + 1)
        if self._recover_to is not None and self._limit >= self._recover_to:
            self._recovered()
        elif self._ceiling is not None and self._limit > self._ceiling:
            self._ceiling = None  # the probe held: the cap moved up
            self._probe_scale, self._probe_idle = 1, 0.0
        recovering = self._recovering()
        self._probing = (
            not recovering and self._ceiling is not None and self._limit >= self._ceiling
        )

    def _end_episode(self) -> None:
        """A clean round after the last 429: the gate has passed; recover if below."""
        self._episode = False
        if self._recover_to is not None and self._limit >= self._recover_to:
            self._recover_to = None  # nothing to recover: the episode's ceiling stands

    def _recovering(self) -> bool:
        """Growing back to the episode's first cut, the episode being over."""
        return not self._episode and self._recover_to is not None and self._limit < self._recover_to

    def _recovered(self) -> None:
        """Back at the episode's first cut: a ceiling at or below it was the storm's, so
        the one known before the episode (if above) applies again."""
        self._recover_to = None
        ceiling, scale, idle = self._before
        if self._ceiling is not None and self._ceiling > self._limit:
            return  # the episode's own ceiling is above: keep it
        if ceiling is not None and ceiling > self._limit:
            self._ceiling, self._probe_scale, self._probe_idle = ceiling, scale, idle
        else:
            self._ceiling, self._probe_scale, self._probe_idle = None, 1, 0.0

    def _needed(self) -> int:
        """Saturated successes before the next +1."""
        if self._slow_start or self._recovering():
            return 1
        if self._ceiling is not None and self._limit + 1 >= self._ceiling:
            return self.probe_after  # a probe at (or past) the known cap
        return self._limit  # one step per round trip

    def _saturated(self) -> bool:
        # Called inside the slot of the observed attempt, so it counts itself.
        return self._in_flight >= self._limit or bool(self._waiters)

    def _latency_inflated(self, ttft: float) -> bool:
        """Short-term TTFT against its baseline, once there are enough samples."""
        self._ttft_samples += 1
        if self._ttft_short is None or self._ttft_base is None:
            self._ttft_short = self._ttft_base = ttft
            return False
        self._ttft_short += _SHORT_ALPHA * (ttft - self._ttft_short)
        self._ttft_base += _LONG_ALPHA * (ttft - self._ttft_base)
        limit = self.latency_tolerance * max(self._ttft_base, 1e-3)
        return self._ttft_samples >= _MIN_SAMPLES and self._ttft_short > limit

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


def _validate(
    low: int, high: int, start: int, backoff: float, tolerance: float, probe_every: int
) -> None:
    if not 1 <= low <= high:
        raise ConfigError(f"AdaptiveLimit needs 1 <= min <= max, got min={low}, max={high}")
    if not low <= start <= high:
        raise ConfigError(f"AdaptiveLimit initial must be from {low} to {high}, got {start}")
    if not 0 < backoff < 1:
        raise ConfigError(f"AdaptiveLimit backoff must be between 0 and 1, got {backoff}")
    if tolerance <= 1:
        raise ConfigError(f"AdaptiveLimit latency_tolerance must be above 1, got {tolerance}")
    if probe_every < 1:
        raise ConfigError(f"AdaptiveLimit probe_every must be at least 1, got {probe_every}")


def plot_limit_history(frame: pd.DataFrame, *, title: str = "Adaptive limit") -> Figure:
    """A step plot of an :meth:`AdaptiveLimit.frame` (the limit over time).

    For a run's limit *with* in-flight requests and 429 marks, see
    :func:`arboris_nb.analysis.plots.plot_limit`.
    """
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
