"""The Compare tab (Diff, Evaluate, Export) and how every widget action reports errors:
real widgets on a running loop (no kernel, no browser), the simulated model, looptime's
fake clock. Actions go through the buttons a person clicks and what the widget shows."""

from __future__ import annotations

import asyncio
import html
import json
import re
from pathlib import Path

import ipywidgets as widgets
import pytest

import arboris_nb
from arboris_nb import (
    ChapterContext,
    ConfigError,
    EvaluationError,
    RetryPolicy,
    SimulatedLLM,
    StateError,
    VersionsWidget,
    WriterSettings,
    chapter_messages,
    list_runs,
    load_run,
    simulated_judge,
)
from arboris_nb.editor import EVALUATION_SYSTEM_PROMPT
from arboris_nb.judge_prompts import DEFAULT_CRITERIA
from arboris_nb.widgets.actions import explain

FAST = {"ttft_s": 0.05, "tokens_per_s": 200.0, "output_tokens": 40}
XSS = "<script>alert(1)</script> <img src=x onerror=alert(2)>"


def make(tmp_path: Path, llm: object = None, n: int = 3, **options: object) -> VersionsWidget:
    return VersionsWidget(
        llm=llm or SimulatedLLM(**FAST),  # type: ignore[arg-type]
        settings=WriterSettings(version_count=n),
        retry=RetryPolicy(attempts=1),
        export_dir=tmp_path,
        **options,  # type: ignore[arg-type]
    )


def text_of(value: str) -> str:
    """What a reader sees of some HTML: its text, unescaped."""
    return html.unescape(re.sub(r"<[^>]+>", "", value))


def shown(widget: widgets.HTML) -> str:
    """What a reader sees in an HTML widget."""
    return text_of(widget.value)


def panel_note(w: VersionsWidget, index: int | tuple[int, int]) -> str:
    """What the note under panel ``index``'s buttons says."""
    return text_of(w.panel(index).note)


# -- Export (issue #11 item 2) -------------------------------------------------------------
@pytest.mark.looptime
async def test_export_saves_the_selected_version_under_its_own_name(tmp_path: Path) -> None:
    w = make(tmp_path)
    run = await w.generate("Write chapter 5", chapter=5)
    w.select(3)
    w.select(2)
    assert w.compare.export_path.value == "chapter-5-v2.md"
    w.compare.export_button.click()
    path = tmp_path / "chapter-5-v2.md"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Chapter 5 — Version 2\n") and run.versions[1].content in text
    assert f"run {run.run_id}, version 2 -->" in text
    assert not (tmp_path / "chapter-5-v3.md").exists()  # nothing under the old name
    assert shown(w.compare.note) == f"Exported version 2 to {path}"
    assert w.message.value == ""


@pytest.mark.looptime
async def test_a_typed_name_stays_and_a_bare_name_goes_to_export_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    export_dir = tmp_path / "exports"
    w = make(export_dir)
    run = await w.generate("Write chapter 5", chapter=5)
    w.select(1)
    w.compare.export_path.value = "final.md"  # typed by the user
    w.select(3)
    assert w.compare.export_path.value == "final.md"
    w.compare.export_button.click()
    assert run.versions[2].content in (export_dir / "final.md").read_text(encoding="utf-8")
    assert shown(w.compare.note) == f"Exported version 3 to {export_dir / 'final.md'}"

    w.compare.export_path.value = "drafts/ch5.md"  # a path with a folder is used as typed
    w.compare.export_button.click()
    assert (tmp_path / "drafts" / "ch5.md").exists()
    assert shown(w.compare.note) == f"Exported version 3 to {tmp_path / 'drafts' / 'ch5.md'}"

    w.compare.export_path.value = ""  # cleared: the name follows the selection again
    w.select(1)
    assert w.compare.export_path.value == "chapter-5-v1.md"
    assert w.export(index=2) == export_dir / "chapter-5-v2.md"  # index= names its version
    assert w.export("bare.md", index=2) == export_dir / "bare.md"


@pytest.mark.looptime
async def test_export_names_runs_without_a_chapter_by_run_id(tmp_path: Path) -> None:
    w = make(tmp_path, n=2)
    run = await w.generate("p")
    w.select(2)
    assert w.export() == tmp_path / f"run-{run.run_id}-v2.md"


