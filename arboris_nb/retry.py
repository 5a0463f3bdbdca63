"""When and how long to wait before another attempt, and when to hedge one.

Exponential backoff with jitter, never shorter than the server's ``Retry-After``: the
jitter is added on top of the larger of the two, so a retry never comes early.

Hedging (``hedge_after_s`` / ``hedge_quantile``) is the other answer to a slow request:
instead of waiting for it to fail, a duplicate is started while it still runs, and the
first of the two to finish wins (see :mod:`arboris_nb.hedging`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .errors import BackendError, ConfigError

__all__ = ["RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` requests at most per version (1 = no retry).

    ``deadline_s`` caps a version's total time (attempts and waits); ``stall_s`` abandons
    an attempt that sends no token for that long, and retries it.

    Hedged requests: when an attempt has no first token after ``hedge_after_s`` seconds,
    a duplicate request is started for it (under the same concurrency limit); the first
    to finish wins and the other is cancelled at once. ``hedge_quantile`` (e.g. 0.9)
    takes the delay from the run itself: that quantile of the times to first token seen
    so far, once ``hedge_min_samples`` are known (with ``hedge_after_s`` too, the later of
    the two). A version is hedged at most once.
    """

    attempts: int = 3
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    jitter: float = 0.25
    deadline_s: float | None = None
    stall_s: float | None = None
    seed: int | None = None
    hedge_after_s: float | None = None
    hedge_quantile: float | None = None
    hedge_min_samples: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.attempts <= 20:
            raise ConfigError(f"retry attempts must be from 1 to 20, got {self.attempts}")
        if self.base_delay_s < 0 or self.max_delay_s < 0 or not 0 <= self.jitter <= 1:
            raise ConfigError("retry delays must be >= 0 and jitter from 0 to 1")
        for name in ("deadline_s", "stall_s", "hedge_after_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"RetryPolicy.{name} must be above 0 (or None), got {value}")
        q = self.hedge_quantile
        if q is not None and not 0 < q < 1:
            raise ConfigError(f"RetryPolicy.hedge_quantile must be between 0 and 1, got {q}")
        if isinstance(self.hedge_min_samples, bool) or not 1 <= self.hedge_min_samples <= 100:
            raise ConfigError(
                f"RetryPolicy.hedge_min_samples must be from 1 to 100, got {self.hedge_min_samples}"
            )

    @property
    def hedging(self) -> bool:
        """True when this policy hedges slow attempts."""
        return self.hedge_after_s is not None or self.hedge_quantile is not None

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        return isinstance(error, BackendError) and error.retryable and attempt < self.attempts

    def delay(self, attempt: int, error: BaseException, rng: random.Random) -> float:
        """Seconds to wait after failed ``attempt`` (1-based)."""
        backoff = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        hint = error.retry_after_s if isinstance(error, BackendError) else None
        floor = max(backoff, hint or 0.0)
        return floor + floor * self.jitter * rng.random()
