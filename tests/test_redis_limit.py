"""RedisLimit against a real redis-server: the limit holds across clients, a dead
holder's lease is reclaimed, a live holder's lease is kept alive, release frees a slot,
and who holds a slot right now can be read back."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from arboris_nb.errors import ConfigError
from arboris_nb.limits import Limiter
from arboris_nb.queue.redis_limit import RedisLimit, live_holders


async def test_never_more_than_limit_across_clients(redis_url: str) -> None:
    # Three limiters with their own connections stand for three workers.
    limiters = [RedisLimit(redis_url, 2, name="t1") for _ in range(3)]
    holding = 0
    peak = 0

    async def hold(limiter: RedisLimit) -> None:
        nonlocal holding, peak
        async with limiter.slot():
            holding += 1
            peak = max(peak, holding)
            assert await limiter.in_use() <= 2
            await asyncio.sleep(0.03)
            holding -= 1

    try:
        await asyncio.gather(*(hold(limiters[i % 3]) for i in range(12)))
        assert peak == 2  # reached the limit, never above it
        assert await limiters[0].in_use() == 0
    finally:
        for limiter in limiters:
            await limiter.aclose()


async def test_expired_lease_is_reclaimed(redis_url: str) -> None:
    dead = RedisLimit(redis_url, 1, name="t2", lease_s=0.3)
    alive = RedisLimit(redis_url, 1, name="t2", lease_s=0.3)
    try:
        assert await dead.acquire()  # taken and never refreshed nor released: a dead worker
        assert await alive.try_acquire() is None
        start = time.monotonic()
        lease = await asyncio.wait_for(alive.acquire(), timeout=5)
        assert lease
        assert time.monotonic() - start >= 0.2  # only once the dead lease expired
    finally:
        await dead.aclose()
        await alive.aclose()


async def test_holder_refreshes_its_lease(redis_url: str) -> None:
    holder = RedisLimit(redis_url, 1, name="t3", lease_s=0.3)
    other = RedisLimit(redis_url, 1, name="t3", lease_s=0.3)
    try:
        async with holder.slot():
            for _ in range(8):  # 0.8 s: well past one lease
                await asyncio.sleep(0.1)
                assert await other.try_acquire() is None
        assert await other.try_acquire() is not None
    finally:
        await holder.aclose()
        await other.aclose()


async def test_release_frees_the_slot_at_once(redis_url: str) -> None:
    a = RedisLimit(redis_url, 1, name="t4", lease_s=60)
    b = RedisLimit(redis_url, 1, name="t4", lease_s=60)
    try:
        lease = await a.acquire()
        assert await b.try_acquire() is None
        await a.release(lease)
        assert await b.try_acquire() is not None
    finally:
        await a.aclose()
        await b.aclose()


async def test_cancelled_holder_releases(redis_url: str) -> None:
    limiter = RedisLimit(redis_url, 1, name="t5", lease_s=60)
    entered = asyncio.Event()

    async def hold() -> None:
        async with limiter.slot():
            entered.set()
            await asyncio.sleep(60)

    try:
        task = asyncio.ensure_future(hold())
        await entered.wait()
        assert await limiter.in_use() == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await limiter.in_use() == 0
    finally:
        await limiter.aclose()


async def test_live_holders_names_who_holds_a_slot_now(redis_url: str) -> None:
    named = RedisLimit(redis_url, 3, name="t6", lease_s=0.3, holder="book:j/1:1:2")
    dead = RedisLimit(redis_url, 3, name="t6", lease_s=0.3, holder="book:j:3:1")
    anonymous = RedisLimit(redis_url, 3, name="t6", lease_s=0.3)
    reader = redis.Redis.from_url(redis_url)
    try:
        assert await dead.acquire()  # never refreshed: gone once its lease expires
        assert await anonymous.acquire()  # holds a slot, names no one
        async with named.slot():
            assert sorted(live_holders(reader, "t6")) == ["book:j/1:1:2", "book:j:3:1"]
            await asyncio.sleep(0.5)  # past the dead lease; the live one is refreshed
            assert live_holders(reader, "t6") == ["book:j/1:1:2"]
        assert live_holders(reader, "t6") == []
        assert live_holders(reader, "no-such-limit") == []
    finally:
        reader.close()
        for limiter in (named, dead, anonymous):
            await limiter.aclose()


def test_is_a_limiter_and_checks_its_settings() -> None:
    assert isinstance(RedisLimit("redis://127.0.0.1:1/0", 3), Limiter)
    with pytest.raises(ConfigError, match="limit"):
        RedisLimit("redis://127.0.0.1:1/0", 0)
    with pytest.raises(ConfigError, match="lease_s"):
        RedisLimit("redis://127.0.0.1:1/0", 1, lease_s=0)
