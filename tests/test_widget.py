"""VersionsWidget in plain pytest: real widgets (no kernel, no browser) on a running loop,
driven by the simulated model; timings on looptime's fake clock."""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import ipywidgets
import pytest

from arboris_nb import (
    ConfigError,
    LLMConfig,
    RetryPolicy,
    SimulatedLLM,
    StateError,
    VersionsWidget,
    WriterSettings,
    simulated_judge,
)
from arboris_nb.backends.base import ChatRequest, StreamItem, Usage
from arboris_nb.errors import ServerError
from arboris_nb.runs import load_run, retries_of

XSS = "<script>alert(1)</script> <img src=x onerror=alert(2)>"


def make(n: int = 3, c: int = 3, **model: object) -> VersionsWidget:
    options: dict[str, object] = {"ttft_s": 0.05, "tokens_per_s": 200.0, "output_tokens": 40}
    options.update(model)
    llm = SimulatedLLM(**options)  # type: ignore[arg-type]
    return VersionsWidget(
        llm=llm,
        settings=WriterSettings(version_count=n, max_parallel_requests=c),
        retry=RetryPolicy(attempts=1),
    )


def text_of(w: VersionsWidget, i: int) -> str:
    """What the reader sees in panel i's body: the HTML's text, unescaped."""
    return html.unescape(re.sub(r"<[^>]+>", "", w._panels[i].body.value))


def status_of(w: VersionsWidget, i: int) -> str:
    found = re.search(r'class="arboris-status[^"]*"[^>]*>([^<]*)<', w._panels[i].header.value)
    assert found, w._panels[i].header.value
    return found.group(1)


def statuses(w: VersionsWidget) -> list[str]:
    return [status_of(w, i) for i in w._panels]


# -- streaming and statuses ---------------------------------------------------------------
@pytest.mark.looptime
async def test_generate_returns_a_task_and_panels_end_with_the_versions() -> None:
    w = make()
    task = w.generate("Write chapter 3")
    assert isinstance(task, asyncio.Task) and not task.done()
    assert w.generate_button.disabled and not w.stop_button.disabled
    run = await task
    assert w.run is run and [v.status for v in run.versions] == ["ok"] * 3
    for v in run.versions:
        assert text_of(w, v.index) == v.content
    assert statuses(w) == ["done"] * 3
    assert "3/3 done" in w.progress.value
    assert not w.generate_button.disabled and w.stop_button.disabled
    header = w._panels[1].header.value
    assert "s TTFT" in header and f"{run.versions[0].output_tokens} tok" in header
    assert "tok/s" in header
    assert list(w.frame()["status"]) == ["ok"] * 3


@pytest.mark.looptime
async def test_status_words_while_running_and_queued() -> None:
    w = make(n=3, c=1)
    task = w.generate("p")
    await asyncio.sleep(0.1)  # version 1 streams, 2 and 3 wait for the single slot
    assert statuses(w) == ["running", "queued", "queued"]
    assert text_of(w, 1).startswith("Version 1.") and text_of(w, 2) == ""
    await task
    assert statuses(w) == ["done"] * 3


@pytest.mark.looptime
async def test_first_token_is_shown_at_once() -> None:
    w = make(n=1, ttft_s=0.5, tokens_per_s=1.0)
    task = w.generate("p")
    await asyncio.sleep(0.5001)  # just after the first token, long before the next
    assert text_of(w, 1) == "Version "
    w.stop()
    await task


@pytest.mark.looptime
async def test_failed_panel_shows_the_error_and_cannot_be_selected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = make(fail_versions={2})
    await w.generate("p")
    assert statuses(w) == ["done", "failed", "done"]
    assert text_of(w, 2) == "Generation failed: simulated failure of version 2"
    assert w._panels[2].select_button.disabled and not w._panels[1].select_button.disabled
    with pytest.raises(StateError, match="Version 2 is failed: only a done version can be"):
        w.select(2)
    w._panels[2].select_button.click()  # the button path reports on the panel instead
    assert w.selected is None and "only a done version" in w._panels[2].note.value
    assert "1 failed" in w.progress.value
    monkeypatch.setenv("ARBORIS_LANG", "zh")
    await w.generate("p")
    assert text_of(w, 2) == "生成失败: simulated failure of version 2"


class FlakyFirstAttempt:
    """Streams some text, then breaks on attempt 1; attempt 2 succeeds (real interface)."""

    model = "flaky"

    @asynccontextmanager
    async def open(self) -> AsyncIterator[FlakyFirstAttempt]:
        yield self

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamItem]:
        words = ["partial ", "words "] if request.attempt == 1 else ["final ", "text"]
        for word in words:
            await asyncio.sleep(0.1)
            yield word
        if request.attempt == 1:
            raise ServerError("stream broke", status=502)
        yield Usage(output_tokens=2)


