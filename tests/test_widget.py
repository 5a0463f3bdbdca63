"""VersionsWidget in plain pytest: real widgets (no kernel, no browser) on a running loop,
driven by the simulated model; timings on looptime's fake clock.

Assertions go through what the widget shows and exposes: ``w.panels`` / ``w.panel(i)``
(status word, stats, badges, note, the text the browser was sent), the progress line, the
buttons, and the messages that leave for the browser (captured at ``Widget._send``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from arboris_nb.errors import ConnectionFailed, ServerError
from arboris_nb.runs import load_run, retries_of
from arboris_nb.widgets import DeltaStream

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


def statuses(w: VersionsWidget) -> list[str]:
    return [p.status for p in w.panels]


@dataclass
class Wire:
    """Every message the widgets send to the browser, as (widget, JSON bytes, content)."""

    sent: list[tuple[ipywidgets.Widget, int, dict[str, Any]]] = field(default_factory=list)

    def deltas(self, w: VersionsWidget) -> list[dict[str, Any]]:
        """The contents of the delta messages of ``w``'s stream."""
        channel = w.board.stream.channel
        return [m["content"] for x, _, m in self.sent if x is channel and m["method"] == "custom"]

    def bytes_of(self, widget: ipywidgets.Widget | None = None) -> int:
        return sum(n for x, n, _ in self.sent if widget is None or x is widget)

    def count(self, widget: ipywidgets.Widget | None = None) -> int:
        return sum(1 for x, _, _ in self.sent if widget is None or x is widget)


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Wire:
    captured = Wire()
    original = ipywidgets.Widget._send

    def send(self: ipywidgets.Widget, msg: dict[str, Any], buffers: Any = None) -> None:
        size = len(json.dumps(msg, ensure_ascii=False).encode())  # as Jupyter encodes it
        captured.sent.append((self, size, msg))
        original(self, msg, buffers)

    monkeypatch.setattr(ipywidgets.Widget, "_send", send)
    return captured


def replay(messages: list[dict[str, Any]], index: int) -> str:
    """What panel.js shows for panel ``index`` after these delta messages (same rules)."""
    gen, text = -1, ""
    for message in messages:
        delta = message["p"].get(str(index))
        if delta is None:
            continue
        g, offset, piece, _tokens = delta
        if g > gen:
            gen, text = g, ""
        units = len(text.encode("utf-16-le")) // 2
        assert g == gen and offset == units, "a delta that does not continue the text"
        text += piece
    return text


# -- before, during and after a run ----------------------------------------------------
def test_before_the_first_run_panels_are_idle_not_queued() -> None:
    w = make(n=3)
    assert statuses(w) == ["idle"] * 3
    assert all(p.text == "" for p in w.panels)
    assert "Press Generate" in w.panel(1).view.placeholder
    assert w.progress.text == "3 versions · ready"
    assert all(p.select_button.disabled and p.retry_button.disabled for p in w.panels)


@pytest.mark.looptime
async def test_generate_returns_a_task_and_panels_end_with_the_versions() -> None:
    w = make()
    task = w.generate("Write chapter 3")
    assert isinstance(task, asyncio.Task) and not task.done()
    assert w.generate_button.disabled and not w.stop_button.disabled
    assert statuses(w) == ["queued"] * 3
    run = await task
    assert w.run is run and [v.status for v in run.versions] == ["ok"] * 3
    for v in run.versions:
        assert w.panel(v.index).text == v.content
        assert w.panel(v.index).view.text == v.content  # synced state: a saved notebook has it
    assert statuses(w) == ["done"] * 3
    # The line ends with the run's bill: tokens in and out (no price known: no cost).
    bill = f"{run.input_tokens} in · {run.output_tokens} out tok"
    assert w.progress.text == f"3 ok of 3 · {run.elapsed_s:.1f} s · {bill}"
    assert w.progress.outcome == "ok"
    assert not w.generate_button.disabled and w.stop_button.disabled
    stats = w.panel(1).stats
    assert "s TTFT" in stats and f"{run.versions[0].output_tokens} tok" in stats
    assert "tok/s" in stats
    assert list(w.frame()["status"]) == ["ok"] * 3


