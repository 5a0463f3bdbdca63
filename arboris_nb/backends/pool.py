"""Key and endpoint pools: one backend that spreads requests over several keys or servers.

``KeyPool([LLMConfig(api_key=k1), LLMConfig(api_key=k2)])`` or ``KeyPool.from_env()``
(``OPENAI_API_KEYS=k1,k2``) picks a member per request:

* ``"round_robin"`` (the default, Arboris-Novel's idea): version *i* goes to member
  *i mod n*, and each retry moves on to the next member;
* ``"least_busy"``: the member with the fewest requests in flight.

A member that answers 429 cools down (is skipped) for the server's Retry-After, or
``cooldown_s`` without one; an auth error (401/403) benches it for ``auth_cooldown_s``
and the request moves on to the next member at once (nothing was streamed yet).
When every member is cooling, the one that is free soonest is used (the engine's retry
wait already honoured Retry-After); when every member was refused for auth, the pool
fails at once. Each request yields ``Served(label)`` — the member's masked key id (plus
its host when the pool spans endpoints) — so every Version records which key served it.

Pacing (:mod:`arboris_nb.pacing`): each member keeps its own rate-limit budget from its
answers' ``x-ratelimit-*`` headers, with its own Retry-After gate. Before a request starts,
the pool takes the first member (in strategy order) whose budget fits it now, else waits
for the one that fits soonest.

Keys of one account share that account's rate limit: a pool raises throughput only
across accounts (or providers). The pool logs that warning once per process; pass
``shared_budget=True`` so such keys pace on one budget instead of each spending it.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import AsyncIterator, Callable, Hashable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from ..config import LLMConfig, load_api_keys, load_env
from ..errors import AuthError, BackendError, ConfigError, RateLimited
from ..limit_memory import endpoint_key
from ..pacing import RateBudget, request_key
from .base import Backend, ChatRequest, Connection, Served, StreamItem, closing_stream
from .openai import OpenAIBackend

__all__ = ["KeyPool", "Strategy"]

log = logging.getLogger("arboris_nb")

Strategy = Literal["round_robin", "least_busy"]
_STRATEGIES = ("round_robin", "least_busy")
_MAX_SLEEP_S = 0.5
_warned_shared_account = False


@dataclass
class _Member:
    backend: Backend
    label: str
    in_flight: int = 0
    served: int = 0
    cool_until: float = 0.0
    auth_failed: bool = False


def _labels(configs: Sequence[LLMConfig | Backend]) -> list[str]:
    """Masked key ids; with the host appended when the members use different endpoints."""
    urls = {c.base_url for c in configs if isinstance(c, LLMConfig)}
    labels = []
    for i, c in enumerate(configs, 1):
        if not isinstance(c, LLMConfig):
            labels.append(f"{type(c).__name__}#{i}")
            continue
        host = urllib.parse.urlsplit(c.base_url or "https://api.openai.com").netloc
        key = c.key_id if c.api_key else None
        if len(urls) > 1 or key is None:
            labels.append(f"{key}@{host}" if key else host)
        else:
            labels.append(key)
    return labels


def _warn_shared_account(configs: Sequence[LLMConfig | Backend]) -> None:
    global _warned_shared_account
    by_url: dict[str | None, set[str]] = {}
    for c in configs:
        if isinstance(c, LLMConfig) and c.api_key:
            by_url.setdefault(c.base_url, set()).add(c.api_key)
    if not _warned_shared_account and any(len(keys) > 1 for keys in by_url.values()):
        _warned_shared_account = True
        log.warning(
            "KeyPool: several keys for one endpoint. Keys of one account share that "
            "account's rate limit; a pool adds throughput only across accounts."
        )


class KeyPool:
    """A backend over several ``LLMConfig``s (or backends); see the module docstring."""

    def __init__(
        self,
        members: Sequence[LLMConfig | Backend],
        *,
        strategy: Strategy = "round_robin",
        cooldown_s: float = 5.0,
        auth_cooldown_s: float = 600.0,
        shared_budget: bool = False,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not members:
            raise ConfigError("KeyPool needs at least one LLMConfig or backend")
        if strategy not in _STRATEGIES:
            raise ConfigError(f"KeyPool strategy must be one of {_STRATEGIES}, got {strategy!r}")
        if cooldown_s < 0 or auth_cooldown_s < 0:
            raise ConfigError("KeyPool cooldown_s and auth_cooldown_s must be >= 0")
        budget = RateBudget() if shared_budget else None
        backends = [
            OpenAIBackend(m, budget=budget) if isinstance(m, LLMConfig) else m for m in members
        ]
        self._members = [_Member(b, lab) for b, lab in zip(backends, _labels(members), strict=True)]
        self.strategy = strategy
        self.cooldown_s = cooldown_s
        self.auth_cooldown_s = auth_cooldown_s
        self.model = backends[0].model
        self._clock = clock
        _warn_shared_account(members)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        dotenv_path: str | None = ".env",
        **options: Any,
    ) -> KeyPool:
        """One member per key of ``OPENAI_API_KEYS`` (comma-separated; else
        ``OPENAI_API_KEY``), all on ``OPENAI_API_BASE_URL`` with ``OPENAI_MODEL_NAME``."""
        env = load_env(dotenv_path) if env is None else env
        keys = load_api_keys(env)
        if not keys:
            raise ConfigError("KeyPool.from_env: set OPENAI_API_KEYS (comma-separated keys)")
        base = LLMConfig.from_env(env)
        return cls([base.with_(api_key=key) for key in keys], **options)

    def __repr__(self) -> str:
        labels = ", ".join(m.label for m in self._members)
        return f"KeyPool([{labels}], strategy={self.strategy!r})"

    @property
    def limit_endpoint(self) -> str | None:
        """One ``auto`` memory for the pool's members together; None when a member's
        limits are not remembered (:mod:`arboris_nb.limit_memory`)."""
        keys = [endpoint_key(m.backend) for m in self._members]
        return None if None in keys else "pool[" + ",".join(sorted(map(str, keys))) + "]"

    @property
    def labels(self) -> list[str]:
        """The members' printable ids (masked keys), in order."""
        return [m.label for m in self._members]

    def status(self) -> list[dict[str, Any]]:
        """Per member: label, requests served, in flight, seconds of cooldown left."""
        now = self._now()
        return [
            {
                "key_id": m.label,
                "served": m.served,
                "in_flight": m.in_flight,
                "cooling_s": max(0.0, m.cool_until - now),
                "auth_failed": m.auth_failed,
            }
            for m in self._members
        ]

    @asynccontextmanager
    async def open(self) -> AsyncIterator[_PoolConnection]:
        async with AsyncExitStack() as stack:
            conns = [await stack.enter_async_context(m.backend.open()) for m in self._members]
            yield _PoolConnection(self, conns)

    # -- choosing and benching members ---------------------------------------------------
    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    def choose(self, request: ChatRequest) -> int:
        """The index of the member that takes ``request``."""
        return self.ranked(request)[0]

    def ranked(self, request: ChatRequest) -> list[int]:
        """Members in the order the strategy prefers them for ``request``: those not
        cooling down; if every one is, the usable ones by the end of their cooldown."""
        now = self._now()
        ready = [i for i, m in enumerate(self._members) if m.cool_until <= now]
        if not ready:
            usable = [i for i, m in enumerate(self._members) if not m.auth_failed]
            if not usable:
                raise AuthError(
                    f"every key of the pool ({', '.join(self.labels)}) was refused "
                    "(401/403); check OPENAI_API_KEYS",
                    status=401,
                )
            return sorted(usable, key=lambda i: self._members[i].cool_until)
        if self.strategy == "least_busy":
            return sorted(
                ready, key=lambda i: (self._members[i].in_flight, self._members[i].served)
            )
        n = len(self._members)
        first = (request.version_index - 1 + request.attempt - 1) % n
        return sorted(ready, key=lambda i: (i - first) % n)

    def budget_of(self, index: int) -> RateBudget | None:
        """The rate-limit budget member ``index`` paces on (None for a non-pacing backend)."""
        budget = getattr(self._members[index].backend, "budget", None)
        return budget if isinstance(budget, RateBudget) else None

    def _bench(self, member: _Member, error: BackendError) -> None:
        if isinstance(error, AuthError):
            member.auth_failed = True
            member.cool_until = self._now() + self.auth_cooldown_s
        elif isinstance(error, RateLimited):
            wait = error.retry_after_s if error.retry_after_s is not None else self.cooldown_s
            member.cool_until = max(member.cool_until, self._now() + wait)


