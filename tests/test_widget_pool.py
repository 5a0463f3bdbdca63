"""The live pool in the widget (plain pytest, real widgets, looptime's fake clock): **+1**
adds a panel mid-run, a panel's **Stop** stops that version only, **Extra** keeps the
first N to finish, and a hedged version says so. Asserted through what the widget shows."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from arboris_nb import RetryPolicy, SimulatedLLM, StateError, VersionsWidget, WriterSettings

# 0.05 s to the first token, then 41 more tokens at 200/s: L = 0.255 s a version.
L = 0.255


def make(
    n: int = 3, c: int = 4, *, retry: RetryPolicy | None = None, **model: Any
) -> VersionsWidget:
    options: dict[str, Any] = {"ttft_s": 0.05, "tokens_per_s": 200.0, "output_tokens": 40}
    return VersionsWidget(
        llm=SimulatedLLM(**{**options, **model}),
        settings=WriterSettings(version_count=n, max_parallel_requests=c),
        retry=retry or RetryPolicy(attempts=1),
    )


def statuses(w: VersionsWidget) -> list[str]:
    return [p.status for p in w.panels]


@pytest.mark.looptime
async def test_plus_one_adds_a_fourth_panel_mid_run() -> None:
    w = make(n=3)
    assert w.add_button.disabled  # nothing runs yet
    task = w.generate("p")
    await asyncio.sleep(0.1)
    assert not w.add_button.disabled
    w.add_button.click()
    assert len(w.panels) == 4 and w.panel(4).status in ("queued", "running")
    assert w.panel(4).box in w.board.grid.children
    run = await task
    assert statuses(w) == ["done"] * 4
    assert w.panel(4).text == run.versions[3].content and run.keep == 4
    assert run.versions[3].started_at == pytest.approx(0.1, abs=0.01)
    assert w.progress.summary == "4 ok of 4"
    assert w.add_button.disabled  # the run has ended
    w.add_button.click()  # a click now explains itself instead of raising
    assert "press Generate first" in w.message.value
    with pytest.raises(StateError, match="running run"):
        w.add_version()


@pytest.mark.looptime
async def test_a_panels_stop_stops_that_version_and_the_others_go_on() -> None:
    w = make(n=3)
    task = w.generate("p")
    await asyncio.sleep(0.1)  # all three stream
    assert not w.panel(2).stop_button.disabled
    w.panel(2).stop_button.click()
    run = await task
    assert statuses(w) == ["done", "cancelled", "done"]
    second = run.versions[1]
    assert second.cancel_reason == "stopped" and second.partial
    assert w.panel(2).text == second.partial and "partial" in w.panel(2).badges
    assert "Stopped on request" in w.panel(2).note and "cannot be selected" in w.panel(2).note
    assert w.panel(2).stop_button.disabled and w.panel(2).select_button.disabled
    with pytest.raises(StateError, match="only a done version"):
        w.select(2)
    assert w.progress.summary == "2 ok · 1 cancelled of 3"
    assert run.elapsed_s == pytest.approx(L)


@pytest.mark.looptime
async def test_a_stuck_version_does_not_hold_the_run_with_one_extra() -> None:
    w = make(n=3, stragglers={2}, straggler_factor=20.0)  # version 2 would take 4.9 s
    w.prompt.value, w.extra.value = "p", 1
    w.generate_button.click()
    assert w.task is not None and len(w.panels) == 4
    run = await w.task
    assert run.elapsed_s == pytest.approx(L)  # on time: the first three to finish
    assert statuses(w) == ["done", "cancelled", "done", "done"]
    assert [v.index for v in run.kept] == [1, 3, 4]
    # A surplus version is not a stop: the bar reads ok, the line says surplus.
    assert w.progress.summary == "3 ok · 1 surplus of 4" and w.progress.outcome == "ok"
    assert "Surplus" in w.panel(2).note
    frame = w.frame()
    assert frame["cancel_reason"].tolist()[1] == "surplus" and frame["kept"].sum() == 3


@pytest.mark.looptime
async def test_stop_on_a_panel_being_retried_stops_the_retry() -> None:
    w = make(n=2)
    run = await w.generate("p")
    kept = run.versions[1].content
    w.retry(2)
    await asyncio.sleep(0.1)
    assert w.panel((2, 1)).status == "running" and w.panel(2).status == "done"
    w.panel((2, 1)).stop_button.click()
    await asyncio.sleep(0.1)
    assert w.panel((2, 1)).status == "cancelled" and not w.busy
    assert w.panel(2).status == "done" and w.panel(2).text == kept
    assert "Retry cancelled" in w.panel(2).note


@pytest.mark.looptime
async def test_a_hedged_version_says_so() -> None:
    w = make(n=2, retry=RetryPolicy(attempts=1, hedge_after_s=0.1), stragglers={1})
    run = await w.generate("p")
    assert run.versions[0].hedge_won
    assert "hedged" in w.panel(1).badges and "hedge won" in w.panel(1).stats
    assert "hedged" not in w.panel(2).badges


def test_the_extra_control_starts_from_the_settings_and_its_range() -> None:
    w = VersionsWidget(
        llm=SimulatedLLM(), settings=WriterSettings(version_count=2, extra_versions=2)
    )
    assert (w.extra.value, w.extra.min, w.extra.max) == (2, 0, 5)