# -- Evaluate (issue #11 item 3) -----------------------------------------------------------
@pytest.mark.looptime
async def test_evaluate_works_offline_with_a_plain_simulated_model(tmp_path: Path) -> None:
    llm = SimulatedLLM(**FAST)  # type: ignore[arg-type]
    w = make(tmp_path, llm)
    await w.generate("Write chapter 5: the letter", chapter=5)
    w.compare.evaluate_button.click()
    assert shown(w.compare.note) == "Evaluating versions 1, 2, 3…"
    assert w.busy and w.compare.evaluate_button.disabled and w.generate_button.disabled
    assert w.compare.task is not None
    evaluation = await w.compare.task
    assert w.compare.evaluation is evaluation and evaluation.best_choice in {1, 2, 3}
    assert set(evaluation.versions) == {1, 2, 3}
    assert shown(w.compare.output).startswith(f"Best: version {evaluation.best_choice} — ")
    assert w.compare.note.value == ""
    assert not w.busy and not w.compare.evaluate_button.disabled
    request = llm.calls[-1]  # the judge answered on the user's model, offline
    assert request.messages[0]["content"] == EVALUATION_SYSTEM_PROMPT
    assert "[This chapter's goal]\nWrite chapter 5: the letter\n\n[Criteria]" in request.prompt


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("judge", "reason"),
    [
        (SimulatedLLM(reply="Version 2 is better."), "the evaluation reply is not a JSON object"),
        (SimulatedLLM(fail_versions=[1]), "the judge model gave no reply (failed: "),
    ],
    ids=["not-json", "request-fails"],
)
async def test_a_failing_evaluation_ends_its_busy_state_and_says_why_in_the_tab(
    tmp_path: Path, judge: SimulatedLLM, reason: str
) -> None:
    w = make(tmp_path, judge=judge)
    await w.generate("p")
    w.compare.evaluate_button.click()
    assert w.compare.task is not None
    with pytest.raises(EvaluationError):
        await w.compare.task
    note = shown(w.compare.note)
    assert note.startswith(f"Evaluation failed: {reason}")
    assert note.endswith(
        "Press Evaluate to ask again, or pass judge= a model that answers in JSON "
        "(arboris_nb.simulated_judge() works offline)."
    )
    assert "Evaluating" not in note + shown(w.compare.output)
    assert "EvaluationError" not in note and w.message.value == ""
    assert not w.busy and not w.compare.evaluate_button.disabled
    assert not w.generate_button.disabled and w.stop_button.disabled


@pytest.mark.looptime
async def test_stop_cancels_an_evaluation_and_ends_its_busy_state(tmp_path: Path) -> None:
    w = make(tmp_path, judge=simulated_judge(ttft_s=5.0))
    await w.generate("p")
    task = w.evaluate()
    await asyncio.sleep(1.0)
    w.stop_button.click()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert shown(w.compare.note) == "Evaluation cancelled."
    assert not w.busy and not w.compare.evaluate_button.disabled


# -- Evaluate with the book's context (issue #13 item 3) -----------------------------------
CHAPTER = chapter_messages(
    chapter=5,
    title="The Letter",
    goal="The lantern keeper finds the letter.",
    blueprint="A harbor city of bells.",
    previous_summary="The storm closed the port.",
    notes="Quiet, close third person.",
)


@pytest.mark.looptime
async def test_a_new_run_fills_the_context_from_its_prompt(tmp_path: Path) -> None:
    w = make(tmp_path)
    form = w.compare.form
    assert form.context_box.selected_index is None  # collapsed until opened
    assert form.context_box.titles == ("Context",)
    assert form.mode.value == "all" and form.chosen_criteria == list(DEFAULT_CRITERIA)
    await w.generate(CHAPTER)
    assert form.blueprint.value == "A harbor city of bells."
    assert form.summaries.value == "The storm closed the port."
    assert form.goal.value == "Chapter 5: The Letter\nThe lantern keeper finds the letter."
    assert form.notes.value == "Quiet, close third person."
    form.summaries.value = "The storm closed the port.\nThe keeper's sister left."
    await w.generate("Write chapter 6: the bell rings")  # a plain prompt: only the goal
    assert form.goal.value == "Write chapter 6: the bell rings"
    assert form.blueprint.value == "A harbor city of bells."  # typed context stays
    assert form.context.previous_summaries == (
        "The storm closed the port.",
        "The keeper's sister left.",
    )