@pytest.mark.looptime
async def test_status_words_while_running_and_queued() -> None:
    w = make(n=3, c=1)
    task = w.generate("p")
    await asyncio.sleep(0.1)  # version 1 streams, 2 and 3 wait for the single slot
    assert statuses(w) == ["running", "queued", "queued"]
    assert w.panel(1).text == "Version " and w.panel(2).text == ""  # the rest is batched
    assert w.progress.summary == "1 running · 2 queued of 3" and w.progress.live
    await task
    assert statuses(w) == ["done"] * 3


@pytest.mark.looptime
async def test_first_token_is_shown_at_once() -> None:
    w = make(n=1, ttft_s=0.5, tokens_per_s=1.0)
    task = w.generate("p")
    await asyncio.sleep(0.5001)  # just after the first token, long before the next
    assert w.panel(1).text == "Version "
    assert "0.50 s TTFT" in w.panel(1).stats
    w.stop()
    await task


@pytest.mark.looptime
async def test_failed_panel_shows_the_error_and_cannot_be_selected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = make(fail_versions={2})
    await w.generate("p")
    assert statuses(w) == ["done", "failed", "done"]
    assert w.panel(2).text == "Generation failed: simulated failure of version 2"
    assert w.panel(2).select_button.disabled and not w.panel(1).select_button.disabled
    with pytest.raises(StateError, match="Version 2 is failed: only a done version can be"):
        w.select(2)
    w.panel(2).select_button.click()  # the button path reports on the panel instead
    assert w.selected is None and "only a done version" in w.panel(2).note
    assert w.message.value == ""
    assert w.progress.summary == "2 ok · 1 failed of 3" and w.progress.outcome == "mixed"
    monkeypatch.setenv("ARBORIS_LANG", "zh")
    await w.generate("p")
    assert w.panel(2).text == "生成失败: simulated failure of version 2"


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
    panel = w.panel(1)
    task = w.generate("p")
    await asyncio.sleep(0.15)
    assert (panel.status, panel.text) == ("running", "partial ")
    await asyncio.sleep(0.3)  # attempt 1 failed at 0.2 s; backing off for 1 s
    assert (panel.status, panel.text) == ("retrying", "")
    assert "Attempt 1 failed" in panel.view.placeholder
    await asyncio.sleep(0.9)  # attempt 2 started at 1.2 s; its first word came at 1.3 s
    assert (panel.status, panel.text) == ("retrying", "final ")
    assert "attempt 2" in panel.stats
    run = await task
    assert run.versions[0].content == "final text" == panel.text
    assert panel.status == "done"


# -- stop ------------------------------------------------------------------------------------
@pytest.mark.looptime
async def test_stop_cancels_in_flight_versions_and_counts_outcomes_apart() -> None:
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
    # Not "3/3 done" with a full bar: the outcomes are counted apart, the bar says stopped.
    assert w.progress.summary == "1 ok · 2 cancelled of 3"
    assert (w.progress.counts["ok"], w.progress.counts["cancelled"]) == (1, 2)
    assert w.progress.outcome == "stopped" and not w.progress.live
    assert w.panel(1).text == run.versions[0].content
    # What version 2 had written stays in its panel, marked partial; version 3 had none.
    partial = run.versions[1].partial
    assert partial and w.panel(2).text == partial and "partial" in w.panel(2).badges
    assert w.panel(3).text == "" and "Stopped" in w.panel(3).view.placeholder
    assert "Stopped with the run" in w.panel(2).note
    assert w.stop_button.disabled and not w.generate_button.disabled
    assert w.select(1) is run.versions[0]


