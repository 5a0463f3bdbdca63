"""What ``max_parallel_requests="auto"`` learned, remembered per endpoint for the next run.

Linux keeps TCP's per-destination metrics (``tcp_metrics``: ssthresh, cwnd, RTT per peer)
so a new connection to a known host does not slow-start into a ceiling the last one
already found. This is the same idea for LLM endpoints: an editor writes many chapters
against one provider in one kernel, and every cold ``auto`` run pays again to find the
same cap (slow start from 4, a probe past the cap, a 429, and — behind a rate-limit
window — every slot idle until the window ends: 0.83 of the best fixed limit instead of
~1.0 in ``bench``).

An endpoint is its base URL + model + API key — the key as its masked form plus a short
one-way digest, so two keys that end alike stay apart and the key never is stored
(:func:`endpoint_key`). Each entry holds the *safe* limit (the highest level a clean
round of successes held) and the *ceiling* (where the last 429 congestion began, TCP's
ssthresh) with when they were learned. The next ``auto`` run on that endpoint starts at
the safe limit and treats the ceiling as a known cap: it probes it only rarely.

Entries expire after :data:`TTL_S` (10 minutes): providers move their limits (per-minute
budgets refill, tiers change, load on a shared gateway varies) and a memory must never
pin a low value forever. The ceiling's age counts from the 429 that taught it, not from
the last run, so a run that never probes it does not keep it alive; after it expires
the next run probes again. A run that meets no congestion raises the safe limit it
reached; a run that meets a 429 replaces what was known.

Start cold: :func:`forget_learned_limits` (all endpoints, or one), or set the environment
variable ``ARBORIS_LIMIT_MEMORY=off`` (``0``/``false``/``no`` too) before a run.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "ENV_VAR",
    "TTL_S",
    "Learned",
    "LimitMemory",
    "config_endpoint",
    "endpoint_key",
    "forget_learned_limits",
    "learned_limits",
    "memory_enabled",
]

#: How long a learned limit is trusted: about ten per-minute budget periods, and short
#: enough that a tier or gateway change is picked up within one editing session.
TTL_S = 600.0
#: ``off``, ``0``, ``false`` or ``no`` here: every ``auto`` run starts cold.
ENV_VAR = "ARBORIS_LIMIT_MEMORY"
_OFF = {"0", "off", "false", "no"}


@dataclass(frozen=True)
class Learned:
    """What one ``AdaptiveLimit`` learned about its endpoint.

    ``limit``: the highest level a clean round held; ``ceiling``: where the last 429
    congestion began (None: unknown); ``probe_scale``/``probe_idle_s``: how rare probes
    of the ceiling are (see :class:`~arboris_nb.adaptive.AdaptiveLimit`); ``congested``:
    this run met a 429 (so it replaces what was known); ``at``/``ceiling_at``: the
    memory's clock when the limit and the ceiling were learned (set by the memory)."""

    limit: int
    ceiling: int | None = None
    probe_scale: int = 1
    probe_idle_s: float = 0.0
    congested: bool = False
    at: float = 0.0
    ceiling_at: float = 0.0


class LimitMemory:
    """A thread-safe map endpoint → :class:`Learned`, entries expiring after ``ttl_s``.

    Process-wide through :data:`learned_limits`; ``clock`` is injectable for tests."""

    def __init__(self, *, ttl_s: float = TTL_S, clock: Callable[[], float] | None = None):
        self.ttl_s = ttl_s
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._entries: dict[str, Learned] = {}

    def __repr__(self) -> str:
        return f"LimitMemory(endpoints={len(self._entries)}, ttl_s={self.ttl_s})"

    def get(self, endpoint: str) -> Learned | None:
        """What is known about ``endpoint`` and still fresh (an old ceiling is dropped)."""
        with self._lock:
            return self._fresh(endpoint, self._clock())

    def put(self, endpoint: str, learned: Learned) -> None:
        """Record a limiter's state: a congested run replaces the entry, a clean one
        only raises the safe limit (and keeps the ceiling it started from, or dropped)."""
        with self._lock:
            now = self._clock()
            old = self._fresh(endpoint, now)
            if learned.congested or old is None:
                entry = replace(learned, at=now, ceiling_at=now)
            else:
                keep_age = learned.ceiling is not None and learned.ceiling == old.ceiling
                entry = replace(
                    learned,
                    limit=max(old.limit, learned.limit),
                    at=now,
                    ceiling_at=old.ceiling_at if keep_age else now,
                )
            self._entries[endpoint] = entry

    def forget(self, endpoint: str | None = None) -> None:
        """Forget one endpoint, or all (None)."""
        with self._lock:
            if endpoint is None:
                self._entries.clear()
            else:
                self._entries.pop(endpoint, None)

    def snapshot(self) -> dict[str, Learned]:
        """The fresh entries, for display."""
        with self._lock:
            now = self._clock()
            fresh = {k: self._fresh(k, now) for k in list(self._entries)}
        return {k: v for k, v in fresh.items() if v is not None}

    def _fresh(self, endpoint: str, now: float) -> Learned | None:
        entry = self._entries.get(endpoint)
        if entry is None:
            return None
        if now - entry.at > self.ttl_s:
            del self._entries[endpoint]
            return None
        if entry.ceiling is not None and now - entry.ceiling_at > self.ttl_s:
            entry = replace(entry, ceiling=None, probe_scale=1, probe_idle_s=0.0)
            self._entries[endpoint] = entry
        return entry


#: The process-wide memory ``max_parallel_requests="auto"`` uses.
learned_limits = LimitMemory()


def forget_learned_limits(endpoint: str | None = None) -> None:
    """Make the next ``auto`` runs start cold: forget every endpoint, or one."""
    learned_limits.forget(endpoint)


def memory_enabled() -> bool:
    """False when ``ARBORIS_LIMIT_MEMORY`` is off."""
    return os.environ.get(ENV_VAR, "").strip().lower() not in _OFF


def endpoint_key(backend: Any) -> str | None:
    """The backend's ``limit_endpoint`` string — ``base URL|model|masked key#digest`` for
    an OpenAI backend (:func:`config_endpoint`), the members' for a pool,
    ``simulated|model`` for the simulated one, a custom backend's own if it sets one —
    or None (its limits are not remembered). Never contains the key."""
    own = getattr(backend, "limit_endpoint", None)
    return own if isinstance(own, str) else None


def config_endpoint(config: Any) -> str:
    """An ``LLMConfig``'s endpoint for the memory: base URL, model, masked key and a
    4-byte one-way digest of the key (two keys ending alike stay apart)."""
    base = config.base_url or "https://api.openai.com/v1"
    key = config.api_key or ""
    digest = hashlib.blake2b(key.encode(), digest_size=4, person=b"arboris-lim").hexdigest()
    return f"{base}|{config.model}|{config.key_id}#{digest}"