@pytest.mark.looptime
async def test_retry_clears_partial_text_and_shows_retrying() -> None:
    w = VersionsWidget(
        llm=FlakyFirstAttempt(),
        settings=WriterSettings(version_count=1),
        retry=RetryPolicy(attempts=2, base_delay_s=1.0, jitter=0.0),
    )
    task = w.generate("p")
    await asyncio.sleep(0.15)
    assert (status_of(w, 1), text_of(w, 1)) == ("running", "partial ")
    await asyncio.sleep(0.3)  # attempt 1 failed at 0.2 s; backing off for 1 s
    assert (status_of(w, 1), text_of(w, 1)) == ("retrying", "")
    await asyncio.sleep(0.9)  # attempt 2 started at 1.2 s; its first word came at 1.3 s
    assert (status_of(w, 1), text_of(w, 1)) == ("retrying", "final ")
    assert "attempt 2" in w._panels[1].header.value
    run = await task
    assert run.versions[0].content == "final text" == text_of(w, 1)
    assert status_of(w, 1) == "done"


# -- stop ------------------------------------------------------------------------------------
@pytest.mark.looptime
async def test_stop_cancels_in_flight_versions_and_keeps_finished_ones() -> None:
    w = make(n=3, c=1)  # one at a time: 0.05 s + 41 tokens / 200 = 0.255 s each
    task = w.generate("p")
    await asyncio.sleep(0.35)  # v1 done, v2 streaming, v3 queued
    loop = asyncio.get_running_loop()
    stopped_at = loop.time()
    w.stop_button.click()
    run = await task
    assert loop.time() - stopped_at < 1.0
    assert [v.status for v in run.versions] == ["ok", "cancelled", "cancelled"]
    assert statuses(w) == ["done", "cancelled", "cancelled"]
    assert text_of(w, 1) == run.versions[0].content and text_of(w, 2) == ""
    assert w.stop_button.disabled and not w.generate_button.disabled
    assert w.select(1) is run.versions[0]


# -- safety and errors -------------------------------------------------------------------------
@pytest.mark.looptime
async def test_model_output_is_escaped_everywhere() -> None:
    reply = json.dumps({"title": "<img src=x onerror=alert(3)>", "full_content": XSS})
    w = make(n=2, reply=reply)
    run = await w.generate("p")
    assert run.versions[0].content == XSS
    for panel in w._panels.values():
        for value in (panel.body.value, panel.header.value):
            assert "<script" not in value and "<img" not in value
    assert text_of(w, 1) == XSS
    assert "&lt;img src=x onerror=alert(3)&gt;" in w._panels[1].header.value
    w.diff(1, 2)
    assert "<script" not in w.compare.output.value and "<img" not in w.compare.output.value
    assert "<script" not in w.table.value and "<img" not in w.table.value


async def test_errors_in_the_background_task_are_shown_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = VersionsWidget(llm=LLMConfig(), settings=WriterSettings(version_count=2))
    with caplog.at_level(logging.ERROR, logger="arboris_nb"):
        task = w.generate("p")
        with pytest.raises(ConfigError, match="no API configured"):
            await task
    assert "no API configured" in w.message.value
    assert any("generation failed" in r.getMessage() for r in caplog.records)
    assert not w.generate_button.disabled


def test_generate_without_a_running_loop_points_to_the_sync_api() -> None:
    w = make()
    with pytest.raises(RuntimeError, match="generate_versions_sync"):
        w.generate("p")


@pytest.mark.looptime
async def test_a_second_generate_while_running_is_refused() -> None:
    w = make()
    task = w.generate("p")
    with pytest.raises(RuntimeError, match="already in progress"):
        w.generate("p")
    await task


# -- throttling --------------------------------------------------------------------------------
@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> dict[int, int]:
    """Counts state messages (``send_state`` calls) per widget id."""
    counts: dict[int, int] = {}
    original = ipywidgets.Widget.send_state

    def counting(self: ipywidgets.Widget, key: object = None) -> None:
        counts[id(self)] = counts.get(id(self), 0) + 1
        original(self, key)

    monkeypatch.setattr(ipywidgets.Widget, "send_state", counting)
    return counts


@pytest.mark.looptime
async def test_syncs_are_bounded_by_the_flush_rate_not_the_token_rate(
    syncs: dict[int, int],
) -> None:
    # 3 panels at 200 tokens/s, ~400 tokens each: 1200+ deltas in about 2 s.
    w = make(n=3, output_tokens=400)
    syncs.clear()
    loop = asyncio.get_running_loop()
    start = loop.time()
    run = await w.generate("p")
    seconds = loop.time() - start
    deltas = sum(v.output_tokens for v in run.versions)
    assert deltas > 1200 and seconds == pytest.approx(0.05 + (deltas / 3 - 1) / 200)
    for panel in w._panels.values():
        body = syncs.get(id(panel.body), 0)
        # <= 20 flushes a second, plus the state changes (queued, started, first token, done)
        assert 10 <= body <= seconds * 20 + 5
        assert syncs.get(id(panel.header), 0) <= seconds * 20 + 5
    total = sum(syncs.values())
    assert total < deltas / 5, f"{total} messages for {deltas} tokens"
    assert total / seconds < 250  # far below Jupyter's 1000 msgs/s