@pytest.mark.looptime
async def test_pairwise_from_the_tab_judges_with_the_typed_context_and_criteria(
    tmp_path: Path,
) -> None:
    llm = simulated_judge(**FAST)  # type: ignore[arg-type]
    w = make(tmp_path, llm)
    await w.generate(CHAPTER)
    w.compare.form.mode.value = "pairwise"
    w.compare.form.criteria.value = "fidelity to the blueprint\n\npacing\n"
    w.compare.form.summaries.value = "The storm closed the port.\nThe bells fell silent."
    asked = len(llm.calls)
    w.compare.evaluate_button.click()
    assert shown(w.compare.note) == (
        "Evaluating versions 1, 2, 3 pairwise, both orders (6 judge requests)…"
    )
    assert w.compare.task is not None
    evaluation = await w.compare.task
    assert evaluation.mode == "pairwise" and len(llm.calls) - asked == 6
    assert evaluation.criteria == ("fidelity to the blueprint", "pacing")
    assert evaluation.context is not None
    assert evaluation.context.previous_summaries[1] == "The bells fell silent."
    user = evaluation.calls[0].messages[1]["content"]
    assert user.startswith("[World blueprint]\nA harbor city of bells.\n\n")
    assert "2. The bells fell silent.\n\n[This chapter's goal]\nChapter 5: The Letter\n" in user
    assert "[Criteria]\n- fidelity to the blueprint\n- pacing\n\n[Version A]" in user
    text = shown(w.compare.output)
    assert text.startswith(f"Best: version {evaluation.best_choice} — ")
    for place, i in enumerate(evaluation.ranking, 1):
        row = f"<td>{place}</td><td>version {i}</td><td>{evaluation.wins[i]:g} of 4</td>"
        assert row in w.compare.output.value
    agreed = sum(p.agree for p in evaluation.pairs)
    assert f"Both orders agreed on {agreed} of 3 pairs ({evaluation.agreement:.0%})." in text
    assert w.compare.note.value == "" and not w.busy


@pytest.mark.looptime
async def test_evaluate_can_be_given_context_criteria_and_mode_and_shows_them(
    tmp_path: Path,
) -> None:
    w = make(tmp_path, simulated_judge(**FAST))  # type: ignore[arg-type]
    await w.generate("p")
    context = ChapterContext(goal="The gate.", previous_summaries=["One.", "Two."])
    evaluation = await w.compare.evaluate(context=context, criteria=["prose"], mode="all")
    form = w.compare.form
    assert (form.goal.value, form.summaries.value, form.blueprint.value) == (
        "The gate.",
        "One.\nTwo.",
        "",
    )
    assert (form.criteria.value, form.mode.value) == ("prose", "all")
    assert evaluation.context == context and evaluation.criteria == ("prose",)
    with pytest.raises(ConfigError, match='mode must be "all" or "pairwise", got \'both\''):
        w.compare.evaluate(mode="both")


@pytest.mark.looptime
async def test_no_criteria_is_told_in_the_note(tmp_path: Path) -> None:
    w = make(tmp_path)
    await w.generate("p")
    w.compare.form.criteria.value = "  \n"
    w.compare.evaluate_button.click()
    assert w.compare.task is not None
    with pytest.raises(ConfigError):
        await w.compare.task
    assert shown(w.compare.note) == "Evaluation failed: criteria must name 1 to 12 criteria, got 0"
    assert not w.busy and w.compare.evaluation is None


@pytest.mark.looptime
async def test_a_pairwise_reply_of_the_wrong_shape_changes_nothing_stored(
    tmp_path: Path,
) -> None:
    w = make(tmp_path, judge=SimulatedLLM(reply='{"winner": "' + XSS + '"}'))
    run = await w.generate("p")
    before = (list_runs().to_dict("records"), load_run(run.run_id).versions)
    w.compare.form.mode.value = "pairwise"
    w.compare.evaluate_button.click()
    assert w.compare.task is not None
    with pytest.raises(EvaluationError):
        await w.compare.task
    note = shown(w.compare.note)
    assert note.startswith(
        'Evaluation failed: the pairwise reply\'s winner must be "A", "B" or "tie", got '
    )
    assert "(versions 1 and 2, 1 shown first)." in note
    assert "<script" not in w.compare.note.value and w.compare.output.value == ""
    assert (list_runs().to_dict("records"), load_run(run.run_id).versions) == before


