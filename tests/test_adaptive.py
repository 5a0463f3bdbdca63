"""AdaptiveLimit: the control law on a fake clock with synthetic observations, then the engine."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest

from arboris_nb import (
    AdaptiveLimit,
    ConfigError,
    LimitChanged,
    SimulatedLLM,
    WriterSettings,
    generate_versions,
    plot_limit_history,
)
from arboris_nb.events import Event
from arboris_nb.limits import FixedLimit, Limiter, make_limiter


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def ok(limiter: AdaptiveLimit, ttft_s: float | None = None) -> None:
    limiter.observe(ok=True, rate_limited=False, ttft_s=ttft_s)


def throttled(limiter: AdaptiveLimit) -> None:
    limiter.observe(ok=False, rate_limited=True, ttft_s=None)


async def fill(limiter: AdaptiveLimit, stack: AsyncExitStack) -> None:
    """Hold slots until the limiter is saturated (as a busy engine would)."""
    while limiter.in_flight < limiter.limit:
        await stack.enter_async_context(limiter.slot())


def test_protocol_and_make_limiter() -> None:
    assert isinstance(AdaptiveLimit(), Limiter)
    auto = make_limiter("auto")
    assert isinstance(auto, AdaptiveLimit)
    assert (auto.min, auto.max, auto.limit) == (1, 10, 2)
    assert isinstance(make_limiter(4), FixedLimit)
    shared = AdaptiveLimit()
    assert make_limiter(shared) is shared


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"min": 0}, "min <= max"),
        ({"min": 5, "max": 3}, "min <= max"),
        ({"initial": 11}, "initial must be from 1 to 10"),
        ({"backoff": 1.0}, "backoff"),
        ({"latency_tolerance": 1.0}, "latency_tolerance"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, float], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        AdaptiveLimit(**kwargs)  # type: ignore[arg-type]


async def test_grows_only_when_saturated() -> None:
    limiter = AdaptiveLimit(initial=3, clock=FakeClock())
    async with limiter.slot():
        for _ in range(20):
            ok(limiter)
    assert limiter.limit == 3


async def test_slow_start_adds_one_per_saturated_success() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=2, max=5, clock=clock)
    async with AsyncExitStack() as stack:
        for expected in (3, 4, 5, 5):
            await fill(limiter, stack)
            clock.t += 1
            ok(limiter)
            assert limiter.limit == expected
    assert limiter.history == [(0.0, 2), (1.0, 3), (2.0, 4), (3.0, 5)]


async def test_rate_limit_cuts_multiplicatively_with_a_cooldown() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=8, cooldown_s=0.5, clock=clock)
    throttled(limiter)
    assert limiter.limit == 7  # floor(8 × 0.9)
    throttled(limiter)  # the same overload event: ignored
    assert limiter.limit == 7
    clock.t += 0.5
    throttled(limiter)
    assert limiter.limit == 6  # floor(6.3)
    for _ in range(10):
        clock.t += 1
        throttled(limiter)
    assert limiter.limit == 1  # never below min
    assert limiter.rate_limited == 13
    assert limiter.decreases == 12  # the one inside the cooldown did not count


async def test_additive_increase_needs_limit_times_patience_successes() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=8, clock=clock)
    throttled(limiter)  # → 7, slow start over, patience 4
    async with AsyncExitStack() as stack:
        await fill(limiter, stack)
        for _ in range(7 * 4 - 1):
            ok(limiter)
        assert limiter.limit == 7
        ok(limiter)
        assert limiter.limit == 8
    # Back at the level of the last 429, not above it: still probing slowly.
    assert (limiter._patience, limiter._ceiling) == (4, 8)


async def test_probe_backoff_doubles_and_resets_above_the_ceiling() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=6, max_patience=4, clock=clock)
    for _ in range(4):  # 6→5→4→3→2, patience 4 (the floor), then capped at 4
        clock.t += 1
        throttled(limiter)
    assert (limiter.limit, limiter._patience, limiter._ceiling) == (2, 4, 3)
    async with AsyncExitStack() as stack:
        await fill(limiter, stack)
        for _ in range(2 * 4):
            ok(limiter)
        assert limiter.limit == 3  # at the ceiling: still patient
        await fill(limiter, stack)
        for _ in range(3 * 4):
            ok(limiter)
        assert limiter.limit == 4  # above the ceiling: the cap moved, probe at full speed
        assert (limiter._patience, limiter._ceiling) == (1, None)
        await fill(limiter, stack)
        for _ in range(4):
            ok(limiter)
        assert limiter.limit == 5


async def test_latency_inflation_cuts_like_a_429() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=5, clock=clock)
    for _ in range(10):
        ok(limiter, ttft_s=0.1)
    assert limiter.limit == 5
    # short EWMA: 0.1 + 0.3 × 0.9 = 0.37 > 1.5 × long (0.1 + 0.05 × 0.9 = 0.145)
    ok(limiter, ttft_s=1.0)
    assert limiter.limit == 4


async def test_a_mild_latency_rise_is_tolerated() -> None:
    limiter = AdaptiveLimit(initial=5, clock=FakeClock())
    for ttft in (0.1, 0.1, 0.12, 0.13, 0.12, 0.14):
        ok(limiter, ttft_s=ttft)
    assert limiter.limit == 5


async def test_other_errors_do_not_move_the_limit() -> None:
    limiter = AdaptiveLimit(initial=4, clock=FakeClock())
    for _ in range(5):
        limiter.observe(ok=False, rate_limited=False, ttft_s=None)
    assert limiter.limit == 4
    assert limiter.history == []  # the clock was never read: no use yet


async def test_waiters_are_admitted_in_order_when_the_limit_rises() -> None:
    limiter = AdaptiveLimit(initial=1, max=3, clock=FakeClock())
    order: list[int] = []
    release = asyncio.Event()

    async def user(i: int) -> None:
        async with limiter.slot():
            order.append(i)
            await release.wait()

    tasks = [asyncio.create_task(user(i)) for i in range(3)]
    await asyncio.sleep(0)
    assert order == [0]
    ok(limiter)  # saturated (waiters): slow start → 2, admits the next waiter
    await asyncio.sleep(0)
    assert order == [0, 1]
    ok(limiter)
    await asyncio.sleep(0)
    assert order == [0, 1, 2]
    assert limiter.in_flight == 3
    release.set()
    await asyncio.gather(*tasks)
    assert limiter.in_flight == 0


async def test_a_cancelled_waiter_leaks_no_slot() -> None:
    limiter = AdaptiveLimit(initial=1, clock=FakeClock())
    async with limiter.slot():
        waiter = asyncio.create_task(limiter.slot().__aenter__())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert limiter.in_flight == 0
    async with limiter.slot():
        assert limiter.in_flight == 1


async def test_frame_and_plot() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=4, clock=clock)
    throttled(limiter)
    clock.t += 2.5
    throttled(limiter)
    frame = limiter.frame()
    assert list(frame.columns) == ["t_s", "limit"]
    assert frame.values.tolist() == [[0.0, 4], [0.0, 3], [2.5, 2]]
    fig = plot_limit_history(frame)
    (line,) = fig.axes[0].get_lines()
    assert list(line.get_ydata()) == [4, 3, 2]


@pytest.mark.looptime
async def test_engine_auto_limit_rises_and_emits_limit_changed() -> None:
    events: list[Event] = []
    limiter = AdaptiveLimit(initial=1, max=6)
    llm = SimulatedLLM(ttft_s=0.1, tokens_per_s=100, output_tokens=10)
    settings = WriterSettings(version_count=10, max_parallel_requests="auto")
    run = await generate_versions(
        "p", settings=settings, llm=llm, limiter=limiter, on_event=events.append
    )
    assert len(run.ok) == 10
    assert run.max_parallel_requests == "auto"
    changes = [e.limit for e in events if isinstance(e, LimitChanged)]
    assert changes == [limit for _, limit in limiter.history[1:]]
    assert changes[:3] == [2, 3, 4]
    # A limiter shared by a second run keeps what it learned.
    before = limiter.limit
    await generate_versions("q", settings=settings, llm=llm, limiter=limiter)
    assert limiter.limit >= before


@pytest.mark.looptime
async def test_engine_auto_setting_builds_an_adaptive_limiter() -> None:
    settings = WriterSettings(version_count=6, max_parallel_requests="auto")
    llm = SimulatedLLM(ttft_s=0.1, tokens_per_s=100, output_tokens=10)
    events: list[Event] = []
    run = await generate_versions("p", settings=settings, llm=llm, on_event=events.append)
    assert len(run.ok) == 6
    assert [e.limit for e in events if isinstance(e, LimitChanged)][:2] == [3, 4]


async def test_a_429_inside_its_slot_frees_no_slot_for_the_next_request() -> None:
    """Against a cascade: each 429 drops the limit to the other requests in flight."""
    limiter = AdaptiveLimit(initial=8, cooldown_s=10, clock=FakeClock())
    slots = [limiter.slot() for _ in range(8)]
    for slot in slots:
        await slot.__aenter__()
    waiter = asyncio.create_task(limiter.slot().__aenter__())
    await asyncio.sleep(0)
    throttled(limiter)  # inside slot 0: 7 others in flight; also the multiplicative cut
    await slots[0].__aexit__(None, None, None)
    assert (limiter.limit, limiter.in_flight) == (7, 7)
    throttled(limiter)  # inside the cooldown: no cut, but 6 others in flight
    await slots[1].__aexit__(None, None, None)
    await asyncio.sleep(0)
    assert (limiter.limit, limiter.in_flight) == (6, 6)
    assert not waiter.done()  # the freed slots went to nobody
    ok(limiter)  # saturated success; additive increase needs 6 × 4 of them
    for slot in slots[2:]:
        await slot.__aexit__(None, None, None)
    await waiter
    assert limiter.in_flight == 1
