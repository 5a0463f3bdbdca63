"""The mock's rate limits, modelled on how providers and gateways apply them.

* ``max_concurrent`` — a cap on requests in flight; the excess is refused at once
  (gateways, proxies);
* ``rpm_limit`` — at most this many admitted requests in any 60 s (a rolling count);
* ``request_budget`` / ``token_budget`` — OpenAI-style buckets that start full and refill
  continuously, the whole budget every ``budget_period_s``. An admitted request is charged
  one request and its prompt tokens + ``max_tokens`` (or the mock's ``output_tokens``);
  every answer carries ``x-ratelimit-limit|remaining|reset-requests|tokens``;
* ``window_s`` — a refusal by any of the above opens a rate-limit window: until it ends,
  every request is refused and told to retry when it ends (the same moment for all).

Every refusal is a 429 whose ``Retry-After`` says when the request would be admitted.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ._config import MockConfig

__all__ = ["Bucket", "Limits", "Verdict", "format_duration"]

_RPM_WINDOW_S = 60.0


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: ``"120ms"``, ``"1s"``, ``"1.5s"``, ``"6m0s"``, ``"1h2m3s"``.

    Rounded *up* to the millisecond: a client that waits this long finds the budget back.
    """
    ms = math.ceil(max(0.0, seconds) * 1000 - 1e-6)
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


class Bucket:
    """``limit`` units, refilled continuously at ``limit / period_s`` per second; starts full."""

    __slots__ = ("_at", "_level", "limit", "rate")

    def __init__(self, limit: int, period_s: float, now: float) -> None:
        self.limit = limit
        self.rate = limit / period_s
        self._level = float(limit)
        self._at = now

    def level(self, now: float) -> float:
        return min(float(self.limit), self._level + self.rate * (now - self._at))

    def wait_s(self, cost: int, now: float) -> float:
        """Seconds until ``cost`` fits (0 when it fits now)."""
        return max(0.0, (cost - self.level(now)) / self.rate)

    def take(self, cost: int, now: float) -> None:
        self._level = self.level(now) - cost
        self._at = now

    def headers(self, name: str, now: float) -> dict[str, str]:
        level = self.level(now)
        return {
            f"x-ratelimit-limit-{name}": str(self.limit),
            f"x-ratelimit-remaining-{name}": str(max(0, math.floor(level))),
            f"x-ratelimit-reset-{name}": format_duration((self.limit - level) / self.rate),
        }


@dataclass(frozen=True)
class Verdict:
    """The answer to one request: refused (with a message and a wait) or admitted."""

    refused: str | None
    retry_after_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


class Limits:
    """The rate-limit state of one running mock (``reset()`` refills and closes everything)."""

    def __init__(self, config: MockConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        cfg, now = self.config, self._clock()
        self.buckets: dict[str, Bucket] = {}
        if cfg.request_budget is not None:
            self.buckets["requests"] = Bucket(cfg.request_budget, cfg.budget_period_s, now)
        if cfg.token_budget is not None:
            self.buckets["tokens"] = Bucket(cfg.token_budget, cfg.budget_period_s, now)
        self.recent: deque[float] = deque()  # admission times, for rpm_limit
        self.window_until = -math.inf
        self.windows = 0  # rate-limit windows opened

    def admit(self, *, in_flight: int, tokens: int) -> Verdict:
        """Admit (and charge) a request costing ``tokens``, or refuse it."""
        now = self._clock()
        costs = {"requests": 1, "tokens": tokens}
        refused, wait = self._refusal(now, in_flight, costs)
        if refused is None:
            for name, bucket in self.buckets.items():
                bucket.take(costs[name], now)
            if self.config.rpm_limit is not None:
                self.recent.append(now)
        elif self.config.window_s is not None and now >= self.window_until:
            self.window_until = now + self.config.window_s
            self.windows += 1
            wait = self.config.window_s
            refused += f" A rate-limit window of {wait:g} s is now open."
        return Verdict(refused, wait, self._headers(now))

    def _refusal(
        self, now: float, in_flight: int, costs: dict[str, int]
    ) -> tuple[str | None, float]:
        cfg = self.config
        if now < self.window_until:
            left = self.window_until - now
            return f"Rate limit window open: try again in {left:.3f}s.", left
        if cfg.max_concurrent is not None and in_flight >= cfg.max_concurrent:
            limit = cfg.max_concurrent
            msg = f"Rate limit reached: {in_flight} requests in flight (limit {limit})."
            return msg, cfg.retry_after_s
        if self._rpm_full(now):
            msg = f"Rate limit reached for requests per min (RPM): limit {cfg.rpm_limit}."
            return msg, cfg.retry_after_s
        return self._budget_refusal(now, costs)

    def _budget_refusal(self, now: float, costs: dict[str, int]) -> tuple[str | None, float]:
        waits = {name: bucket.wait_s(costs[name], now) for name, bucket in self.buckets.items()}
        short = {name: wait for name, wait in waits.items() if wait > 0}
        if not short:
            return None, 0.0
        name, wait = max(short.items(), key=lambda kv: kv[1])
        bucket = self.buckets[name]
        if costs[name] > bucket.limit:
            msg = f"Request too large for {name}: limit {bucket.limit}, requested {costs[name]}."
            return msg, (bucket.limit - bucket.level(now)) / bucket.rate
        msg = (
            f"Rate limit reached for {name}: limit {bucket.limit}, "
            f"remaining {math.floor(bucket.level(now))}, requested {costs[name]}. "
            f"Please try again in {format_duration(wait)}."
        )
        return msg, wait

    def _rpm_full(self, now: float) -> bool:
        limit = self.config.rpm_limit
        if limit is None:
            return False
        while self.recent and self.recent[0] <= now - _RPM_WINDOW_S:
            self.recent.popleft()
        return len(self.recent) >= limit

    def _headers(self, now: float) -> dict[str, str]:
        if not self.config.ratelimit_headers:
            return {}
        headers: dict[str, str] = {}
        for name, bucket in self.buckets.items():
            headers.update(bucket.headers(name, now))
        return headers
