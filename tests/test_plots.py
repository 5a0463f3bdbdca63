"""Figures built from fake-clock sweeps: their bars, lines, labels and data, not pixels."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from matplotlib.figure import Figure

from arboris_nb import (
    Recorder,
    RetryPolicy,
    SimulatedLLM,
    WriterSettings,
    generate_versions,
    plot_concurrency,
    plot_distributions,
    plot_serial_vs_parallel,
    plot_timeline,
    sweep,
)


def model(**kwargs: object) -> SimulatedLLM:
    """1 s a version: ttft 0.1 s, then 9 more tokens 0.1 s apart."""
    return SimulatedLLM(ttft_s=0.1, tokens_per_s=10.0, reply="a b c d e f g h i j", **kwargs)  # type: ignore[arg-type]


@pytest.mark.looptime
async def test_timeline_draws_three_phases_per_version() -> None:
    recorder = Recorder()
    await generate_versions(
        "p", settings=WriterSettings(version_count=5, max_parallel_requests=2), llm=model(),
        on_event=recorder,
    )  # fmt: skip
    fig = plot_timeline(recorder.versions_frame())
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    queue, first, generating, failed = ax.containers
    assert [p.get_width() for p in queue] == pytest.approx([0, 0, 1, 1, 2])
    assert [p.get_x() for p in first] == pytest.approx([0, 0, 1, 1, 2])
    assert [p.get_width() for p in first] == pytest.approx([0.1] * 5)
    assert [p.get_width() for p in generating] == pytest.approx([0.9] * 5)
    assert [p.get_width() for p in failed] == pytest.approx([0] * 5)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["v1", "v2", "v3", "v4", "v5"]
    assert "N=5, parallel, C=2" in ax.get_title()
    assert ax.get_xlabel() == "seconds since the run started"


@pytest.mark.looptime
async def test_timeline_picks_a_run_and_shows_failures_in_red() -> None:
    recorder = Recorder()
    bad = await generate_versions(
        "p", settings=WriterSettings(version_count=2, max_parallel_requests=2),
        llm=model(fail_versions={2}), retry=RetryPolicy(attempts=1), on_event=recorder,
    )  # fmt: skip
    await generate_versions(
        "p", settings=WriterSettings(version_count=3), llm=model(), on_event=recorder
    )
    ax = plot_timeline(recorder.versions_frame(), run_id=bad.run_id).axes[0]
    generating, failed = ax.containers[2], ax.containers[3]
    assert len(generating) == 2
    assert [p.get_width() for p in generating] == pytest.approx([0.9, 0.0])
    assert [p.get_width() for p in failed] == pytest.approx([0.0, 0.1])  # failed after ttft
    with pytest.raises(ValueError, match="no run with run_id='nope'"):
        plot_timeline(recorder.versions_frame(), run_id="nope")


@pytest.mark.looptime
async def test_serial_vs_parallel_reproduces_the_seed_picture() -> None:
    result = await sweep("p", versions=[2, 3], concurrency=[3], repeats=2, llm=model(),
                         progress=False)  # fmt: skip
    ax = plot_serial_vs_parallel(result.runs).axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([2, 1, 3, 1])  # per N: serial, then C=3
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["N=2\nserial", "N=2\nC=3", "N=3\nserial", "N=3\nC=3"]
    notes = [t.get_text() for t in ax.texts]
    assert notes[3] == "1.00 s\nsaves 67%"  # 3 → 1: the seed's 30 → 10 minutes
    assert notes[1] == "1.00 s\nsaves 50%"


@pytest.mark.looptime
async def test_serial_vs_parallel_hatches_an_estimated_serial_bar() -> None:
    result = await sweep("p", versions=3, concurrency=[3], repeats=1, include_serial=False,
                         llm=model(), progress=False)  # fmt: skip
    ax = plot_serial_vs_parallel(result.runs).axes[0]
    serial_bar = ax.patches[0]
    assert serial_bar.get_height() == pytest.approx(3.0)
    assert serial_bar.get_hatch() == "//"
    assert ax.get_xticklabels()[0].get_text() == "N=3\nserial (est.)"


@pytest.mark.looptime
async def test_concurrency_plot_has_measured_ideal_and_serial_lines() -> None:
    result = await sweep("p", versions=5, concurrency=[1, 2, 5], repeats=2, llm=model(),
                         progress=False)  # fmt: skip
    wall, eff = plot_concurrency(result.runs).axes
    lines = {line.get_label(): line for line in wall.get_lines()}
    measured = wall.containers[0].lines[0]
    assert list(measured.get_xdata()) == [1, 2, 5]
    assert list(measured.get_ydata()) == pytest.approx([5, 3, 1])
    ideal = lines["N=5 ideal ⌈N/C⌉·L"]
    assert list(ideal.get_xdata()) == [1, 2, 3, 4, 5]
    assert list(ideal.get_ydata()) == pytest.approx([math.ceil(5 / c) for c in range(1, 6)])
    assert list(lines["N=5 serial"].get_ydata()) == pytest.approx([5, 5])
    eff_line = eff.containers[0].lines[0]
    assert list(eff_line.get_ydata()) == pytest.approx([0, 40, 80])
    assert wall.get_xlabel() == "concurrency limit C"
    assert eff.get_ylabel() == "efficiency (%)"
    assert eff.get_title() == "Efficiency (serial − parallel) / serial"  # measured serial


def test_concurrency_plot_needs_parallel_runs() -> None:
    frame = pd.DataFrame({"mode": ["serial"], "version_count": [3]})
    with pytest.raises(ValueError, match="no parallel runs"):
        plot_concurrency(frame)
    with pytest.raises(ValueError, match="the frame has no rows"):
        plot_concurrency(frame.iloc[0:0])


@pytest.mark.looptime
async def test_distributions_one_box_per_mode_and_limit() -> None:
    result = await sweep("p", versions=4, concurrency=[2, 4], repeats=1, llm=model(),
                         progress=False)  # fmt: skip
    ttft, duration = plot_distributions(result.versions).axes
    assert [t.get_text() for t in ttft.get_xticklabels()] == ["serial", "C=2", "C=4"]
    assert ttft.get_title() == "Time to first token"
    assert duration.get_title() == "Version duration"
    # each box's median line sits at the exact value: 0.1 s ttft, 1 s duration
    medians = [line for line in duration.get_lines() if line.get_color() != "black"]
    assert [line.get_ydata()[0] for line in medians][:3] == pytest.approx([1.0] * 3)
    medians = [line for line in ttft.get_lines() if line.get_color() != "black"]
    assert [line.get_ydata()[0] for line in medians][:3] == pytest.approx([0.1] * 3)