@pytest.mark.looptime
async def test_cancelling_the_task_cancels_the_run_too() -> None:
    for wait in (0.0, 0.1):  # before the task first ran, and while the versions stream
        w = make(n=3)
        task = w.generate("p")
        run = w.run
        assert run is not None and [v.status for v in run.versions] == ["queued"] * 3
        if wait:  # (no await at all for 0: the task has not taken its first step)
            await asyncio.sleep(wait)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.5)  # time enough to finish, had the run gone on
        assert [v.status for v in run.versions] == ["cancelled"] * 3, wait
        assert statuses(w) == ["cancelled"] * 3 and not w.busy
        # A panel shows only what its version had written when it stopped (its partial).
        assert [p.text for p in w.panels] == [v.partial or "" for v in run.versions]


# -- safety and errors -------------------------------------------------------------------------
def _walk(widget: ipywidgets.Widget) -> Iterator[ipywidgets.Widget]:
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _walk(child)


def _html_values(widget: ipywidgets.Widget) -> Iterator[str]:
    return (x.value for x in _walk(widget) if isinstance(x, ipywidgets.HTML))


@pytest.mark.looptime
async def test_model_output_is_never_html() -> None:
    reply = json.dumps({"title": "<img src=x onerror=alert(3)>", "full_content": XSS})
    w = make(n=2, reply=reply)
    run = await w.generate("p")
    assert run.versions[0].content == XSS
    # The panels hold it as text (the browser writes it with text nodes, never innerHTML)…
    assert w.panel(1).text == XSS and w.panel(1).title == "Version 1 · <img src=x onerror=alert(3)>"
    w.diff(1, 2)
    w.tabs.selected_index = 2
    # …and every HTML widget of the whole view has it escaped.
    values = list(_html_values(w.root))
    assert any("&lt;script&gt;" in v for v in values)
    assert not any("<script" in v or "<img" in v for v in values)


@pytest.mark.looptime
async def test_a_run_the_engine_refuses_is_refused_at_once_and_keeps_what_is_shown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = VersionsWidget(llm=LLMConfig(), settings=WriterSettings(version_count=2))
    with pytest.raises(ConfigError, match="no API configured"):
        w.generate("p")
    assert w.task is None and w.run is None and statuses(w) == ["idle"] * 2  # nothing ran
    w.llm = SimulatedLLM(ttft_s=0.05, tokens_per_s=200.0, output_tokens=40)
    run = await w.generate("p")
    w.llm = LLMConfig()
    with caplog.at_level(logging.ERROR, logger="arboris_nb"):
        w.generate_button.click()  # the button path shows it on the status line
    assert "Generate failed: no API configured" in w.message.value
    assert any("generate failed" in r.getMessage() for r in caplog.records)
    assert w.run is run and statuses(w) == ["done"] * 2  # the last run's texts stay
    assert not w.busy and not w.generate_button.disabled


class Unreachable:
    """A backend whose connection cannot be opened (the real interface)."""

    model = "unreachable"

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Unreachable]:
        await asyncio.sleep(0.01)
        raise ConnectionFailed("cannot connect to 127.0.0.1:9")
        yield self  # pragma: no cover - an async generator that never yields

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamItem]:
        raise AssertionError("never asked: the connection did not open")
        yield ""  # pragma: no cover


@pytest.mark.looptime
async def test_errors_in_the_background_task_are_shown_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = VersionsWidget(llm=Unreachable(), settings=WriterSettings(version_count=2))
    with caplog.at_level(logging.ERROR, logger="arboris_nb"):
        task = w.generate("p")
        with pytest.raises(ConnectionFailed, match="cannot connect"):
            await task
    assert "Generation failed: cannot connect to 127.0.0.1:9" in w.message.value
    assert any("generation failed" in r.getMessage() for r in caplog.records)
    assert not w.busy and not w.generate_button.disabled
    assert statuses(w) == ["idle"] * 2  # nothing ran
    assert w.progress.text == "2 versions · ready"