class _PoolConnection:
    def __init__(self, pool: KeyPool, conns: list[Connection]) -> None:
        self.pool = pool
        self.conns = conns
        self.pinned: dict[Hashable, int] = {}  # request → the member ready() chose

    async def ready(self, request: ChatRequest) -> None:
        """Pick the first member whose budget takes ``request`` now (else wait for the one
        that takes it soonest) and reserve it there; ``stream`` then uses that member."""
        while True:
            waits = []
            for rank, index in enumerate(self.pool.ranked(request)):
                budget = self.pool.budget_of(index)
                wait = budget.wait_s(budget.cost(request)) if budget else 0.0
                waits.append((wait, rank, index, budget))
            wait, _, index, budget = min(waits, key=lambda w: (w[0], w[1]))
            if wait <= 0:
                if budget is not None:
                    budget.reserve(request_key(request), budget.cost(request))
                self.pinned[request_key(request)] = index
                return
            await asyncio.sleep(min(wait, _MAX_SLEEP_S))

    def accepts_n(self) -> bool:
        """False when a member knows its server refuses ``n > 1`` (any member may serve)."""
        return all(getattr(c, "accepts_n", lambda: True)() for c in self.conns)

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamItem]:
        """Stream from the chosen member; a refused key (401/403) fails over at once."""
        pinned = self.pinned.pop(request_key(request), None)
        while True:
            # choose() raises AuthError when every key was refused
            index = pinned if pinned is not None else self.pool.choose(request)
            pinned = None
            try:
                async with closing_stream(self._from_member(index, request)) as items:
                    async for item in items:
                        yield item
                return
            except AuthError:
                continue  # benched by _from_member; nothing was streamed yet

    async def _from_member(self, index: int, request: ChatRequest) -> AsyncIterator[StreamItem]:
        member = self.pool._members[index]
        member.in_flight += 1
        try:
            yield Served(member.label)
            async with closing_stream(self.conns[index].stream(request)) as items:
                async for item in items:
                    if not isinstance(item, Served):  # the pool's label replaces the member's
                        yield item
            member.served += 1
            member.auth_failed = False
        except BackendError as exc:
            self.pool._bench(member, exc)
            raise
        finally:
            member.in_flight -= 1
