"""Figures built from fake-clock sweeps: their bars, lines, labels and data, not pixels;
and, through a real kernel, that every plot function displays as an image."""

from __future__ import annotations

import math

import nbformat
import pandas as pd
import pytest
from matplotlib.figure import Figure
from nbclient import NotebookClient

from arboris_nb import (
    Recorder,
    RetryPolicy,
    SimulatedLLM,
    WriterSettings,
    generate_versions,
    plot_concurrency,
    plot_distributions,
    plot_limit_history,
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


# -- display in Jupyter ------------------------------------------------------------------
# Each cell's value is one figure; the kernel is fresh, with no %matplotlib magic.
_SETUP = """
import sys
import pandas as pd
from arboris_nb import (SimulatedLLM, plot_concurrency, plot_distributions,
                        plot_limit_history, plot_serial_vs_parallel, plot_timeline, sweep)
llm = SimulatedLLM(ttft_s=0.001, tokens_per_s=5000, output_tokens=5)
result = await sweep("p", versions=2, concurrency=[1, 2], repeats=1, llm=llm, progress=False)
"""
_PLOTS = {
    "plot_timeline": "plot_timeline(result.versions)",
    "plot_serial_vs_parallel": "plot_serial_vs_parallel(result.runs)",
    "plot_concurrency": "plot_concurrency(result.runs)",
    "plot_distributions": "plot_distributions(result.versions)",
    "plot_limit_history": 'plot_limit_history(pd.DataFrame({"t_s": [0, 1], "limit": [1, 2]}))',
}


def test_every_plot_displays_as_an_image_in_a_fresh_kernel() -> None:
    cells = [_SETUP, *_PLOTS.values(), 'print("matplotlib.pyplot" in sys.modules)']
    book = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(book, kernel_name="python3", timeout=120).execute()
    for name, cell in zip(_PLOTS, book.cells[1:-1], strict=True):
        (output,) = cell.outputs
        assert output.output_type == "execute_result", name
        assert output.data["image/png"], f"{name} shows no image"
        assert not output.data["text/plain"].startswith("<Figure size"), name
        assert output.data["text/plain"].startswith("<Figure "), name
    assert book.cells[-1].outputs[0].text == "False\n"  # pyplot was never imported


def test_a_figure_names_its_titles_in_text_and_renders_png() -> None:
    frame = pd.DataFrame({"t_s": [0.0, 1.0], "limit": [1, 2]})
    fig = plot_limit_history(frame, title="Limit <over> time")
    assert repr(fig) == "<Figure 600x300 px: Limit <over> time>"
    png = fig._repr_png_()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert isinstance(fig, Figure)
