"""The state of one running mock: counters, request log, load gauges, limits, capacity queue."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..config import mask_key
from ._config import MockConfig
from ._ratelimit import Limits

__all__ = ["STATE", "FifoGate", "Plan", "State"]

# A stream writes at most this often per request; faster token rates are grouped into one
# chunk per write, so 100+ parallel streams do not turn into 100k tiny writes per second.
_MIN_WRITE_INTERVAL_S = 0.02
# Whole-server budget of stream writes per second: with many active streams the per-stream
# write interval grows (tokens are grouped more) so the server stays off the critical path.
_WRITES_PER_S_BUDGET = 5000.0
# Log entries kept for /stats; the oldest go first on a server that runs for days.
_LOG_LIMIT = 100_000


class FifoGate:
    """A counting gate whose waiters are served strictly in arrival order.

    ``release`` hands the slot straight to the oldest waiter, so a newcomer can never
    overtake the queue (asyncio.Semaphore only became fair in later 3.11 patch releases).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.active = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return sum(1 for fut in self.waiters if not fut.done())

    def enter(self) -> asyncio.Future[None] | None:
        """Take a slot now (``None``) or queue: the future resolves when a slot is handed over."""
        if self.active < self.capacity and not self.queued:
            self.active += 1
            return None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        return fut

    def release(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # slot passes to the waiter; `active` is unchanged
                return
        self.active -= 1


@dataclass
class Plan:
    """What one admitted request will produce, decided up front from its own RNG: the
    tokens of each choice (one unless the request asked for ``n``) and how each ends."""

    choices: list[list[str]]
    finish_reasons: list[str]
    cut_after: int | None  # a disconnect after this many steps (tokens of each choice)
    rng: random.Random
    prompt_tokens: int = 1
    digest: str = ""  # the prompt's identity, for the prompt cache
    slow: float = 1.0  # latency multiplier: straggler_factor for a straggler, else 1
    headers: dict[str, str] = field(default_factory=dict)  # rate-limit headers of the answer

    @property
    def steps(self) -> int:
        """Tokens of the longest choice: the choices are generated side by side."""
        return max(map(len, self.choices), default=0)


class State:
    """Counters, log, limits and the capacity gate of one running app."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.started = time.monotonic()
        self.gate = FifoGate(config.capacity) if config.capacity else None
        self.in_flight = 0
        self.active = 0  # sequences generating (past the capacity gate)
        self.limits = Limits(config)
        self.prefill_free_at = 0.0  # loop time when the prefill lane is next free
        self.reset()

    def reset(self) -> None:
        """Clear counters and log, refill the budgets and close any rate-limit window;
        gauges of requests still running are kept."""
        self.requests = 0
        self.by_status: Counter[str] = Counter()
        self.max_in_flight = self.in_flight
        self.max_queued = self.queued
        self.disconnects = 0
        self.prompt_tokens = 0
        self.cached_prompt_tokens = 0
        self.completion_tokens = 0
        self.prompts_read: set[str] = set()  # the prompt cache (prompt_cache=True)
        self.log: deque[dict[str, Any]] = deque(maxlen=_LOG_LIMIT)
        self.limits.reset()

    @property
    def queued(self) -> int:
        return self.gate.queued if self.gate else 0

    def now(self) -> float:
        return round(time.monotonic() - self.started, 6)

    def arrive(self, request: web.Request) -> dict[str, Any]:
        self.requests += 1
        auth = request.headers.get("Authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else auth.strip()
        entry: dict[str, Any] = {
            "n": self.requests,
            "arrival_s": self.now(),
            "end_s": None,
            "first_token_s": None,
            "status": None,
            "outcome": None,
            "stream": None,
            "tokens": 0,
            "prompt_tokens": 0,
            "cached_tokens": 0,
            "choices": 1,
            "straggler": False,
            "hedge": request.headers.get("X-Arboris-Hedge") == "1",
            "version": request.headers.get("X-Arboris-Version"),
            "attempt": request.headers.get("X-Arboris-Attempt"),
            "run": request.headers.get("X-Arboris-Run"),
            "key_id": mask_key(key) if key else None,
            "prompt_sha": None,
        }
        self.log.append(entry)
        return entry

    def finish(self, entry: dict[str, Any], status: int, outcome: str) -> None:
        entry.update(status=status, outcome=outcome, end_s=self.now())
        self.by_status[str(status)] += 1
        self.prompt_tokens += entry["prompt_tokens"]
        self.cached_prompt_tokens += entry["cached_tokens"]
        self.completion_tokens += entry["tokens"]
        if outcome == "disconnect":
            self.disconnects += 1

    def read_prompt(self, plan: Plan, entry: dict[str, Any]) -> float:
        """Bill the prompt (generation starts now) and return the loop time its reading
        ends. Prompts are read one after another at ``prefill`` tokens per second, so
        prompts sent at once share that throughput; one request for ``n`` choices reads
        its prompt once. A prompt read before is served from the cache if it is on."""
        cfg, loop = self.config, asyncio.get_running_loop()
        cached = plan.prompt_tokens if cfg.prompt_cache and plan.digest in self.prompts_read else 0
        self.prompts_read.add(plan.digest)
        entry.update(prompt_tokens=plan.prompt_tokens, cached_tokens=cached)
        if cfg.prefill is None:
            return loop.time()
        start = max(loop.time(), self.prefill_free_at)
        self.prefill_free_at = start + (plan.prompt_tokens - cached) / cfg.prefill
        return self.prefill_free_at

    def latency_factor(self) -> float:
        """Latency multiplier for the current load (see ``docs/mockserver.md``)."""
        cfg = self.config
        if cfg.capacity:
            return 1.0 + cfg.slowdown * (self.active / cfg.capacity)
        return 1.0 + cfg.slowdown * max(0, self.active - 1)

    def write_interval(self) -> float:
        return max(_MIN_WRITE_INTERVAL_S, self.active / _WRITES_PER_S_BUDGET)

    def snapshot(self, with_log: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "requests": self.requests,
            "by_status": dict(self.by_status),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "active": self.active,
            "queued": self.queued,
            "max_queued": self.max_queued,
            "disconnects": self.disconnects,
            "prompt_tokens": self.prompt_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "windows": self.limits.windows,
            "uptime_s": self.now(),
        }
        if with_log:
            data["log"] = [dict(e) for e in self.log]
        return data


STATE = web.AppKey("arboris_mock_state", State)
