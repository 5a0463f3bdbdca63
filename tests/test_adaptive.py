"""AdaptiveLimit: the control law on a fake clock with synthetic observations, then the engine.

Observations are made inside slots, as the engine makes them: that is how the limiter
knows when an attempt was admitted, and so which congestion event a 429 belongs to.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest

from arboris_nb import (
    AdaptiveLimit,
    ConfigError,
    LimitChanged,
    RetryPolicy,
    SimulatedLLM,
    WriterSettings,
    generate_versions,
    plot_limit_history,
)
from arboris_nb.events import Event
from arboris_nb.limits import AUTO_INITIAL, FixedLimit, Limiter, make_limiter
from tests.fixtures.capped import CappedLLM


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


async def refused_in_new_slot(limiter: AdaptiveLimit, clock: FakeClock) -> None:
    """A request admitted now (after any earlier decrease) comes back 429."""
    clock.t += 1
    async with AsyncExitStack() as stack:
        await fill(limiter, stack)
        clock.t += 1
        throttled(limiter)


class Requests:
    """Requests in flight, each in its own task (as the engine runs versions), answered
    one by one: each observes its outcome inside its slot, then leaves it."""

    def __init__(self, limiter: AdaptiveLimit, n: int) -> None:
        self.answers = [asyncio.Event() for _ in range(n)]
        self.outcomes: list[bool] = [False] * n
        self.tasks = [asyncio.create_task(self._one(limiter, i)) for i in range(n)]

    async def _one(self, limiter: AdaptiveLimit, i: int) -> None:
        async with limiter.slot():
            await self.answers[i].wait()
            if self.outcomes[i]:
                ok(limiter)
            else:
                throttled(limiter)

    async def answer(self, i: int, *, success: bool) -> None:
        self.outcomes[i] = success
        self.answers[i].set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)


def test_protocol_and_make_limiter() -> None:
    assert isinstance(AdaptiveLimit(), Limiter)
    auto = make_limiter("auto")
    assert isinstance(auto, AdaptiveLimit)
    assert (auto.min, auto.max, auto.limit) == (1, 10, AUTO_INITIAL)
    assert make_limiter("auto") is not auto  # a fresh one per run
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
        ({"latency_tolerance": 1.0}, "latency_tolerance must be above 1"),
        ({"probe_every": 0}, "probe_every must be at least 1"),
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


async def test_a_window_of_429s_is_one_congestion_event() -> None:
    """The issue's trace: 8 → 1 within 0.4 s, one event counted once per 429. Now the
    429s of requests sent before the cut are one event: one cut, never below half."""
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=8, clock=clock)
    requests = Requests(limiter, 8)
    await asyncio.sleep(0)
    for i in range(8):  # every request in flight is refused, 50 ms apart
        clock.t += 0.05
        await requests.answer(i, success=False)
    assert limiter.decreases == 1
    assert limiter.rate_limited == 8
    assert limiter.limit == 4  # the others in flight, but not below half of 8
    assert limiter.ceiling == 5  # as far as the limit can tell, refused from 5 in flight


async def test_a_burst_above_a_cap_finds_the_cap_at_once() -> None:
    """Slow start sent 8 at a cap of 6: two 429s, one event; the limit lands on 6."""
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=8, clock=clock)
    requests = Requests(limiter, 8)
    await asyncio.sleep(0)
    clock.t += 0.01
    for i in (6, 7):  # the two above the cap come back at once
        await requests.answer(i, success=False)
    assert (limiter.limit, limiter.ceiling, limiter.decreases) == (6, 7, 1)
    for i in range(6):
        await requests.answer(i, success=True)
    await asyncio.gather(*requests.tasks)


async def test_a_429_after_the_cut_is_a_new_event() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=8, clock=clock)
    await refused_in_new_slot(limiter, clock)
    assert limiter.limit == 6  # ⌊8 × 0.75⌋; the other 7 in flight allow that
    await refused_in_new_slot(limiter, clock)
    assert limiter.limit == 4  # ⌊6 × 0.75⌋
    assert limiter.decreases == 2
    for _ in range(10):
        await refused_in_new_slot(limiter, clock)
    assert limiter.limit == 1  # never below min


async def test_ceiling_probe_waits_and_doubles_then_forgets_a_moved_cap() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=7, backoff=0.9, probe_every=10, clock=clock)
    await refused_in_new_slot(limiter, clock)  # congestion at 7 → 6, ceiling 7
    assert (limiter.limit, limiter.ceiling, limiter.probe_after) == (6, 7, 10)
    async with AsyncExitStack() as stack:
        await fill(limiter, stack)
        for _ in range(9):
            ok(limiter)
        assert limiter.limit == 6  # the probe to 7 waits for 10 saturated successes
        ok(limiter)
        assert limiter.limit == 7
    await refused_in_new_slot(limiter, clock)  # the probe failed: the cap is confirmed
    assert (limiter.limit, limiter.ceiling, limiter.probe_after) == (6, 7, 20)
    async with AsyncExitStack() as stack:
        await fill(limiter, stack)
        for _ in range(20):
            ok(limiter)
        assert limiter.limit == 7
        await fill(limiter, stack)
        for _ in range(20):  # held at the ceiling as long again: the cap moved
            ok(limiter)
        assert (limiter.limit, limiter.ceiling, limiter.probe_after) == (8, None, 10)
        await fill(limiter, stack)
        for _ in range(8):  # no ceiling: one step per round trip
            ok(limiter)
        assert limiter.limit == 9


async def successes(limiter: AdaptiveLimit, clock: FakeClock, n: int) -> None:
    """``n`` requests succeed one after another, the limiter kept saturated throughout."""
    clock.t += 1
    async with AsyncExitStack() as stack:
        for _ in range(n):
            await fill(limiter, stack)
            clock.t += 0.5
            ok(limiter)


async def test_after_a_rate_limit_storm_the_limit_returns_quickly() -> None:
    """A budget ran dry: every request refused for a while, event after event, down to 1.
    The storm is one episode: it cuts, but leaves no ceiling at 1 and no rarer probing;
    once a round succeeds, slow start takes the limit back to the storm's first cut."""
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=8, max=8, probe_every=10, clock=clock)
    await successes(limiter, clock, 8)  # a clean round at 8
    for _ in range(8):
        await refused_in_new_slot(limiter, clock)
    assert limiter.limit == 1
    assert limiter.decreases == 8
    await successes(limiter, clock, 1)  # the budget is back: a clean round at 1 …
    await successes(limiter, clock, 4)  # … then +1 per success, no probe wait on the way
    assert limiter.limit == 6  # ⌊8 × 0.75⌋, where the first cut of the storm put it
    assert limiter.ceiling == 8  # where the storm began, not where it ended
    assert limiter.probe_after == 10  # and probing did not become rarer
    await successes(limiter, clock, 6)
    assert limiter.limit == 7  # one step per round trip below the ceiling


