"""The limit trace: the limits frame, plot_limit and the Timeline SVG, on a fake clock."""

from __future__ import annotations

import pytest
from matplotlib.collections import PolyCollection

from arboris_nb import (
    FixedLimit,
    Recorder,
    RetryPolicy,
    SimulatedLLM,
    WriterSettings,
    generate_versions,
    plot_limit,
)
from arboris_nb.analysis import LIMITS_COLUMNS, limit_trace, limit_trace_html
from tests.fixtures.capped import CappedLLM


def model() -> SimulatedLLM:
    """1 s a version: ttft 0.1 s, then 9 more tokens 0.1 s apart."""
    return SimulatedLLM(ttft_s=0.1, tokens_per_s=10.0, reply="a b c d e f g h i j")


RETRY = RetryPolicy(attempts=5, base_delay_s=0.1, jitter=0.0)


async def capped_run(recorder: Recorder, limiter: FixedLimit, n: int = 3) -> None:
    await generate_versions(
        "p",
        settings=WriterSettings(version_count=n),
        llm=CappedLLM(cap=2, inner=model(), retry_after_s=1.2),
        limiter=limiter,
        retry=RETRY,
        on_event=recorder,
    )


@pytest.mark.looptime
async def test_limits_frame_has_the_limit_in_flight_and_every_429() -> None:
    recorder = Recorder()
    await capped_run(recorder, FixedLimit(3))
    frame = recorder.limits_frame()
    assert list(frame.columns) == list(LIMITS_COLUMNS)
    # t=0: the limit (3), three starts, the third refused at once (a cap of 2); v1 and v2
    # end at 1 s; the retry starts after the 1.2 s Retry-After and ends 1 s later.
    frame["t_s"] = frame["t_s"].round(6)
    rows = frame[["t_s", "limit", "in_flight", "rate_limited"]].values.tolist()
    assert rows == (
        [
            [0.0, 3, 0, False],
            [0.0, 3, 1, False],
            [0.0, 3, 2, False],
            [0.0, 3, 3, False],
            [0.0, 3, 2, True],
            [1.0, 3, 1, False],
            [1.0, 3, 0, False],
            [1.2, 3, 1, False],
            [2.2, 3, 0, False],
        ]
    )
    run = recorder.runs_frame().iloc[0]
    assert (run["rate_limited"], run["attempts"]) == (1, 4)
    assert run["share_429"] == pytest.approx(0.25)


@pytest.mark.looptime
async def test_auto_runs_are_labelled_auto_and_trace_their_moves() -> None:
    recorder = Recorder()
    await generate_versions(
        "p",
        settings=WriterSettings(version_count=8, max_parallel_requests="auto"),
        llm=CappedLLM(cap=5, inner=model(), retry_after_s=0.2),
        retry=RETRY,
        on_event=recorder,
    )
    frame = recorder.limits_frame()
    assert set(frame["max_parallel_requests"]) == {"auto"}
    assert frame["limit"].iloc[0] == 4  # where auto starts
    assert frame["in_flight"].max() <= frame["limit"].max()
    assert frame["rate_limited"].sum() == recorder.runs_frame()["rate_limited"].iloc[0]
    runs = recorder.runs_frame()
    assert runs["max_parallel_requests"].tolist() == ["auto"]
    assert runs["ideal_s"].isna().all()  # no fixed C, no ideal
    assert recorder.limit_changes(recorder.runs[0])[0] == (0.0, 4)


@pytest.mark.looptime
async def test_plot_limit_draws_limit_in_flight_and_429_marks() -> None:
    recorder = Recorder()
    await capped_run(recorder, FixedLimit(3))
    await generate_versions(
        "p", settings=WriterSettings(version_count=2, max_parallel_requests=2), llm=model(),
        on_event=recorder,
    )  # fmt: skip
    fig = plot_limit(recorder.limits_frame(), run_id=recorder.runs[0].run_id)
    ax = fig.axes[0]
    limit_line, marks = ax.get_lines()
    assert set(limit_line.get_ydata()) == {3}
    assert len(marks.get_xdata()) == 1  # one 429
    assert any(isinstance(c, PolyCollection) for c in ax.collections)  # in flight
    assert "C=3" in ax.get_title()
    assert "429 (1)" in [t.get_text() for t in ax.get_legend().get_texts()]
    # Without run_id: the last auto run if any, else the last run.
    assert "C=2" in plot_limit(recorder.limits_frame()).axes[0].get_title()
    with pytest.raises(ValueError, match="no run with run_id='nope'"):
        plot_limit(recorder.limits_frame(), run_id="nope")
    with pytest.raises(ValueError, match="plot_limit: the frame has no rows"):
        plot_limit(Recorder().limits_frame())


@pytest.mark.looptime
async def test_trace_and_its_html_for_the_timeline_tab() -> None:
    recorder = Recorder()
    await capped_run(recorder, FixedLimit(3))
    run = recorder.runs[0]
    changes = recorder.limit_changes(run)
    points = limit_trace(run, changes)
    assert [p.in_flight for p in points][-1] == 0
    assert sum(p.rate_limited for p in points) == 1
    # Without the events a fixed run still knows its limit.
    assert {p.limit for p in limit_trace(run)} == {3}
    svg = limit_trace_html(run, changes)
    assert svg.count('stroke="#d0463b"') == 1  # one red tick
    assert "<svg" in svg and "<script" not in svg
    assert "429s (red): 1" in svg
    assert "No run yet" in limit_trace_html(None)
