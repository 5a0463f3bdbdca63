"""A concurrency limit shared by every process that can reach one Redis: :class:`RedisLimit`.

It is a semaphore of *leases*: a sorted set whose members are lease ids scored by their
expiry time. Taking a slot is one Lua script that first drops expired leases and then
adds a lease only if fewer than ``limit`` are left, so two workers can never both take
the last slot. The holder refreshes its lease while its request runs; a worker that dies
(SIGKILL, lost machine) stops refreshing and its slot comes back after ``lease_s``.

Expiry is measured on the Redis server's own clock (``TIME`` inside the scripts), so
workers on machines whose clocks disagree still agree on when a lease is dead.

A lease may name its holder (``holder=``: ``"<holder>/<random>"``), so anyone can ask who
holds a slot *right now* (:func:`live_holders`) — the only view of "running" that can never
exceed the limit, since it is the limit's own record (a dead holder drops out with its lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["DEFAULT_LEASE_S", "RedisLimit", "limit_key", "live_holders"]

log = logging.getLogger("arboris_nb")

DEFAULT_LEASE_S = 30.0
_PREFIX = "arboris_nb:limit:"
_MAX_POLL_S = 0.25

# KEYS[1] = the lease set; ARGV = limit, lease id, lease seconds. Returns 1 when taken.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
  return 1
end
return 0
"""

# A lease is extended only while it is still in the set: once another client has dropped
# it as expired, reviving it could put one more holder above the limit.
_REFRESH = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
  return 1
end
return 0
"""

# Live leases only (the expired ones may not have been swept yet).
_COUNT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""

# The live leases themselves (same clock, same rule as _COUNT).
_LIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
"""


def limit_key(name: str) -> str:
    """The Redis key of the limit called ``name``."""
    return _PREFIX + name


def live_holders(client: Any, name: str) -> list[str]:
    """Who holds a slot of the limit ``name`` now: the ``holder`` of each live lease
    (leases taken without one are left out). ``client`` is a synchronous ``redis.Redis``."""
    leases = client.register_script(_LIVE)(keys=[limit_key(name)])
    holders = []
    for lease in leases:
        text = lease.decode() if isinstance(lease, bytes) else str(lease)
        holder, sep, _ = text.rpartition("/")  # the random part never holds a "/"
        if sep:
            holders.append(holder)
    return holders


class RedisLimit:
    """At most ``limit`` slots at once across every process using the same Redis and
    ``name`` — a :class:`~arboris_nb.limits.Limiter` for the engine.

    ``redis`` is a URL (a client is made on first use, inside the loop that uses it) or a
    ``redis.asyncio.Redis``. ``lease_s`` is how long a dead holder keeps its slot; the
    live holder refreshes every ``lease_s / 3``. Waiters poll (with jitter, up to
    0.25 s apart), so the order in which waiters get slots is not FIFO. ``holder`` names
    the leases this limiter takes (see :func:`live_holders`).
    """

    def __init__(
        self,
        redis: str | Redis,
        limit: int,
        *,
        name: str = "default",
        lease_s: float = DEFAULT_LEASE_S,
        poll_s: float = 0.02,
        holder: str | None = None,
    ) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(
                f"limit (global concurrency) must be a whole number >= 1, got {limit!r}"
            )
        if not lease_s > 0 or not poll_s > 0:
            raise ConfigError(f"lease_s and poll_s must be above 0, got {lease_s}, {poll_s}")
        self._url = redis if isinstance(redis, str) else None
        self._client: Any = None if isinstance(redis, str) else redis
        self._limit = limit
        self.name = name
        self.key = limit_key(name)
        self.holder = holder
        self.lease_s = float(lease_s)
        self.poll_s = float(poll_s)
        self._scripts: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"RedisLimit(limit={self._limit}, name={self.name!r}, lease_s={self.lease_s:g})"

    @property
    def limit(self) -> int:
        return self._limit

    # -- Redis plumbing ------------------------------------------------------------------
    def _redis(self) -> Any:
        if self._client is None:
            import redis.asyncio

            assert self._url is not None
            self._client = redis.asyncio.Redis.from_url(self._url)
        return self._client

    async def _call(self, script: str, *args: object) -> int:
        if script not in self._scripts:
            self._scripts[script] = self._redis().register_script(script)
        return int(await self._scripts[script](keys=[self.key], args=list(args)))

    async def aclose(self) -> None:
        """Close the client this limiter made from a URL (a given client is left open)."""
        if self._url is not None and self._client is not None:
            await self._client.aclose()
            self._client = None
            self._scripts.clear()

    # -- leases --------------------------------------------------------------------------
    async def try_acquire(self) -> str | None:
        """Take a slot now if one is free: the lease id, or None."""
        lease = uuid.uuid4().hex if self.holder is None else f"{self.holder}/{uuid.uuid4().hex}"
        taken = await self._call(_ACQUIRE, self._limit, lease, self.lease_s)
        return lease if taken else None

    async def acquire(self) -> str:
        """Wait for a slot; returns the lease id (release it with :meth:`release`)."""
        delay = self.poll_s
        while True:
            lease = await self.try_acquire()
            if lease is not None:
                return lease
            # Jitter so waiters on many machines do not poll in lock-step.
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(_MAX_POLL_S, delay * 1.5)

    async def refresh(self, lease: str) -> bool:
        """Push the lease's expiry ``lease_s`` ahead; False if it had already been lost."""
        return bool(await self._call(_REFRESH, lease, self.lease_s))

    async def release(self, lease: str) -> None:
        """Give the slot back (a lease already expired and dropped is a no-op)."""
        await self._redis().zrem(self.key, lease)

    async def in_use(self) -> int:
        """Live leases right now, held by anyone."""
        return await self._call(_COUNT)

    async def _keep_alive(self, lease: str) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            if not await self.refresh(lease):
                # The holder stalled past its lease; the slot may now be someone else's.
                log.warning("concurrency lease %s on %s expired while held", lease, self.key)
                return

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the body, refreshing the lease until it ends."""
        lease = await self.acquire()
        keeper = asyncio.ensure_future(self._keep_alive(lease))
        try:
            yield
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            # Give the slot back even when the body was cancelled; if Redis is gone the
            # lease simply expires.
            try:
                await asyncio.shield(self.release(lease))
            except Exception:
                log.warning("could not release lease %s on %s", lease, self.key, exc_info=True)

    def observe(self, *, ok: bool, rate_limited: bool, ttft_s: float | None) -> None:
        """A fixed shared limit learns nothing."""