async def test_recovery_restores_the_ceiling_known_before_the_storm() -> None:
    """A cap known at 7; then a budget runs dry while only 3 requests are in flight. The
    storm's ceiling (3) is no cap: once the storm passes, the known one (7) applies again."""
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=7, backoff=0.9, probe_every=10, clock=clock)
    await refused_in_new_slot(limiter, clock)  # a cap: congestion at 7 → 6, ceiling 7
    await successes(limiter, clock, 6)  # 6 ran clean
    clock.t += 1
    async with AsyncExitStack() as stack:
        for _ in range(3):
            await stack.enter_async_context(limiter.slot())
        clock.t += 1
        throttled(limiter)  # refused with 2 others in flight
    assert (limiter.limit, limiter.ceiling) == (3, 3)
    for _ in range(3):  # the storm goes on
        await refused_in_new_slot(limiter, clock)
    assert limiter.limit == 1
    await successes(limiter, clock, 2)  # a clean round at 1 (its success is +1), +1 more
    assert (limiter.limit, limiter.ceiling) == (3, 7)  # back at the first cut, the cap known
    await successes(limiter, clock, 3 + 4 + 5)  # one step per round trip to 6 …
    assert limiter.limit == 6
    await successes(limiter, clock, 9)
    assert limiter.limit == 6  # … and the probe to 7 still waits for its 10 successes
    await successes(limiter, clock, 1)
    assert limiter.limit == 7


async def test_a_cap_that_moved_down_costs_one_429_on_the_way_back() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=8, max=8, probe_every=10, clock=clock)
    await successes(limiter, clock, 8)  # 8 ran clean
    await refused_in_new_slot(limiter, clock)  # the cap is now 3: 8 → 6 → 4 → 3
    await refused_in_new_slot(limiter, clock)
    await refused_in_new_slot(limiter, clock)
    assert limiter.limit == 3
    await successes(limiter, clock, 3)  # a clean round at 3 starts the slow start to 6: 4 …
    assert limiter.limit == 4
    await refused_in_new_slot(limiter, clock)  # … refused: a new episode, from 3 this time
    assert (limiter.limit, limiter.ceiling) == (3, 4)
    await successes(limiter, clock, 9)
    assert limiter.limit == 3  # no second recovery: the probe waits as for any cap


async def test_a_fresh_limit_starting_into_an_empty_budget_climbs_back() -> None:
    """Every request of the first burst refused, then more: the limit returns to its
    first cut (3) at once, and grows one step per round trip from there, not stuck."""
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=4, probe_every=50, clock=clock)
    requests = Requests(limiter, 4)
    await asyncio.sleep(0)
    for i in range(4):
        clock.t += 0.01
        await requests.answer(i, success=False)
    for _ in range(3):
        await refused_in_new_slot(limiter, clock)
    assert limiter.limit == 1
    await successes(limiter, clock, 3)
    assert (limiter.limit, limiter.ceiling) == (3, None)
    await successes(limiter, clock, 3)
    assert limiter.limit == 4


