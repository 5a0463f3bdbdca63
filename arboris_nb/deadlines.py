"""The run's clock, and a version's time limits (``RetryPolicy.deadline_s``, ``stall_s``).

``now()`` is seconds since the run started on the loop's monotonic clock, so a fake loop
clock makes every timing exact in tests; deadlines are loop times.
"""

from __future__ import annotations

import asyncio

from .errors import BackendError, BackendTimeout
from .results import Version
from .retry import RetryPolicy

__all__ = ["RunClock"]


class RunClock:
    """Seconds since the run started, and when a version's attempt is abandoned."""

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
