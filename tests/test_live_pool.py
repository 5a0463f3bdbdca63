"""The live candidate pool on looptime's fake clock: keep the first N of N+k, add and stop
versions in a running run, hedged requests. Times are exact on the fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from arboris_nb import (
    ConfigError,
    RetryPolicy,
    Run,
    RunHandle,
    SimulatedLLM,
    StateError,
    WriterSettings,
    generate_versions,
    start_versions,
)
from arboris_nb.analysis.recorder import Recorder
from arboris_nb.backends.base import ChatRequest, StreamItem
from arboris_nb.events import Event, TokenDelta, VersionCancelled, VersionHedged, VersionQueued
from arboris_nb.hedging import HedgeClock, quantile
from arboris_nb.pricing import Price
from arboris_nb.runs import load_run
from arboris_nb.store import RunStore

# ttft 1 s + 9 further tokens at 10 tokens/s = 1.9 s a version; a straggler (×5) 9.5 s.
L = 1.9


def model(**kwargs: Any) -> SimulatedLLM:
    defaults: dict[str, Any] = {"ttft_s": 1.0, "tokens_per_s": 10.0, "reply": "a b c d e f g h i j"}
    return SimulatedLLM(**{**defaults, **kwargs})


def settings(n: int, c: int = 4, *, extra: int = 0, parallel: bool = True) -> WriterSettings:
    return WriterSettings(
        version_count=n, max_parallel_requests=c, extra_versions=extra, parallel=parallel
    )


def start(n: int, c: int = 4, *, llm: Any = None, **kwargs: Any) -> RunHandle:
    extra = kwargs.pop("extra", 0)
    parallel = kwargs.pop("parallel", True)
    return start_versions(
        "p",
        settings=settings(n, c, extra=extra, parallel=parallel),
        llm=llm or model(),
        store=False,
        **kwargs,
    )


# -- settings ------------------------------------------------------------------------------


def test_extra_versions_range_is_named_with_its_env_var() -> None:
    with pytest.raises(ConfigError, match=r"extra_versions \(WRITER_EXTRA_VERSIONS\).*0 to 5"):
        WriterSettings(extra_versions=6)
    with pytest.raises(ConfigError, match="extra_versions"):
        WriterSettings(extra_versions=-1)
    assert WriterSettings.from_env({"WRITER_EXTRA_VERSIONS": "2"}).extra_versions == 2
    assert WriterSettings.from_env({}).extra_versions == 0
    with pytest.raises(ConfigError, match=r"WRITER_EXTRA_VERSIONS.*whole number from 0 to 5"):
        WriterSettings.from_env({"WRITER_EXTRA_VERSIONS": "one"})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hedge_after_s": 0}, "hedge_after_s must be above 0"),
        ({"hedge_quantile": 1.0}, "hedge_quantile must be between 0 and 1"),
        ({"hedge_quantile": 0.9, "hedge_min_samples": 0}, "hedge_min_samples must be from 1"),
    ],
)
def test_hedge_settings_are_checked(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RetryPolicy(**options)


# -- keep the first N ----------------------------------------------------------------------


@pytest.mark.looptime
async def test_keep_first_n_cancels_the_straggler_as_surplus() -> None:
    run = await generate_versions(
        "p", settings=settings(3, extra=1), llm=model(stragglers={2}), store=False
    )
    assert run.elapsed_s == pytest.approx(L)  # not the straggler's 9.5 s
    assert [v.status for v in run.versions] == ["ok", "cancelled", "ok", "ok"]
    assert [v.index for v in run.kept] == [1, 3, 4]
    straggler = run.versions[1]
    assert straggler.cancel_reason == "surplus"
    assert straggler.content is None and straggler.display_text() == ""
    # It had streamed nothing yet (its first token was due at 5 s): no partial, no waste.
    assert straggler.partial is None and straggler.wasted_tokens == 0
    summary = run.summary()
    assert (summary["keep_count"], summary["extra_versions"], summary["kept"]) == (3, 1, 3)
    assert summary["surplus"] == 1 and summary["wasted_tokens"] == 0


@pytest.mark.looptime
async def test_a_surplus_version_keeps_its_partial_text_and_counts_as_waste() -> None:
    # Version 4 is longer: when 1–3 are done (1.9 s) it has streamed part of its text.
    llm = model(reply=lambda r: "a b c d e f g h i j" if r.version_index < 4 else "k " * 30)
    run = await generate_versions("p", settings=settings(3, extra=1), llm=llm, store=False)
    extra = run.versions[3]
    assert extra.status == "cancelled" and extra.cancel_reason == "surplus"
    assert extra.partial is not None and extra.partial.startswith("k k")
    streamed = extra.attempts[0].output_tokens
    assert streamed == extra.output_tokens == len(extra.partial.split())
    assert streamed in (9, 10)  # tokens at 1.0, 1.1 … 1.9 s; the last ties with the finish
    assert extra.wasted_tokens == streamed
    summary = run.summary()
    assert summary["wasted_tokens"] == streamed and summary["kept_tokens"] == 30
    assert summary["wasted_ratio"] == pytest.approx(streamed / 30)
    # The length of what was thrown away is there to compare with what was kept.
    assert summary["kept_tokens_mean"] == 10 and summary["discarded_tokens_mean"] == streamed
    frame = run.to_frame()
    assert frame["kept"].tolist() == [True, True, True, False]
    assert frame["cancel_reason"].tolist()[3] == "surplus"
    assert frame["partial_chars"].tolist()[3] == len(extra.partial)


@pytest.mark.looptime
async def test_extras_wait_for_slots_like_any_version() -> None:
    # C = 3 and N + k = 4: the extra starts when the first version frees its slot.
    run = await generate_versions(
        "p", settings=settings(3, c=3, extra=1), llm=model(stragglers={2}), store=False
    )
    assert run.versions[3].started_at == pytest.approx(L)
    assert run.elapsed_s == pytest.approx(2 * L)
    assert [v.index for v in run.kept] == [1, 3, 4]


@pytest.mark.looptime
async def test_failed_versions_are_replaced_by_the_extras() -> None:
    def reply(request: ChatRequest) -> str:  # version 4 is longer: it finishes last
        return "a b c d e f g h i j" + (" k l" if request.version_index == 4 else "")

    run = await generate_versions(
        "p",
        settings=settings(2, extra=2),
        llm=model(fail_versions={1}, reply=reply),
        retry=RetryPolicy(attempts=1),
        store=False,
    )
    assert [v.status for v in run.versions] == ["failed", "ok", "ok", "cancelled"]
    assert [v.index for v in run.kept] == [2, 3]


# -- stop one version ----------------------------------------------------------------------


@pytest.mark.looptime
async def test_stopping_a_version_frees_its_slot_for_a_queued_one_at_once() -> None:
    handle = start(3, c=2)
    await asyncio.sleep(1.55)  # version 1 and 2 stream (first token at 1 s); 3 is queued
    assert handle.cancel_version(1) is True
    await asyncio.sleep(0)
    first, _, third = handle.run.versions
    assert first.status == "cancelled" and first.cancel_reason == "stopped"
    run = await handle
    assert third.started_at == pytest.approx(1.55, abs=0.1)  # within 100 ms of the stop
    assert [v.status for v in run.versions] == ["cancelled", "ok", "ok"]
    assert run.elapsed_s == pytest.approx(1.55 + L)
    # What it had streamed (1 s first token, then a token each 0.1 s) stays, unselectable.
    assert first.partial == "a b c d e f " and first.content is None
    assert first.output_tokens == 6 and first.wasted_tokens == 6
    assert [v.index for v in run.kept] == [2, 3]


@pytest.mark.looptime
async def test_stopping_a_queued_version_sends_no_request() -> None:
    llm = model()
    handle = start(3, c=2, llm=llm)
    await asyncio.sleep(0.5)
    handle.cancel_version(3)
    assert handle.run.versions[2].status == "cancelled"  # at once, not at the next step
    run = await handle
    assert [c.version_index for c in llm.calls] == [1, 2]
    assert run.versions[2].attempt_count == 0 and run.versions[2].partial is None
    assert run.elapsed_s == pytest.approx(L)


@pytest.mark.looptime
async def test_stop_reports_ended_and_unknown_versions() -> None:
    handle = start(2)
    await asyncio.sleep(L + 0.1)
    assert handle.cancel_version(1) is False  # already ok: nothing to stop
    with pytest.raises(ConfigError, match=r"no version 7 .*versions: 1, 2"):
        handle.cancel_version(7)
    await handle


@pytest.mark.looptime
async def test_stop_in_serial_mode_moves_on_to_the_next_version() -> None:
    handle = start(3, c=1, parallel=False)
    await asyncio.sleep(0.5)
    handle.cancel_version(1)
    run = await handle
    assert [v.status for v in run.versions] == ["cancelled", "ok", "ok"]
    assert run.versions[1].started_at == pytest.approx(0.5)
    assert run.elapsed_s == pytest.approx(0.5 + 2 * L)


# -- add versions --------------------------------------------------------------------------


@pytest.mark.looptime
async def test_add_versions_starts_more_in_the_running_run() -> None:
    seen: list[int] = []

    def on_event(event: Event) -> None:
        if isinstance(event, VersionQueued):
            seen.append(event.version.index)

    handle = start(2, c=3, on_event=on_event)
    await asyncio.sleep(0.5)
    added = handle.add_versions(2)
    assert [v.index for v in added] == [3, 4]
    assert handle.run.keep == 4 and handle.run.versions[2:] == added
    run = await handle
    assert seen == [1, 2, 3, 4]
    third, fourth = run.versions[2:]
    assert third.queued_at == pytest.approx(0.5) and third.started_at == pytest.approx(0.5)
    assert fourth.started_at == pytest.approx(L)  # C = 3: it waited for a slot
    assert [v.status for v in run.versions] == ["ok"] * 4
    assert run.elapsed_s == pytest.approx(2 * L)


@pytest.mark.looptime
async def test_add_versions_to_a_keep_first_run_keeps_more() -> None:
    handle = start(2, extra=1, llm=model(stragglers={1}))
    await asyncio.sleep(0.5)
    handle.add_versions(1)
    run = await handle
    assert run.keep == 3 and [v.index for v in run.kept] == [2, 3, 4]
    assert run.versions[0].cancel_reason == "surplus"


@pytest.mark.looptime
async def test_add_versions_in_serial_mode_and_before_the_start() -> None:
    handle = start(1, c=1, parallel=False)
    handle.add_versions(1)  # before the run's first step: part of the plan
    await asyncio.sleep(0.5)
    handle.add_versions(1)
    run = await handle
    assert [v.status for v in run.versions] == ["ok", "ok", "ok"]
    assert run.elapsed_s == pytest.approx(3 * L)


@pytest.mark.looptime
async def test_add_versions_cap_and_state_errors() -> None:
    handle = start(9, c=10)
    with pytest.raises(ConfigError, match=r"from 1 to 1 .*capped at 10.*keeps 9; got 2"):
        handle.add_versions(2)
    with pytest.raises(ConfigError, match="got 0"):
        handle.add_versions(0)
    handle.add_versions(1)
    await handle
    with pytest.raises(StateError, match="this run has ended"):
        handle.add_versions(1)


# -- hedged requests -----------------------------------------------------------------------


async def hedged(llm: Any, n: int = 1, c: int = 4, **options: Any) -> Run:
    """A run of ``n`` versions under ``RetryPolicy(**options)`` (the hedge settings)."""
    events = options.pop("on_event", None)
    return await generate_versions(
        "p",
        settings=settings(n, c),
        llm=llm,
        retry=RetryPolicy(**options),
        on_event=events,
        store=False,
        raise_on_all_failed=False,
    )


async def one_slow_version(factor: float, *, hedge_after_s: float, **kwargs: Any) -> Run:
    """One version whose first request is ``factor`` times slower, hedged after a delay."""
    llm = model(stragglers={1}, straggler_factor=factor)
    return await hedged(llm, hedge_after_s=hedge_after_s, **kwargs)


class Concurrency:
    """A backend wrapper that records how many requests are in flight at once."""

    def __init__(self, inner: SimulatedLLM) -> None:
        self.inner, self.model = inner, inner.model
        self.now = self.peak = 0

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Concurrency]:
        yield self

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamItem]:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            async for item in self.inner.stream(request):
                yield item
        finally:
            self.now -= 1


@pytest.mark.looptime
async def test_a_hedge_beats_a_straggler_and_the_loser_is_cancelled() -> None:
    hedge_times: list[float] = []

    def on_event(event: Event) -> None:
        if isinstance(event, VersionHedged):
            hedge_times.append(event.t)

    llm = model(stragglers={2})
    run = await hedged(llm, 3, hedge_after_s=1.5, on_event=on_event)
    assert hedge_times == [pytest.approx(1.5)]
    assert run.elapsed_s == pytest.approx(1.5 + L)
    version = run.versions[1]
    assert version.ok and version.hedged and version.hedge_won
    assert version.attempt_count == 1  # a hedge is not a retry
    primary, hedge = version.attempts
    assert primary.lost and primary.finished_at == pytest.approx(1.5 + L)
    assert hedge.hedge and not hedge.lost
    assert version.ttft_s == pytest.approx(1.0)  # of the hedge, whose text was kept
    assert [(c.version_index, c.hedge) for c in llm.calls] == [
        (1, False),
        (2, False),
        (3, False),
        (2, True),
    ]
    summary = run.summary()
    assert (summary["hedges"], summary["hedges_won"]) == (1, 1)
    assert summary["wasted_tokens"] == 0  # the straggler had not sent a token


@pytest.mark.looptime
async def test_when_the_original_wins_the_hedge_is_cancelled_and_its_tokens_counted() -> None:
    # Version 1 is 1.5× slower: first token at 1.5 s, done at 1.5 + 9 × 0.15 = 2.85 s.
    # Its hedge starts at 1.2 s and would end at 3.1 s: it loses, cancelled at 2.85 s.
    run = await one_slow_version(1.5, hedge_after_s=1.2)
    version = run.versions[0]
    primary, hedge = version.attempts
    assert version.ok and version.hedged and not version.hedge_won
    assert run.elapsed_s == pytest.approx(2.85)
    assert hedge.lost and hedge.finished_at == pytest.approx(2.85)
    assert not primary.lost and version.ttft_s == pytest.approx(1.5)
    assert hedge.output_tokens == 7  # its tokens at 2.2, 2.3 … 2.8 s
    assert version.wasted_tokens == 7 and run.summary()["wasted_tokens"] == 7


@pytest.mark.looptime
async def test_a_losing_hedge_is_billed_and_its_cost_is_waste() -> None:
    # As above: the hedge loses at 2.85 s with 7 tokens streamed, and no usage (cut).
    price = Price(price_in=1_000_000, price_out=2_000_000)  # $1 an input token, $2 output
    llm = model(stragglers={1}, straggler_factor=1.5)
    run = await generate_versions(
        "p",
        settings=settings(1),
        llm=llm,
        retry=RetryPolicy(hedge_after_s=1.2),
        store=False,
        prices={"simulated": price},
    )
    version = run.versions[0]
    primary, hedge = version.attempts
    assert not primary.usage_estimated and primary.output_tokens == 10  # the server's usage
    prompt = primary.input_tokens
    assert prompt is not None and prompt > 0
    # The loser: billed when cancelled — its chunks, and the prompt the server read.
    assert hedge.usage_estimated and (hedge.input_tokens, hedge.output_tokens) == (prompt, 7)
    assert hedge.cost == pytest.approx(prompt + 2 * 7)
    assert version.cost == pytest.approx(primary.cost + hedge.cost)
    assert version.wasted_cost == pytest.approx(hedge.cost)
    summary = run.summary()
    assert summary["wasted_tokens"] == 7 and summary["wasted_cost"] == pytest.approx(hedge.cost)
    assert run.to_frame()["wasted_cost"].tolist() == [pytest.approx(hedge.cost)]


@pytest.mark.looptime
async def test_a_surplus_version_is_billed_before_the_store_hears_it_was_cancelled() -> None:
    llm = model(reply=lambda r: "a b c d e f g h i j" if r.version_index < 4 else "k " * 30)
    price = Price(price_in=1_000_000, price_out=2_000_000)
    billed_when_cancelled: list[float | None] = []

    def on_event(event: Event) -> None:
        if isinstance(event, VersionCancelled):  # what a subscriber (the store) sees
            billed_when_cancelled.append(event.version.attempts[-1].cost)

    run = await generate_versions(
        "p",
        settings=settings(3, extra=1),
        llm=llm,
        store=False,
        prices={"simulated": price},
        on_event=on_event,
    )
    extra = run.versions[3]
    attempt = extra.attempts[0]
    prompt = run.versions[0].input_tokens
    assert prompt is not None
    assert attempt.usage_estimated and attempt.output_tokens == extra.output_tokens
    assert attempt.cost == pytest.approx(prompt + 2 * attempt.output_tokens)
    assert billed_when_cancelled == [pytest.approx(attempt.cost)]
    assert extra.wasted_cost == pytest.approx(attempt.cost)
    summary = run.summary()
    assert summary["wasted_cost"] == pytest.approx(attempt.cost)
    assert summary["wasted_tokens"] == attempt.output_tokens
    frame = run.to_frame()
    assert frame["wasted_cost"].tolist() == [0.0, 0.0, 0.0, pytest.approx(attempt.cost)]


def test_extra_versions_are_refused_with_fanout_n() -> None:
    with pytest.raises(ConfigError, match=r"extra_versions.*needs fanout='requests'"):
        WriterSettings(version_count=3, fanout="n", extra_versions=1)


@pytest.mark.looptime
async def test_when_the_hedge_wins_what_the_original_streamed_is_waste() -> None:
    # Version 1 is 2× slower: tokens from 2 s, one each 0.2 s; done at 3.8 s. The hedge
    # (from 1.45 s) is done at 3.35 s, when the original has sent 7 tokens (2.0 … 3.2 s).
    run = await one_slow_version(2.0, hedge_after_s=1.45)
    version = run.versions[0]
    primary, _ = version.attempts
    assert version.hedge_won and primary.lost
    assert run.elapsed_s == pytest.approx(3.35)
    assert primary.output_tokens == 7 and version.wasted_tokens == 7
    assert version.ttft_s == pytest.approx(1.0)  # the hedge's: its text was kept


@pytest.mark.looptime
async def test_a_hedge_never_exceeds_the_limit_and_waits_for_a_slot() -> None:
    counted = Concurrency(model(stragglers={2}))
    run = await hedged(counted, 3, c=3, hedge_after_s=1.5)
    assert counted.peak == 3
    hedge = run.versions[1].attempts[1]
    assert hedge.hedge and hedge.started_at == pytest.approx(L)  # when version 1 finished
    assert run.elapsed_s == pytest.approx(2 * L)


@pytest.mark.looptime
async def test_a_version_is_hedged_at_most_once_even_across_retries() -> None:
    # Every request of version 1 is slow; with a 0.5 s hedge delay and 3 attempts it
    # would be hedged on each one if the rule allowed it.
    llm = model(straggler_rate=1.0, straggler_factor=3.0)
    run = await hedged(llm, hedge_after_s=0.5, stall_s=2.5)
    version = run.versions[0]
    assert version.status == "failed" and version.attempt_count == 3
    assert [(a.number, a.hedge, a.error_type) for a in version.attempts] == [
        (1, False, "BackendTimeout"),
        (1, True, "BackendTimeout"),
        (2, False, "BackendTimeout"),
        (3, False, "BackendTimeout"),
    ]
    assert sum(c.hedge for c in llm.calls) == 1


@pytest.mark.looptime
async def test_no_hedge_without_a_straggler() -> None:
    llm = model(jitter=0.2, seed=4)
    run = await hedged(llm, 3, hedge_after_s=2.0)
    assert not any(c.hedge for c in llm.calls)
    assert run.summary()["hedges"] == 0


@pytest.mark.looptime
async def test_stopping_a_hedged_version_cancels_both_requests() -> None:
    counted = Concurrency(model(stragglers={1}))
    handle = start(1, llm=counted, retry=RetryPolicy(hedge_after_s=0.5))
    await asyncio.sleep(1.2)
    assert counted.now == 2
    handle.cancel_version(1)
    await asyncio.sleep(0.01)
    assert counted.now == 0
    run = await handle
    assert run.versions[0].status == "cancelled"
    assert all(a.finished_at == pytest.approx(1.2) for a in run.versions[0].attempts)


@pytest.mark.looptime
async def test_the_hedge_delay_follows_the_runs_own_ttft_quantile() -> None:
    # Five versions, the fifth a straggler: once three first tokens are seen (all at 1 s),
    # the 0.9 quantile is 1 s and the straggler is hedged then — no fixed delay needed.
    run = await hedged(model(stragglers={5}), 5, c=6, hedge_quantile=0.9)
    hedge = run.versions[4].attempts[1]
    assert hedge.hedge and hedge.started_at == pytest.approx(1.0)
    assert run.elapsed_s == pytest.approx(1.0 + L)


@pytest.mark.looptime
async def test_the_quantile_waits_for_enough_samples() -> None:
    # Two versions: never three first tokens before the straggler's, so no hedge.
    run = await hedged(model(stragglers={2}), 2, hedge_quantile=0.9)
    assert not run.versions[1].hedged
    assert run.elapsed_s == pytest.approx(5 * L)


def test_quantile_is_linear_between_ranks() -> None:
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert quantile([1.0, 2.0], 0.9) == pytest.approx(1.9)
    assert quantile([4.0], 0.9) == 4.0


def test_hedge_delay_is_the_later_of_the_fixed_and_the_learned_one() -> None:
    clock = HedgeClock(RetryPolicy(hedge_after_s=0.5, hedge_quantile=0.5), lambda: 0.0)
    assert clock.delay() == 0.5
    for ttft in (1.0, 2.0, 3.0):
        clock.observe(ttft)
    assert clock.delay() == 2.0
    fixed_only = HedgeClock(RetryPolicy(hedge_after_s=0.5), lambda: 0.0)
    fixed_only.observe(9.0)
    assert fixed_only.delay() == 0.5


@pytest.mark.looptime
async def test_the_widget_stream_shows_one_request_per_version() -> None:
    # With a hedge racing, only one request's deltas are emitted per version.
    texts: dict[int, list[str]] = {}

    def on_event(event: Event) -> None:
        if isinstance(event, TokenDelta):
            texts.setdefault(event.version.index, []).append(event.text)

    run = await one_slow_version(1.5, hedge_after_s=1.2, on_event=on_event)
    assert "".join(texts[1]) == run.versions[0].content


# -- the run store -------------------------------------------------------------------------


@pytest.mark.looptime
async def test_the_store_keeps_the_pool_a_run_kept_and_the_versions_added(tmp_path: Any) -> None:
    path = tmp_path / "runs.sqlite3"
    handle = start_versions(
        "p", settings=settings(2, extra=1), llm=model(stragglers={1}), store=path
    )
    await asyncio.sleep(0.5)
    handle.add_versions(1)
    run = await handle
    with RunStore(path) as store:
        record = store.get_run(run.run_id)
        assert record is not None
        assert (record.keep, record.extra_versions, record.indices) == (3, 1, [1, 2, 3, 4])
        assert record.status == "complete"  # the three it keeps are ok; one was surplus
    loaded = load_run(run.run_id, store=path)
    assert loaded.keep == 3 and [v.index for v in loaded.kept] == [2, 3, 4]
    assert loaded.versions[0].cancel_reason == "surplus"
    assert loaded.summary()["kept"] == 3


@pytest.mark.looptime
async def test_the_recorder_frames_show_what_was_kept_hedged_and_wasted() -> None:
    recorder = Recorder()
    await generate_versions(
        "p",
        settings=settings(3, c=5, extra=1),
        llm=model(stragglers={2}),
        retry=RetryPolicy(hedge_after_s=1.5),
        on_event=recorder,
        store=False,
    )
    versions = recorder.versions_frame()
    assert versions["kept"].tolist() == [True, False, True, True]
    assert versions["cancel_reason"].tolist()[1] == "surplus"
    # Version 2 was hedged at 1.5 s, then cancelled as surplus at 1.9 s (1, 3, 4 were done).
    assert versions["hedged"].tolist() == [False, True, False, False]
    runs = recorder.runs_frame()
    assert (runs["keep"].iloc[0], runs["hedges"].iloc[0]) == (3, 1)
    assert runs["ideal_s"].iloc[0] == pytest.approx(L)  # ⌈3/4⌉·L: the kept versions
    assert runs["wasted_tokens"].iloc[0] == versions["wasted_tokens"].sum()


@pytest.mark.looptime
async def test_no_hedge_starts_for_a_version_stopped_while_it_waited_for_a_slot() -> None:
    # C = 4 is full with N + k = 4: version 2's hedge (due at 1.5 s) waits for a slot; at
    # 1.9 s versions 1, 3, 4 finish, the slot is handed over and version 2 is surplus.
    llm = model(stragglers={2})
    run = await generate_versions(
        "p",
        settings=settings(3, c=4, extra=1),
        llm=llm,
        retry=RetryPolicy(hedge_after_s=1.5),
        store=False,
    )
    assert run.versions[1].cancel_reason == "surplus" and not run.versions[1].hedged
    assert not any(c.hedge for c in llm.calls)


@pytest.mark.looptime
async def test_a_run_of_explicit_indices_starts_exactly_those() -> None:
    # A retry or a resume (indices=…) regenerates those versions: no extras, keep them all.
    run = await generate_versions(
        "p", settings=settings(3, extra=2), llm=model(), indices=[2], store=False
    )
    assert [v.index for v in run.versions] == [2]
    assert (run.keep, run.extra_versions) == (1, 0)