@pytest.mark.looptime
async def test_judge_text_is_escaped_in_the_pairwise_verdict(tmp_path: Path) -> None:
    reply = json.dumps({"winner": "A", "reason": XSS})
    w = make(tmp_path, judge=SimulatedLLM(**FAST, reply=reply))  # type: ignore[arg-type]
    await w.generate("p")
    await w.compare.evaluate(mode="pairwise")
    assert "<script" not in w.compare.output.value and "<img" not in w.compare.output.value
    assert XSS in shown(w.compare.output)


# -- stale state (issue #11 item 7) --------------------------------------------------------
@pytest.mark.looptime
async def test_a_retry_keeps_the_verdict_and_an_edit_drops_what_described_it(
    tmp_path: Path,
) -> None:
    w = make(tmp_path, simulated_judge(**FAST))  # type: ignore[arg-type]
    await w.generate("p")
    await w.evaluate()
    assert "Best: version" in shown(w.compare.output)
    await w.retry(2, "shorter")  # a new, linked version: the judged texts are unchanged
    assert w.compare.evaluation is not None and "Best: version" in shown(w.compare.output)
    w.edit(3, "An edited third version.")  # an edit changes a judged text
    assert w.compare.evaluation is None and w.compare.output.value == ""
    assert shown(w.compare.note) == (
        "Version 3 changed, so what was shown here was dropped: press Evaluate for a new verdict."
    )

    w.diff(1, (2, 1))
    diff = w.compare.output.value
    assert "Version 1 → Version 2 · retry 1" in shown(w.compare.output)
    w.edit(3, "Edited again.")  # the diff shown is not about version 3: it stays
    assert w.compare.output.value == diff
    w.edit((2, 1), "An edited retry.")  # an edit of a diffed text drops the diff
    assert w.compare.output.value == ""
    assert shown(w.compare.note) == (
        "Version 2 · retry 1 changed, so what was shown here was dropped: press Diff again."
    )


@pytest.mark.looptime
async def test_a_verdict_on_text_edited_meanwhile_is_not_shown(tmp_path: Path) -> None:
    w = make(tmp_path, judge=simulated_judge(ttft_s=2.0))
    await w.generate("p")
    task = w.evaluate()
    await asyncio.sleep(1.0)  # the judge is reading the old texts
    w.edit(1, "A new first version.")
    await task
    assert w.compare.evaluation is None and w.compare.output.value == ""
    assert shown(w.compare.note) == "The versions changed meanwhile: press Evaluate again."


@pytest.mark.looptime
async def test_the_diff_choices_survive_evaluate_and_retry(tmp_path: Path) -> None:
    w = make(tmp_path, simulated_judge(**FAST))  # type: ignore[arg-type]
    await w.generate("p")
    assert (w.compare.diff_a.value, w.compare.diff_b.value) == (1, 2)  # preselected
    w.compare.diff_a.value, w.compare.diff_b.value = 3, 1
    await w.evaluate()
    assert (w.compare.diff_a.value, w.compare.diff_b.value) == (3, 1)
    await w.retry(2)
    assert (w.compare.diff_a.value, w.compare.diff_b.value) == (3, 1)
    w.compare.diff_button.click()
    assert "Version 3 → Version 1" in shown(w.compare.output)
    w.count.value = 2
    await w.generate("p")  # a new run: choices start again from its first two
    assert (w.compare.diff_a.value, w.compare.diff_b.value) == (1, 2)