async def test_a_long_retry_after_makes_probing_rarer() -> None:
    """A probe's 429 idles every slot until its Retry-After ends: probe less often."""
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=4, probe_every=10, clock=clock)
    async with limiter.slot():
        clock.t += 0.5
        ok(limiter)  # attempts take 0.5 s
    clock.t += 1
    async with AsyncExitStack() as stack:
        await fill(limiter, stack)
        clock.t += 0.5
        limiter.note_retry_after(1.0)
        throttled(limiter)
    # 4 → 3; 10 × (1 + 3 slots × 1 s / 0.5 s)
    assert (limiter.limit, limiter.probe_after) == (3, 70)


async def test_latency_inflation_is_a_congestion_event_once() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=5, clock=clock)
    async with limiter.slot():
        for _ in range(10):
            ok(limiter, ttft_s=0.1)
    assert limiter.limit == 5
    clock.t += 1
    async with AsyncExitStack() as stack:
        await fill(limiter, stack)
        clock.t += 1
        for _ in range(3):  # short EWMA passes 1.5 × the long one on the second
            ok(limiter, ttft_s=0.4)
    assert limiter.limit == 3  # ⌊5 × 0.75⌋, once: the same requests, the same event
    assert limiter.decreases == 1
    assert limiter.ceiling is None  # latency sets no ceiling: no 429 was seen


async def test_noisy_latency_is_tolerated() -> None:
    limiter = AdaptiveLimit(initial=5, clock=FakeClock())
    noisy = [0.1, 0.05, 0.15, 0.06, 0.14, 0.1, 0.05, 0.15, 0.12, 0.04, 0.15, 0.15, 0.06]
    async with limiter.slot():
        for ttft in noisy * 3:  # ±50 % around 0.1 s
            ok(limiter, ttft_s=ttft)
    assert limiter.limit == 5
    assert limiter.decreases == 0


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


async def test_a_429_inside_its_slot_frees_no_slot_for_the_next_request() -> None:
    """Against a cascade: the slot a 429 frees goes to nobody while the event lasts."""
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=8, backoff=0.9, clock=clock)
    requests = Requests(limiter, 8)
    await asyncio.sleep(0)
    waiter = asyncio.create_task(limiter.slot().__aenter__())
    await asyncio.sleep(0)
    clock.t += 1
    await requests.answer(0, success=False)  # 7 others in flight; the multiplicative cut
    assert (limiter.limit, limiter.in_flight) == (7, 7)
    await requests.answer(1, success=False)  # the same event: no cut, but 6 others
    assert (limiter.limit, limiter.in_flight) == (6, 6)
    assert not waiter.done()  # the freed slots went to nobody
    for i in range(2, 8):
        await requests.answer(i, success=True)
    await waiter
    assert limiter.in_flight == 1


async def test_frame_and_plot() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=4, clock=clock)
    await refused_in_new_slot(limiter, clock)
    clock.t += 0.5
    await refused_in_new_slot(limiter, clock)
    frame = limiter.frame()
    assert list(frame.columns) == ["t_s", "limit"]
    assert frame.values.tolist() == [[0.0, 4], [1.0, 3], [3.5, 2]]
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
    # The run announces where the limit starts, then every move.
    assert changes == [limit for _, limit in limiter.history]
    assert changes[:4] == [1, 2, 3, 4]
    # A limiter shared by a second run keeps what it learned.
    before = limiter.limit
    await generate_versions("q", settings=settings, llm=llm, limiter=limiter)
    assert limiter.limit >= before


@pytest.mark.looptime
async def test_engine_auto_setting_builds_an_adaptive_limiter() -> None:
    settings = WriterSettings(version_count=8, max_parallel_requests="auto")
    llm = SimulatedLLM(ttft_s=0.1, tokens_per_s=100, output_tokens=10)
    events: list[Event] = []
    run = await generate_versions("p", settings=settings, llm=llm, on_event=events.append)
    assert len(run.ok) == 8
    changes = [e.limit for e in events if isinstance(e, LimitChanged)]
    assert changes[:3] == [AUTO_INITIAL, AUTO_INITIAL + 1, AUTO_INITIAL + 2]


@pytest.mark.looptime
async def test_engine_hands_the_limit_each_429s_retry_after() -> None:
    """A cap of 3 with a 2 s Retry-After: the limit lands on the cap and probes it rarely."""
    limiter = AdaptiveLimit(initial=4, probe_every=10)
    run = await generate_versions(
        "p",
        settings=WriterSettings(version_count=10),
        llm=CappedLLM(cap=3, inner=SimulatedLLM(ttft_s=0.1, tokens_per_s=10, output_tokens=10),
                      retry_after_s=2.0),
        limiter=limiter,
        indices=range(1, 13),
        retry=RetryPolicy(attempts=5, base_delay_s=0.1, jitter=0.0),
    )  # fmt: skip
    assert len(run.ok) == 12
    assert (limiter.limit, limiter.ceiling) == (3, 4)
    # 10 × (1 + 3 slots × 2 s Retry-After / 1.2 s an attempt: 12 tokens, 0.1 s apart)
    assert limiter.probe_after == 60
