"""When and how long to wait before another attempt.

Exponential backoff with jitter, never shorter than the server's ``Retry-After``: the
jitter is added on top of the larger of the two, so a retry never comes early.
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
    """

    attempts: int = 3
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    jitter: float = 0.25
    deadline_s: float | None = None
    stall_s: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.attempts <= 20:
            raise ConfigError(f"retry attempts must be from 1 to 20, got {self.attempts}")
        if self.base_delay_s < 0 or self.max_delay_s < 0 or not 0 <= self.jitter <= 1:
            raise ConfigError("retry delays must be >= 0 and jitter from 0 to 1")
        for name in ("deadline_s", "stall_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"retry {name} must be above 0 (or None), got {value}")

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        return isinstance(error, BackendError) and error.retryable and attempt < self.attempts

    def delay(self, attempt: int, error: BaseException, rng: random.Random) -> float:
        """Seconds to wait after failed ``attempt`` (1-based)."""
        backoff = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        hint = error.retry_after_s if isinstance(error, BackendError) else None
        floor = max(backoff, hint or 0.0)
        return floor + floor * self.jitter * rng.random()