@pytest.mark.looptime
async def test_a_retry_is_offered_in_a_and_b_once_done_and_the_choices_stay(
    tmp_path: Path,
) -> None:
    llm = SimulatedLLM(**FAST, fail_versions=[3])  # type: ignore[arg-type]
    w = make(tmp_path, llm)
    await w.generate("p")
    assert [label for label, _ in w.compare.diff_b.options] == ["Version 1", "Version 2"]
    w.compare.diff_a.value, w.compare.diff_b.value = 2, 1
    await w.retry(3)  # version 3 fails again: its retry is not done, nothing new to offer
    assert w.panel((3, 1)).status == "failed"
    assert [label for label, _ in w.compare.diff_a.options] == ["Version 1", "Version 2"]
    llm.fail_versions = []
    await w.retry(3)
    labels = [label for label, _ in w.compare.diff_a.options]
    assert labels == ["Version 1", "Version 2", "Version 3 · retry 2"]
    assert (w.compare.diff_a.value, w.compare.diff_b.value) == (2, 1)


# -- errors in words (issue #11 item 9, issue #12 wrong-state errors) --------------------
@pytest.mark.looptime
async def test_action_errors_say_what_to_do_where_the_action_started(tmp_path: Path) -> None:
    w = make(tmp_path, SimulatedLLM(**FAST, fail_versions=[2]))  # type: ignore[arg-type]
    w.compare.export_button.click()
    assert shown(w.compare.note) == "Nothing generated yet: press Generate first"
    await w.generate("p")

    w.compare.export_button.click()
    note = shown(w.compare.note)
    assert note == (
        "Select a version first: click Select on the panel you want to export (or pass index=)"
    )
    w.panel(2).select_button.click()  # disabled in the browser; the API path is the same
    assert panel_note(w, 2) == (
        "Version 2 is failed: only a done version can be selected; press Retry on its panel first"
    )
    assert w.message.value == "" and panel_note(w, 1) == ""

    retry = w.retry(1)
    w.panel(3).retry_button.click()
    assert panel_note(w, 3) == (
        "Wait until the run or the action in progress ends (or press Stop), then press Retry"
    )
    w.generate_button.click()
    assert shown(w.message) == "A run is already in progress: press Stop or wait for it to end"
    await retry
    assert panel_note(w, (1, 1)) == "Retry of version 1: done."

    for text in (note, panel_note(w, 2), panel_note(w, 3), shown(w.message)):
        assert not re.search(r"Error\b|action failed|Traceback", text), text


@pytest.mark.looptime
async def test_a_failing_retry_ends_its_busy_state_and_says_why_on_the_panel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = make(tmp_path)
    await w.generate("p")
    monkeypatch.setenv("ARBORIS_STORE", str(tmp_path))  # a folder: the store cannot open
    w.panel(2).retry_button.click()
    await asyncio.sleep(0.5)
    assert panel_note(w, 2).startswith(
        f"Retry failed: cannot open the run store {tmp_path} (ARBORIS_STORE)"
    )
    assert not w.busy and not w.panel(2).retry_button.disabled
    assert [p.key for p in w.panels] == [1, 2, 3]  # the retry never began: no panel for it


@pytest.mark.looptime
async def test_file_errors_are_told_in_words_not_as_a_bug(tmp_path: Path) -> None:
    w = make(tmp_path, n=2)
    await w.generate("p")
    w.select(1)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    w.compare.export_path.value = str(blocker / "ch.md")
    w.compare.export_button.click()
    assert shown(w.compare.note) == f"Export failed: File exists: {blocker}"


def test_unexpected_errors_are_named_as_bugs() -> None:
    text = explain(KeyError("panel"), "Export")
    assert text == (
        "Export failed unexpectedly (KeyError: 'panel'); this is a bug in arboris_nb — "
        "the details are in the log (logger arboris_nb.widgets)"
    )
    assert explain(ConfigError("budget_bytes must be from 64 to 1000000"), "Save") == (
        "Save failed: budget_bytes must be from 64 to 1000000"
    )


@pytest.mark.looptime
async def test_wrong_state_errors_are_state_errors_not_config_errors(tmp_path: Path) -> None:
    w = make(tmp_path, n=2)
    with pytest.raises(StateError, match="Nothing generated yet") as info:
        w.select(1)
    assert not isinstance(info.value, ConfigError) and isinstance(info.value, RuntimeError)
    await w.generate("p")
    with pytest.raises(StateError, match="Select a version first"):
        w.export()
    with pytest.raises(ConfigError, match="there is no version 7"):  # bad input stays config
        w.export(index=7)
    assert "StateError" in arboris_nb.__all__ and "StateError" in (arboris_nb.errors.__doc__ or "")
