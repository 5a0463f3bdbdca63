"""The editor's desk in the widget (issue #13): linked retries, scene notes, decisions
stored as they happen, reopening a stored run, the Compare tab's metrics, and bad input.

Real widgets on a running loop (no kernel, no browser), the simulated model, real SQLite
files in tmp_path, looptime's fake clock. Everything goes through what a person does (the
buttons and fields of the panels and tabs) or the widget's public methods, and is checked
in what the widget shows and in what the store holds after it was closed and reopened.
"""

from __future__ import annotations

import html
import re
import sqlite3
from pathlib import Path

import pytest

from arboris_nb import (
    ChapterContext,
    ConfigError,
    EvaluationError,
    RetryPolicy,
    SimulatedLLM,
    StateError,
    VersionsWidget,
    WriterSettings,
    load_run,
    render_run,
    simulated_judge,
    text_metrics,
)
from arboris_nb.runs import RunNotFound

FAST = {"ttft_s": 0.05, "tokens_per_s": 200.0, "output_tokens": 40}
BLUEPRINT = "A lighthouse town; the keeper hides a letter from the sea."
SUMMARIES = ["Ch1: the storm takes the boats.", "Ch2: a stranger asks for the keeper."]


def make(store: Path, tmp_path: Path, **options: object) -> VersionsWidget:
    options.setdefault("llm", simulated_judge(**FAST))
    return VersionsWidget(
        settings=WriterSettings(version_count=3),
        retry=RetryPolicy(attempts=1),
        export_dir=tmp_path,
        store=store,
        **options,  # type: ignore[arg-type]
    )


