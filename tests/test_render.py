"""The readers' view: static HTML of a run's final panels and of a book job's progress."""

from __future__ import annotations

import html
import re

import pytest

from arboris_nb import (
    BookJob,
    Evaluation,
    RetryPolicy,
    SimulatedLLM,
    VersionsWidget,
    WriterSettings,
    generate_versions,
    render_book,
    render_run,
    text_metrics,
)
from arboris_nb.render import metrics_table
from arboris_nb.results import Run

XSS = "<script>alert(1)</script> <img src=x onerror=alert(2)>"
FAST = {"ttft_s": 0.05, "tokens_per_s": 200.0, "output_tokens": 30}


def panels(markup: str) -> list[str]:
    """Each version panel's visible text (tags removed, entities decoded)."""
    found = re.findall(r'<div class="arboris-run-version"[^>]*>(.*?)</div>', markup)
    return [html.unescape(re.sub(r"<[^>]+>", "\n", p)) for p in found]


def metric_rows(markup: str) -> list[list[str]]:
    table = re.search(r'<table class="arboris-run-metrics">(.*?)</table>', markup)
    assert table, markup
    rows = re.findall(r"<tr>(.*?)</tr>", table.group(1))[1:]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in rows]


async def three(**model: object) -> Run:
    return await generate_versions(
        "p", settings=WriterSettings(version_count=3), retry=RetryPolicy(attempts=1),
        llm=SimulatedLLM(**{**FAST, **model}), store=False,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.mark.looptime
async def test_every_version_shows_its_full_text_status_and_metrics() -> None:
    run = await three(fail_versions={3})
    view = render_run(run)
    shown = panels(view._repr_html_())
    assert len(shown) == 3
    for version, text in zip(run.versions[:2], shown[:2], strict=True):
        assert version.content and version.content in text
        assert f"Version {version.index}" in text and "ok" in text
    assert "failed" in shown[2] and "Generation failed: simulated failure" in shown[2]
    rows = metric_rows(view.html)
    assert [row[0] for row in rows] == ["1", "2"]  # ok versions only
    for version, row in zip(run.versions[:2], rows, strict=True):
        m = text_metrics(version.content or "")
        assert row[1:4] == [str(m["chars"]), str(m["words"]), str(m["paragraphs"])]
    assert metrics_table(run.versions) in view.html
    assert metrics_table(run.versions[2:]) == ""  # no ok version, no table
    assert repr(view) == f"<run {run.run_id}: 3 versions, ok ok failed>"
    assert "2 ok, 1 failed" in view.html


@pytest.mark.looptime
async def test_model_text_is_escaped_and_nothing_executes() -> None:
    run = await three(reply="「走吧」" + XSS + "\n\nsecond paragraph")
    run.versions[0].title = XSS
    markup = render_run(run).html
    assert "<script" not in markup and "<img" not in markup and "<style" not in markup
    assert "onerror=alert(2)&gt;" in markup  # shown as text
    assert "<p>second paragraph</p>" in markup  # paragraphs survive without CSS
    assert html.escape("「走吧」" + XSS) in markup


@pytest.mark.looptime
async def test_selection_and_verdict_are_shown() -> None:
    run = await three()
    verdict = Evaluation(best_choice=3, reason="tighter <b>pacing</b>", versions={})
    markup = render_run(run, selected=2, evaluation=verdict).html
    assert "selected: version 2" in markup and "judge's choice: version 3" in markup
    assert "tighter &lt;b&gt;pacing&lt;/b&gt;" in markup
    assert "✔ selected" in panels(markup)[1] and "✔ selected" not in panels(markup)[0]


@pytest.mark.looptime
async def test_a_widget_renders_its_run_selection_and_evaluation() -> None:
    llm = SimulatedLLM(**FAST)  # type: ignore[arg-type]
    w = VersionsWidget(llm=llm, settings=WriterSettings(version_count=2))
    assert repr(render_run(w)) == "<no run yet>"
    run = await w.generate("p")
    w.select(2)
    w.compare.evaluation = Evaluation(best_choice=1, reason="r", versions={})
    markup = render_run(w).html
    assert f"Run {run.run_id}" in markup
    assert "selected: version 2" in markup and "judge's choice: version 1" in markup
    for version, text in zip(run.versions, panels(markup), strict=True):
        assert version.content and version.content in text


@pytest.mark.looptime
async def test_book_view_has_a_row_per_chapter() -> None:
    job = BookJob(
        "b", chapters=range(1, 4), versions_per_chapter=2, prompts="ch {chapter}",
        llm=SimulatedLLM(**FAST, fail_versions={2}), limit=2,  # type: ignore[arg-type]
        retry=RetryPolicy(attempts=1), job_id="book-view",
    )  # fmt: skip
    await job.run()
    view = render_book(job)
    rows = re.findall(r"<tr><td[^>]*>(\d+)</td>(.*?)</tr>", view.html)
    assert [chapter for chapter, _ in rows] == ["1", "2", "3"]
    frame = job.frame()
    for chapter, cells in rows:
        units = frame[frame["chapter"] == int(chapter)].sort_values("version")
        first, second = re.findall(r"<td[^>]*>(.*?)</td>", cells)
        assert f"{units['chars'].iloc[0]} chars" in first and ">ok<" in first
        assert ">failed<" in second and "chars" not in second
    assert "0/3 chapters complete" in view.html
    assert repr(view) == "<book job book-view: 6 versions, 3 failed, 3 ok>"