@pytest.mark.looptime
async def test_long_texts_stretch_the_flush_interval(syncs: dict[int, int]) -> None:
    w = make(n=1, output_tokens=400)
    w._max_chars_per_s = 2_000  # ~2.4k characters: each flush then waits ~1 s
    syncs.clear()
    await w.generate("p")
    assert syncs[id(w._panels[1].body)] <= 12  # vs ~40 at the plain 20 Hz


# -- editor actions --------------------------------------------------------------------------------
@pytest.mark.looptime
async def test_select_edit_diff_evaluate_export_and_retry(tmp_path: Path) -> None:
    judge = simulated_judge(ttft_s=0.05, tokens_per_s=200.0, output_tokens=40)
    w = VersionsWidget(llm=judge, settings=WriterSettings(version_count=3), export_dir=tmp_path)
    run = await w.generate("Write chapter 3")

    with pytest.raises(StateError, match="Select a version first"):
        w.export()
    w._panels[2].select_button.click()
    assert w.selected is run.versions[1]
    assert "selected" in w._panels[2].header.value and w._panels[2].select_button.disabled

    panel = w._panels[1]
    panel.edit_button.click()
    assert panel.edit_box.layout.display == "flex" and panel.editor.value == run.versions[0].content
    panel.editor.value = "An edited <b>first</b> version."
    panel.save_button.click()
    assert run.versions[0].content == "An edited <b>first</b> version." == text_of(w, 1)
    assert "edited" in panel.header.value and panel.edit_box.layout.display == "none"
    saved = load_run(run.run_id).versions[0]  # the default store (ARBORIS_STORE)
    assert (saved.content, saved.edited) == ("An edited <b>first</b> version.", True)
    assert saved.original_content == run.versions[0].original_content is not None

    out = w.diff(1, 2)
    assert "<del>" in out and "<ins>" in out and out in w.compare.output.value

    evaluation = await w.evaluate()
    assert w.compare.evaluation is evaluation and evaluation.best_choice in {1, 2, 3}
    assert f"Best: version {evaluation.best_choice}" in w.compare.output.value

    path = w.export()
    assert path == tmp_path / f"run-{run.run_id}-v2.md"
    assert run.versions[1].content in path.read_text(encoding="utf-8")

    old = run.versions[1].content
    w._panels[2].instruction.value = "make it rain"
    w._panels[2].retry_button.click()
    job = next(iter(w._jobs))
    new = await job
    assert w.run is run and run.versions[1] is new and new.content != old
    assert text_of(w, 2) == new.content and status_of(w, 2) == "done"
    assert w.selected is None  # the chosen text is gone, so is the choice
    assert judge.calls[-1].messages[-1] == {"role": "user", "content": "make it rain"}
    # The store keeps both: the original run as it was, the retry as a run linked to it.
    assert load_run(run.run_id).versions[1].content == old
    (retry_id,) = retries_of(run.run_id, 2)["run_id"]
    assert load_run(retry_id).versions[0].content == new.content


@pytest.mark.looptime
async def test_an_edit_that_cannot_be_saved_keeps_the_editor_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = make(n=1)
    run = await w.generate("p")
    generated = run.versions[0].content
    monkeypatch.setenv("ARBORIS_STORE", str(tmp_path / "another.sqlite3"))  # run not in it
    panel = w._panels[1]
    panel.edit_button.click()
    panel.editor.value = "my careful edit"
    panel.save_button.click()
    assert "cannot be saved" in panel.note.value
    assert panel.edit_box.layout.display == "flex" and panel.editor.value == "my careful edit"
    assert (run.versions[0].content, run.versions[0].edited) == (generated, False)


# -- layout and display ----------------------------------------------------------------------------
def test_layout_classes_labels_and_repr() -> None:
    w = make(n=5)
    assert "arboris-versions" in w.root._dom_classes
    assert "arboris-panels" in w.grid._dom_classes
    assert w.grid.layout.grid_template_columns == "repeat(3, minmax(0, 1fr))"
    for i, panel in w._panels.items():
        assert {"arboris-panel", f"arboris-panel-{i}"} <= set(panel.box._dom_classes)
        assert "arboris-panel-header" in panel.header._dom_classes
        assert "arboris-panel-text" in panel.body._dom_classes
        assert status_of(w, i) == "queued"
    assert (w.generate_button.description, w.stop_button.description) == ("Generate", "Stop")
    bundle = w._repr_mimebundle_()
    assert bundle["text/plain"] == "VersionsWidget(versions=5, model='simulated')"
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert list(w.frame().columns)[:2] == ["run_id", "project"] and w.frame().empty


@pytest.mark.looptime
async def test_generate_button_uses_the_controls() -> None:
    w = make(n=3)
    w.prompt.value = "From the box"
    w.count.value, w.max_parallel.value, w.parallel.value = 2, 1, False
    w.generate_button.click()
    assert w.task is not None
    run = await w.task
    assert (run.version_count, run.parallel) == (2, False)
    assert len(w._panels) == 2 and w.grid.layout.grid_template_columns.startswith("repeat(2,")
    assert run.versions[0].content.startswith("Version 1.")  # type: ignore[union-attr]
