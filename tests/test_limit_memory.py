"""The per-endpoint memory of ``auto``: what a run learned starts the next one there.

The memory on a fake clock (expiry, merging, keys apart, no secret in a key), the limiter
resuming from it, then the engine: a second ``auto`` run on a capped API starts at the
cap instead of slow-starting into it.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest

from arboris_nb import (
    AdaptiveLimit,
    KeyPool,
    LLMConfig,
    OpenAIBackend,
    RetryPolicy,
    SimulatedLLM,
    WriterSettings,
    generate_versions,
)
from arboris_nb.limit_memory import (
    TTL_S,
    Learned,
    LimitMemory,
    endpoint_key,
    forget_learned_limits,
    learned_limits,
)
from arboris_nb.limits import AUTO_INITIAL, make_limiter
from tests.fixtures.capped import CappedLLM
from tests.test_adaptive import FakeClock, Requests, fill, ok

SECRET = "sk-live-DO-NOT-LEAK-0123456789abcdef"


def test_an_entry_is_used_until_it_expires() -> None:
    clock = FakeClock()
    memory = LimitMemory(ttl_s=600, clock=clock)
    memory.put("e", Learned(limit=6, ceiling=7, probe_idle_s=1.0, congested=True))
    clock.t += 599
    got = memory.get("e")
    assert got is not None and (got.limit, got.ceiling) == (6, 7)
    clock.t += 2
    assert memory.get("e") is None  # 601 s since it was learned: provider limits move
    assert memory.snapshot() == {}


def test_a_clean_run_raises_the_limit_but_does_not_keep_the_ceiling_alive() -> None:
    clock = FakeClock()
    memory = LimitMemory(ttl_s=600, clock=clock)
    memory.put("e", Learned(limit=5, ceiling=7, congested=True))
    clock.t += 400
    memory.put("e", Learned(limit=6, ceiling=7))  # a run with no 429 held 6
    memory.put("e", Learned(limit=3, ceiling=7))  # a small run: does not lower it
    got = memory.get("e")
    assert got is not None and (got.limit, got.ceiling) == (6, 7)
    clock.t += 300  # 700 s after the 429 that taught the ceiling, 300 s after the run
    got = memory.get("e")
    assert got is not None and (got.limit, got.ceiling, got.probe_scale) == (6, None, 1)


def test_a_congested_run_replaces_what_was_known() -> None:
    memory = LimitMemory(clock=FakeClock())
    memory.put("e", Learned(limit=8))
    memory.put("e", Learned(limit=3, ceiling=4, probe_scale=2, congested=True))
    got = memory.get("e")
    assert got is not None and (got.limit, got.ceiling, got.probe_scale) == (3, 4, 2)


def test_endpoints_are_kept_apart_and_forgotten() -> None:
    memory = LimitMemory(clock=FakeClock())
    memory.put("a", Learned(limit=3))
    memory.put("b", Learned(limit=9))
    assert memory.get("a") == Learned(limit=3, at=100.0, ceiling_at=100.0)
    memory.forget("a")
    assert memory.get("a") is None and memory.get("b") is not None
    memory.forget()
    assert memory.snapshot() == {}
    assert TTL_S == 600


def test_endpoint_keys_apart_and_without_the_key() -> None:
    def key(**changes: str) -> str | None:
        base = LLMConfig(api_key=SECRET, base_url="http://127.0.0.1:9/v1", model="m")
        return endpoint_key(OpenAIBackend(base.with_(**changes)))

    one = key()
    assert one is not None and SECRET not in one and SECRET[3:-4] not in one
    assert "…cdef" in one  # the masked key, as everywhere else
    # The same last four characters, another key: apart (the digest tells them apart).
    assert key(api_key="sk-other-key-0000000000000000abcdef") != one
    assert key(model="n") != one
    assert key(base_url="http://127.0.0.1:10/v1") != one
    assert key() == one
    assert endpoint_key(SimulatedLLM()) == "simulated|simulated"
    assert endpoint_key(CappedLLM(cap=3)) is None  # unknown backends are not remembered
    pool = KeyPool([LLMConfig(api_key=SECRET), LLMConfig(api_key="sk-second-key-99998888")])
    pooled = endpoint_key(pool)
    assert pooled is not None and pooled.startswith("pool[") and SECRET not in pooled


async def test_the_limiter_reports_what_it_learned_as_it_goes() -> None:
    """Slow start sent 8 at a cap of 6: the cap is learned, and the clean round at 6."""
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=8, clock=clock)
    reported: list[Learned] = []
    limiter.on_learn = reported.append
    requests = Requests(limiter, 8)
    await asyncio.sleep(0)
    clock.t += 0.01
    for i in (6, 7):
        await requests.answer(i, success=False)
    for i in range(6):
        await requests.answer(i, success=True)
    await asyncio.gather(*requests.tasks)
    assert limiter.learned() == Learned(limit=6, ceiling=7, congested=True)
    assert reported[-1] == limiter.learned()


async def test_a_resumed_limiter_starts_below_the_ceiling_and_probes_it_rarely() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimit(probe_every=10, clock=clock)
    limiter.resume(Learned(limit=8, ceiling=7, probe_scale=2))
    assert (limiter.limit, limiter.ceiling, limiter.warm) == (6, 7, True)
    async with AsyncExitStack() as stack:
        await fill(limiter, stack)
        for _ in range(19):
            ok(limiter)
        assert limiter.limit == 6  # no slow start into the known cap: 20 successes first
        ok(limiter)
        assert limiter.limit == 7


async def test_a_resumed_limiter_without_a_ceiling_slow_starts_from_the_safe_limit() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimit(clock=clock)
    limiter.resume(Learned(limit=6))
    assert limiter.limit == 6
    async with AsyncExitStack() as stack:
        for _ in range(2):
            await fill(limiter, stack)
            ok(limiter)
    assert limiter.limit == 8  # +1 per saturated success: the run may raise what is known


def test_make_limiter_auto_uses_the_memory_unless_it_is_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    learned_limits.put("e", Learned(limit=6, ceiling=7, congested=True))
    warm = make_limiter("auto", endpoint="e")
    assert isinstance(warm, AdaptiveLimit) and (warm.limit, warm.ceiling, warm.warm) == (6, 7, True)
    cold = make_limiter("auto", endpoint="other")
    assert isinstance(cold, AdaptiveLimit) and (cold.limit, cold.warm) == (AUTO_INITIAL, False)
    monkeypatch.setenv("ARBORIS_LIMIT_MEMORY", "off")
    off = make_limiter("auto", endpoint="e")
    assert isinstance(off, AdaptiveLimit) and (off.limit, off.ceiling) == (AUTO_INITIAL, None)
    assert off.on_learn is None  # and it does not write either
    monkeypatch.delenv("ARBORIS_LIMIT_MEMORY")
    forget_learned_limits("e")
    again = make_limiter("auto", endpoint="e")
    assert isinstance(again, AdaptiveLimit) and again.limit == AUTO_INITIAL


@pytest.mark.looptime
async def test_a_second_auto_run_starts_at_the_cap_it_learned() -> None:
    """A cap of 5 behind a remembered endpoint: the first run finds it with 429s, the
    second starts at 5 with the ceiling known and meets none."""
    capped = CappedLLM(cap=5, inner=SimulatedLLM(ttft_s=0.1, tokens_per_s=10, output_tokens=10))
    key = "capped-endpoint"

    async def one_run() -> tuple[AdaptiveLimit, int]:
        limiter = make_limiter("auto", endpoint=key)
        assert isinstance(limiter, AdaptiveLimit)
        refused = capped.refused
        run = await generate_versions(
            "p",
            settings=WriterSettings(version_count=10, max_parallel_requests="auto"),
            llm=capped,
            limiter=limiter,
            indices=range(1, 31),
            retry=RetryPolicy(attempts=5, base_delay_s=0.1, jitter=0.0),
        )
        assert len(run.ok) == 30
        return limiter, capped.refused - refused

    cold, cold_429s = await one_run()
    assert not cold.warm and cold_429s > 0 and cold.ceiling == 6
    warm, warm_429s = await one_run()
    assert warm.warm and warm.history[0] == (0.0, 5) and warm_429s == 0
    assert warm.ceiling == 6


@pytest.mark.looptime
async def test_the_engine_keys_auto_by_endpoint() -> None:
    """``max_parallel_requests="auto"`` with no limiter: the engine remembers per backend."""
    llm = SimulatedLLM(ttft_s=0.1, tokens_per_s=100, output_tokens=10)
    settings = WriterSettings(version_count=8, max_parallel_requests="auto")
    await generate_versions("p", settings=settings, llm=llm, indices=range(1, 21))
    known = learned_limits.get("simulated|simulated")
    assert known is not None and known.limit > AUTO_INITIAL and known.ceiling is None
