"""Concurrency limiters: how many requests may be in flight at once.

The engine asks a limiter for a ``slot()`` around each attempt (never around a retry's
backoff wait, so a waiting retry holds no slot) and reports each attempt's outcome with
``observe()`` — a fixed limit ignores it; an adaptive one moves its limit. ``observe()``
is called while the attempt still holds its slot, so a limiter can shrink before the
slot is handed on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol, runtime_checkable

from .adaptive import AdaptiveLimit
from .errors import ConfigError
from .limit_memory import Learned, forget_learned_limits, learned_limits, memory_enabled

__all__ = ["AUTO_INITIAL", "FixedLimit", "Limiter", "forget_learned_limits", "make_limiter"]

#: Where ``max_parallel_requests="auto"`` starts.
AUTO_INITIAL = 4


@runtime_checkable
class Limiter(Protocol):
    @property
    def limit(self) -> int: ...

    def slot(self) -> AbstractAsyncContextManager[None]: ...

    def observe(self, *, ok: bool, rate_limited: bool, ttft_s: float | None) -> None: ...


class FixedLimit:
    """At most ``limit`` slots at once: an ``asyncio.Semaphore``, FIFO for waiters."""

    __slots__ = ("_limit", "_semaphore")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ConfigError(f"max_parallel_requests must be at least 1, got {limit}")
        self._limit = limit
        self._semaphore = asyncio.Semaphore(limit)

    @property
    def limit(self) -> int:
        return self._limit

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._semaphore:
            yield

    def observe(self, *, ok: bool, rate_limited: bool, ttft_s: float | None) -> None:
        """A fixed limit learns nothing."""


def make_limiter(value: int | str | Limiter, *, endpoint: str | None = None) -> Limiter:
    """The limiter for a ``max_parallel_requests`` setting: a number, ``"auto"`` (a fresh
    :class:`~arboris_nb.adaptive.AdaptiveLimit` between 1 and 10) or a limiter.

    ``auto`` starts cold at 4, not 1: each round trip spent below the API's capacity is
    lost time, while starting above a lower cap costs only the requests above it, once.
    With an ``endpoint`` (:func:`~arboris_nb.limit_memory.endpoint_key`) it starts warm
    from what the last runs there learned, and records what it learns as it goes (TCP's
    per-destination metrics: see :mod:`arboris_nb.limit_memory`; cold again after
    :func:`forget_learned_limits` or with ``ARBORIS_LIMIT_MEMORY=off``)."""
    if isinstance(value, Limiter):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return FixedLimit(value)
    if value == "auto":
        return _auto(endpoint)
    raise ConfigError(
        f'max_parallel_requests must be a whole number 1–10, "auto" or a limiter, got {value!r}'
    )


def _auto(endpoint: str | None) -> AdaptiveLimit:
    limiter = AdaptiveLimit(min=1, max=10, initial=AUTO_INITIAL)
    if endpoint is None or not memory_enabled():
        return limiter
    known = learned_limits.get(endpoint)
    if known is not None:
        limiter.resume(known)

    def remember(learned: Learned) -> None:
        learned_limits.put(endpoint, learned)

    limiter.on_learn = remember
    return limiter