def test_generate_without_a_running_loop_points_to_the_sync_api() -> None:
    w = make()
    with pytest.raises(RuntimeError, match="generate_versions_sync"):
        w.generate("p")


@pytest.mark.looptime
async def test_a_second_generate_while_running_is_refused() -> None:
    w = make()
    task = w.generate("p")
    with pytest.raises(StateError, match="already in progress"):
        w.generate("p")
    await task


def test_bad_stream_settings_are_refused_with_their_range() -> None:
    with pytest.raises(ConfigError, match="budget_bytes must be from 64 to 1000000, got 8"):
        DeltaStream(budget_bytes=8)
    with pytest.raises(ConfigError, match="min_interval_s <= max_interval_s"):
        DeltaStream(min_interval_s=2.0, max_interval_s=1.0)
    with pytest.raises(ConfigError, match="there is no panel 4"):
        make(n=3).panel(4)


# -- streaming cost: deltas, batched ---------------------------------------------------------
@pytest.mark.looptime
async def test_deltas_rebuild_exactly_the_text_and_the_final_text_is_synced(
    wire: Wire,
) -> None:
    w = make(n=3, output_tokens=300)
    run = await w.generate("p")
    deltas = wire.deltas(w)
    for v in run.versions:
        streamed = replay(deltas, v.index)  # the tail comes with the final text
        assert v.content.startswith(streamed) and len(streamed) > 0.5 * len(v.content)
    # Each first token goes alone, at once; after that one message carries every panel's.
    assert [len(d["p"]) for d in deltas[:3]] == [1, 1, 1]
    assert len(deltas) > 3 and max(len(d["p"]) for d in deltas[3:]) == 3


@pytest.mark.looptime
async def test_cost_per_character_does_not_grow_with_the_chapter(wire: Wire) -> None:
    """What a whole run sends (deltas, state changes, final texts) per character streamed."""
    costs, rates = [], []
    for tokens in (400, 1600):
        w = make(n=3, output_tokens=tokens, tokens_per_s=60.0)
        wire.sent.clear()
        loop = asyncio.get_running_loop()
        start = loop.time()
        run = await w.generate("p")
        chars = sum(len(v.content or "") for v in run.versions)
        costs.append(wire.bytes_of() / chars)
        rates.append(wire.count() / (loop.time() - start))
    # Final text once + deltas once ≈ 2 bytes a character (+ messages); no O(length) term.
    assert costs[1] < 3.0 and costs[1] <= costs[0] * 1.05, costs
    assert max(rates) < 20, rates  # messages a second, for 3 panels streaming 60 tokens/s


@pytest.mark.looptime
async def test_batching_by_budget_and_by_interval(wire: Wire) -> None:
    # Slow: 5 tokens/s, far below the budget: a message at most every max_interval_s.
    w = make(n=1, output_tokens=30, tokens_per_s=5.0)
    await w.generate("p")
    deltas = wire.deltas(w)
    assert len(deltas) <= 2 + 30 / 5 / w.board.stream.max_interval_s  # first token + ~1/s
    assert all(len(d["p"]["1"][2]) > 10 for d in deltas[1:-1])  # several tokens a message
    # Fast: 2000 tokens/s: the byte budget decides, not the token rate.
    wire.sent.clear()
    w = make(n=3, output_tokens=2000, tokens_per_s=2000.0)
    run = await w.generate("p")
    deltas = wire.deltas(w)
    chars = sum(len(v.content or "") for v in run.versions)
    budget = w.board.stream.budget_bytes
    assert len(deltas) <= chars / budget + 5
    batched = deltas[3:-1]  # after the three first tokens (each sent at once)
    assert all(sum(len(x[2]) for x in d["p"].values()) >= budget for d in batched)


@pytest.mark.looptime
async def test_headers_and_progress_change_only_on_state_transitions(wire: Wire) -> None:
    w = make(n=3, output_tokens=600, tokens_per_s=100.0)  # ~6 s of streaming
    wire.sent.clear()
    await w.generate("p")
    for panel in w.panels:
        # queued, started, first token (TTFT), done: no per-second header refresh
        assert wire.count(panel.view) <= 5
    assert wire.count(w.progress) <= 8
    assert wire.count(w.timeline) <= 1  # the tab is closed: drawn once, at the end