def text_of(value: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", value)).strip()


def keys(w: VersionsWidget) -> list[object]:
    return [p.key for p in w.panels]


async def retried(w: VersionsWidget, key: object, **fields: str) -> None:
    """Press Retry on panel ``key`` (after filling its fields) and wait for the retry."""
    panel = w.panel(key)  # type: ignore[arg-type]
    for name, value in fields.items():
        getattr(panel, name).value = value
    before = set(w.board.panels)
    panel.retry_button.click()
    assert panel.note == "" or "notes saved" in panel.note, panel.note
    (new,) = set(w.board.panels) - before
    await w._retrying[new]


# -- retries are linked versions ------------------------------------------------------------
@pytest.mark.looptime
async def test_retry_adds_a_linked_panel_and_keeps_the_original(tmp_path: Path) -> None:
    store = tmp_path / "runs.sqlite3"
    w = make(store, tmp_path)
    run = await w.generate("Write chapter 3")
    w.panel(2).select_button.click()
    w.edit(2, "My own second version.")
    original = run.versions[1]

    await retried(w, 2, instruction="more rain", notes="Mara hides the letter in her coat.")
    assert keys(w) == [1, 2, (2, 1), 3]
    retry_panel = w.panel((2, 1))
    assert retry_panel.title.startswith("Version 2 · retry 1") and retry_panel.status == "done"
    assert "arboris-retry-panel" in retry_panel.box._dom_classes
    assert "arboris-panel-2-retry-1" in retry_panel.box._dom_classes
    # The original stays with its text, its edit and the selection.
    assert run.versions[1] is original and original.content == "My own second version."
    assert w.panel(2).text == "My own second version."
    assert set(w.panel(2).badges) == {"selected", "edited"}
    assert w.selected is original and w.selected_key == 2
    new = w.desk.version((2, 1))
    assert retry_panel.text == new.content and new.content != original.original_content
    # The request carried the notes and the instruction (Arboris-Novel's retry-version).
    sent = "\n".join(str(m["content"]) for m in w.llm.calls[-1].messages)  # type: ignore[union-attr]
    assert "Mara hides the letter in her coat." in sent and "more rain" in sent
    # A second retry gets the next number; the diff works across them.
    await retried(w, 2)
    assert keys(w) == [1, 2, (2, 1), (2, 2), 3]
    assert "Version 2 → Version 2 · retry 1" in text_of(_diff(w, 2, (2, 1)))


def _diff(w: VersionsWidget, a: object, b: object) -> str:
    w.diff(a, b)  # type: ignore[arg-type]
    return w.compare.output.value


@pytest.mark.looptime
async def test_select_edit_and_export_a_retry_version(tmp_path: Path) -> None:
    store = tmp_path / "runs.sqlite3"
    w = make(store, tmp_path)
    run = await w.generate("Write chapter 3")
    await retried(w, 1)
    w.panel((1, 1)).select_button.click()
    w.edit((1, 1), "The retry, edited by me.")
    assert w.panel((1, 1)).badges == ("selected", "edited")
    sub = w.desk.retries[(1, 1)]
    assert load_run(run.run_id, store=store).selection == (sub.run_id, 1)
    # The static view for readers holds the retry, marked as the selection.
    view = render_run(w)
    assert "selected: version 1 · retry 1" in text_of(view.html)
    retry_view = re.search(r'<div class="arboris-run-retry"[^>]*>(.*?)</div>', view.html)
    assert retry_view is not None and "Version 1 · retry 1" in retry_view.group(1)
    assert "✔ selected" in retry_view.group(1) and "The retry, edited by me." in retry_view.group(1)
    path = w.export()
    assert path.name == f"run-{run.run_id}-v1-retry1.md"
    assert "The retry, edited by me." in path.read_text(encoding="utf-8")
    options = [label for label, _ in w.compare.diff_a.options]
    assert options == ["Version 1", "Version 1 · retry 1", "Version 2", "Version 3"]


# -- decisions are stored as they happen ------------------------------------------------------
@pytest.mark.looptime
async def test_select_is_stored_and_reselecting_keeps_the_history(tmp_path: Path) -> None:
    store = tmp_path / "runs.sqlite3"
    w = make(store, tmp_path)
    run = await w.generate("p")
    w.panel(1).select_button.click()
    w.panel(3).select_button.click()
    stored = load_run(run.run_id, store=store)
    assert [d.index for d in stored.decisions if d.kind == "select"] == [1, 3]
    assert stored.selection == (run.run_id, 3)
    assert w.panel(3).badges == ("selected",) and w.panel(1).badges == ()


@pytest.mark.looptime
async def test_store_off_keeps_decisions_in_memory_without_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARBORIS_STORE", "off")
    w = VersionsWidget(llm=simulated_judge(**FAST), settings=WriterSettings(version_count=2))
    run = await w.generate("p")
    w.panel(2).select_button.click()
    w.panel(1).notes.value = "a scene note"
    assert "notes saved" in w.panel(1).note and w.message.value == ""
    assert w.selected is run.versions[1]
    assert [d.kind for d in run.decisions] == ["select", "notes"]
    with pytest.raises(ConfigError, match="ARBORIS_STORE=off"):
        VersionsWidget.load(run.run_id)


# -- reopen ------------------------------------------------------------------------------------
@pytest.mark.looptime
async def test_load_restores_the_desk_after_the_store_is_closed(tmp_path: Path) -> None:
    store = tmp_path / "runs.sqlite3"
    w = make(store, tmp_path)
    run = await w.generate("Write chapter 3")
    w.panel(2).select_button.click()
    w.edit(2, "Edited <b>two</b>.")
    w.panel(1).notes.value = "Rain on the glass; Mara is afraid."
    context = ChapterContext(blueprint=BLUEPRINT, previous_summaries=SUMMARIES)
    evaluation = await w.compare.evaluate(context=context)
    await retried(w, 3, notes="The stranger is her brother.")
    retry_text = w.panel((3, 1)).text
    del w  # "the kernel restarts": nothing of the widget is left

    again = VersionsWidget.load(run.run_id, store=store, llm=simulated_judge(**FAST))
    assert keys(again) == [1, 2, 3, (3, 1)]
    assert [p.status for p in again.panels] == ["done"] * 4
    two = again.panel(2)
    assert two.text == "Edited <b>two</b>." and set(two.badges) == {"selected", "edited"}
    assert again.selected_key == 2 and again.selected is not None
    assert again.panel(1).notes.value == "Rain on the glass; Mara is afraid."
    assert again.panel((3, 1)).text == retry_text
    # Notes belong to the version they were written on (and were sent with its retry).
    assert again.panel(3).notes.value == "The stranger is her brother."
    assert again.panel((3, 1)).notes.value == ""
    # The last evaluation is shown, and the form asks again the same way.
    assert again.compare.evaluation is not None
    assert again.compare.evaluation.best_choice == evaluation.best_choice
    assert f"Best: version {evaluation.best_choice}" in again.compare.output.value
    assert again.compare.form.blueprint.value == BLUEPRINT
    assert again.compare.form.summaries.value.splitlines() == SUMMARIES
    assert "arboris-run-metrics" in again.compare.metrics.value
    status = text_of(again.message.value)
    assert f"Loaded run {run.run_id}" in status and "selected: Version 2 (edited)" in status
    assert again.prompt.value == "Write chapter 3"

    # The editor goes on, against the same run: a retry links to it, select is stored.
    await retried(again, 1, notes="Another note.")
    assert keys(again) == [1, (1, 1), 2, 3, (3, 1)]
    again.panel((1, 1)).select_button.click()
    stored = load_run(run.run_id, store=store)
    assert [r.parent_index for r in stored.retries] == [3, 1]
    assert stored.selection == (again.desk.retries[(1, 1)].run_id, 1)
    assert stored.versions[0].notes == "Another note."  # what was written before is kept:
    notes = [d.data["notes"] for d in stored.decisions if d.kind == "notes" and d.index == 1]
    assert notes == ["Rain on the glass; Mara is afraid.", "Another note."]


@pytest.mark.looptime
async def test_a_new_run_on_a_reopened_desk_starts_clean(tmp_path: Path) -> None:
    store = tmp_path / "runs.sqlite3"
    w = make(store, tmp_path)
    run = await w.generate("p")
    await w.retry(1)
    w.select((1, 1))
    again = VersionsWidget.load(run.run_id, store=store, llm=simulated_judge(**FAST))
    assert repr(again) == "VersionsWidget(versions=3, retries=1, model='simulated')"
    new = await again.generate("another chapter")
    assert new.run_id != run.run_id and keys(again) == [1, 2, 3]
    assert again.selected is None and all(p.badges == () for p in again.panels)
    assert load_run(run.run_id, store=store).selection is not None  # the old run keeps it


@pytest.mark.looptime
async def test_load_of_an_unknown_id_says_so_and_changes_nothing(tmp_path: Path) -> None:
    store = tmp_path / "runs.sqlite3"
    w = make(store, tmp_path)
    await w.generate("p")
    before = store.read_bytes()
    with pytest.raises(RunNotFound, match="no run 'nope' in the run store"):
        VersionsWidget.load("nope", store=store)
    assert store.read_bytes() == before


def test_load_of_a_store_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "runs.sqlite3"
    with sqlite3.connect(store) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    before = store.read_bytes()
    with pytest.raises(ConfigError, match="99") as caught:
        VersionsWidget.load("any", store=store)
    assert "upgrade arboris_nb" in str(caught.value)
    assert store.read_bytes() == before


@pytest.mark.looptime
async def test_a_store_grown_newer_meanwhile_is_told_on_the_panel_and_nothing_changes(
    tmp_path: Path,
) -> None:
    store = tmp_path / "runs.sqlite3"
    w = make(store, tmp_path)
    run = await w.generate("p")
    with sqlite3.connect(store) as conn:  # a newer arboris_nb opened the file meanwhile
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    before = store.read_bytes()
    w.panel(2).select_button.click()
    note = text_of(w.panel(2).note)
    assert note.startswith("Select failed:") and "99" in note and "upgrade arboris_nb" in note
    assert w.selected is None and w.panel(2).badges == () and run.decisions == []
    assert store.read_bytes() == before


# -- evaluation -------------------------------------------------------------------------------
@pytest.mark.looptime
async def test_evaluation_is_stored_and_a_bad_judge_reply_stores_nothing(tmp_path: Path) -> None:
    store = tmp_path / "runs.sqlite3"
    w = make(store, tmp_path, judge=SimulatedLLM(reply="Version 2 is better.", **FAST))
    run = await w.generate("p")
    w.compare.evaluate_button.click()
    assert w.compare.task is not None
    with pytest.raises(EvaluationError):
        await w.compare.task
    assert "Evaluation failed" in text_of(w.compare.note.value)
    assert load_run(run.run_id, store=store).evaluation is None

    w.judge = simulated_judge(**FAST)
    evaluation = await w.evaluate()
    stored = load_run(run.run_id, store=store).evaluation
    assert stored is not None and stored.best_choice == evaluation.best_choice


# -- metrics -----------------------------------------------------------------------------------
@pytest.mark.looptime
async def test_compare_shows_metrics_for_chinese_text(tmp_path: Path) -> None:
    store = tmp_path / "runs.sqlite3"
    w = make(store, tmp_path, llm=simulated_judge(lang="zh", **FAST))
    run = await w.generate("写第三章")
    table = w.compare.metrics.value
    assert 'class="arboris-run-metrics"' in table
    rows = re.findall(r"<tr>(.*?)</tr>", table)[1:]
    assert len(rows) == 3
    for version, row in zip(run.versions, rows, strict=True):
        cells = [text_of(c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
        m = text_metrics(version.content or "")
        assert cells[:4] == [str(version.index), str(m["chars"]), str(m["words"]),
                             str(m["paragraphs"])]  # fmt: skip
        assert m["chars"] > 20 and m["words"] >= m["chars"] * 0.8  # a CJK character is a word
        assert cells[6] == f"{m['reading_min']:.1f} min"
    edited = "「你好，」她说。\n\n风很大。"
    w.edit(1, edited)  # the table follows the edit: 7 words (characters), 2 paragraphs
    cells = re.findall(r"<td[^>]*>(.*?)</td>", w.compare.metrics.value)
    assert cells[:4] == ["1", str(text_metrics(edited)["chars"]), "7", "2"]
    assert cells[4] == f"{text_metrics(edited)['dialogue_share']:.0%}" != "0%"


@pytest.mark.looptime
async def test_evaluate_judges_the_retries_and_a_reopened_desk_shows_them(tmp_path: Path) -> None:
    store = tmp_path / "runs.sqlite3"
    w = make(store, tmp_path)
    run = await w.generate("Write chapter 3")
    await retried(w, 1)
    task = w.compare.evaluate(mode="pairwise")
    assert "Evaluating versions 1, 1r1, 2, 3 pairwise, both orders (12 judge requests)" in text_of(
        w.compare.note.value
    )
    evaluation = await task
    assert set(evaluation.wins) == {1, (1, 1), 2, 3}
    assert "version 1 · retry 1" in text_of(w.compare.output.value)

    again = VersionsWidget.load(run.run_id, store=store, llm=simulated_judge(**FAST))
    stored = again.compare.evaluation
    assert stored is not None and stored.wins == evaluation.wins
    assert stored.best_choice == evaluation.best_choice
    assert "version 1 · retry 1" in text_of(again.compare.output.value)
    # The readers' view: the retry right after the version it retries, and so its metrics row.
    view = render_run(again).html
    assert view.index("Version 1 · retry 1") < view.index("<b>Version 2</b>")
    rows = re.findall(
        r"<tr><td[^>]*>([^<]*)</td>", view.split("arboris-run-metrics")[1].split("</table>")[0]
    )
    assert rows == ["1", "1 · retry 1", "2", "3"]


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.looptime
async def test_bad_keys_are_clear_errors(tmp_path: Path) -> None:
    w = make(tmp_path / "runs.sqlite3", tmp_path)
    await w.generate("p")
    with pytest.raises(ConfigError, match=r"there is no version 2 · retry 1 \(shown: 1, 2, 3\)"):
        w.select((2, 1))
    with pytest.raises(ConfigError, match="by its number"):
        w.select("two")  # type: ignore[arg-type]
    with pytest.raises(StateError, match="not running"):
        w.stop_version((1, 1))