@pytest.mark.looptime
async def test_the_open_timeline_tab_redraws_once_a_second(wire: Wire) -> None:
    w = make(n=2, output_tokens=300, tokens_per_s=100.0)  # ~3 s
    w.tabs.selected_index = 1
    wire.sent.clear()
    await w.generate("p")
    assert 3 <= wire.count(w.timeline) <= 5  # ~1/s while it runs, and once at the end


@pytest.mark.looptime
async def test_a_view_that_missed_deltas_gets_the_text_so_far(wire: Wire) -> None:
    w = make(n=1, output_tokens=200, tokens_per_s=100.0)
    task = w.generate("p")
    await asyncio.sleep(1.5)
    panel = w.panel(1)
    wire.sent.clear()
    panel.view._handle_custom_msg({"sync": panel.view.gen}, [])  # as panel.js sends it
    (reply,) = [m["content"] for x, _, m in wire.sent if x is panel.view]
    gen, text, tokens = reply["sync"]
    assert (gen, text) == (panel.view.gen, panel.text) and len(text) > 100 and tokens > 20
    await task


@pytest.mark.looptime
async def test_chinese_streams_whole_characters() -> None:
    w = make(n=2, lang="zh", output_tokens=100)
    run = await w.generate("第三章")
    for panel, version in zip(w.panels, run.versions, strict=True):
        assert panel.text == version.content
        assert version.content.startswith(f"版本{version.index}。")


# -- reading and editing --------------------------------------------------------------------------
def test_wide_gives_one_panel_the_full_row() -> None:
    w = make(n=3)
    panel = w.panel(2)
    panel.wide_button.value = True
    assert panel.box.layout.grid_column == "1 / -1" and panel.view.wide
    panel.wide_button.value = False
    assert panel.box.layout.grid_column is None and not panel.view.wide


@pytest.mark.looptime
async def test_select_edit_diff_evaluate_export_and_retry(tmp_path: Path) -> None:
    judge = simulated_judge(ttft_s=0.05, tokens_per_s=200.0, output_tokens=40)
    w = VersionsWidget(llm=judge, settings=WriterSettings(version_count=3), export_dir=tmp_path)
    run = await w.generate("Write chapter 3")

    with pytest.raises(StateError, match="Select a version first"):
        w.export()
    w.panel(2).select_button.click()
    assert w.selected is run.versions[1]
    assert w.panel(2).badges == ("selected",) and w.panel(2).select_button.disabled

    panel = w.panel(1)
    panel.edit_button.click()
    assert panel.edit_box.layout.display == "flex" and panel.editor.value == run.versions[0].content
    panel.editor.value = "An edited <b>first</b> version."
    panel.save_button.click()
    assert run.versions[0].content == "An edited <b>first</b> version." == panel.text
    assert panel.badges == ("edited",) and panel.edit_box.layout.display == "none"
    # Save gives a visible confirmation, in the panel and in the status line.
    assert "edit saved" in panel.note and "Saved your edit of version 1" in w.message.value
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
    w.panel(2).instruction.value = "make it rain"
    w.panel(2).retry_button.click()
    new = await w._retrying[(2, 1)]
    # The retry is a new, linked version in a panel of its own; the original stays chosen.
    assert w.run is run and run.versions[1].content == old and new.content != old
    assert w.panel((2, 1)).text == new.content and w.panel((2, 1)).status == "done"
    assert w.panel(2).text == old and w.selected is run.versions[1]
    assert w.panel(2).badges == ("selected",)
    assert judge.calls[-1].messages[-1] == {"role": "user", "content": "make it rain"}
    # The store keeps both: the original run as it was, the retry as a run linked to it.
    assert load_run(run.run_id).versions[1].content == old
    (retry_id,) = retries_of(run.run_id, 2)["run_id"]
    assert load_run(retry_id).versions[0].content == new.content


@pytest.mark.looptime
async def test_a_stopped_retry_keeps_the_original_untouched() -> None:
    w = make(n=2)
    run = await w.generate("p")
    old = run.versions[1]
    task = w.retry(2)
    await asyncio.sleep(0.1)  # the retry streams in its own panel; the original is as it was
    assert w.panel((2, 1)).status == "running"
    assert (w.panel(2).status, w.panel(2).text) == ("done", old.content)
    w.stop_button.click()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Nothing generated is lost: the run keeps the old version, and its panel shows it.
    assert run.versions[1] is old and w.panel(2).version is old
    assert (w.panel(2).status, w.panel(2).text) == ("done", old.content)
    assert w.panel(2).note == "Retry cancelled: the previous text is kept."
    assert w.panel((2, 1)).status == "cancelled"
    assert not w.busy and not w.panel(2).retry_button.disabled


@pytest.mark.looptime
async def test_an_edit_that_cannot_be_saved_keeps_the_editor_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = make(n=1)
    run = await w.generate("p")
    generated = run.versions[0].content
    monkeypatch.setenv("ARBORIS_STORE", str(tmp_path / "another.sqlite3"))  # run not in it
    panel = w.panel(1)
    panel.edit_button.click()
    panel.editor.value = "my careful edit"
    panel.save_button.click()
    # The error shows where Save was pressed, in words: no confirmation, no status line.
    assert "cannot be saved" in panel.note and "edit saved" not in panel.note
    assert w.message.value == ""
    assert panel.edit_box.layout.display == "flex" and panel.editor.value == "my careful edit"
    assert (run.versions[0].content, run.versions[0].edited) == (generated, False)


# -- layout and display ----------------------------------------------------------------------------
def test_layout_classes_labels_and_repr() -> None:
    w = make(n=5)
    assert "arboris-versions" in w.root._dom_classes
    assert "arboris-panels" in w.board.grid._dom_classes
    assert w.board.grid.layout.grid_template_columns == "repeat(3, minmax(0, 1fr))"
    for panel in w.panels:
        assert {"arboris-panel", f"arboris-panel-{panel.index}"} <= set(panel.box._dom_classes)
        assert panel.view in panel.box.children and panel.box in w.board.grid.children
        # What a person clicks and reads on a panel is inside that panel's box.
        inside = [id(x) for x in _walk(panel.box)]
        buttons = (panel.select_button, panel.retry_button, panel.edit_button, panel.save_button)
        for part in (*buttons, panel.wide_button, panel.instruction, panel.note_view):
            assert id(part) in inside
        assert "arboris-panel-note" in panel.note_view._dom_classes
    assert w.board.grid in w.root.children
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
    assert len(w.panels) == 2 and w.board.grid.layout.grid_template_columns.startswith("repeat(2,")
    assert run.versions[0].content.startswith("Version 1.")  # type: ignore[union-attr]


async def test_timeline_of_an_auto_run_shows_the_limit_trace() -> None:
    """An ``auto`` run's Timeline tab draws the limit trace from its LimitChanged events;
    a fixed limit's does not."""
    auto = VersionsWidget(
        llm=SimulatedLLM(ttft_s=0.0, tokens_per_s=2000.0),
        settings=WriterSettings(version_count=3, max_parallel_requests="auto"),
    )
    await auto.generate("Write chapter 3.")
    assert auto.run is not None and auto.run.max_parallel_requests == "auto"
    assert "arboris-limit-trace" in auto.timeline.value
    fixed = VersionsWidget(
        llm=SimulatedLLM(ttft_s=0.0, tokens_per_s=2000.0),
        settings=WriterSettings(version_count=3, max_parallel_requests=3),
    )
    await fixed.generate("Write chapter 3.")
    assert "arboris-limit-trace" not in fixed.timeline.value
