"""Editor actions as plain functions: retry, edit, diff, evaluate, export (no widgets)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from arboris_nb import (
    ConfigError,
    EvaluationError,
    SimulatedLLM,
    StateError,
    WriterSettings,
    diff_html,
    edit_version,
    evaluate,
    export_markdown,
    generate_versions,
    parse_evaluation,
    retry_version,
    simulated_judge,
    word_diff,
)
from arboris_nb.cli import main
from arboris_nb.editor import Evaluation, evaluation_candidates, retry_messages
from arboris_nb.results import Run, Version
from arboris_nb.runs import export_run, list_runs, load_run, retries_of
from arboris_nb.store import RunStore

XSS = "<script>alert(1)</script> <img src=x onerror=alert(2)>"


def ok_run(*texts: str) -> Run:
    versions = [Version(index=i, status="ok", content=t) for i, t in enumerate(texts, 1)]
    return Run(run_id="r1", versions=versions)


def fast(**kwargs: object) -> SimulatedLLM:
    return SimulatedLLM(ttft_s=0.0, tokens_per_s=10_000.0, output_tokens=20, **kwargs)  # type: ignore[arg-type]


# -- retry ------------------------------------------------------------------------------
def test_retry_messages_append_the_instruction_as_a_user_message() -> None:
    base = [{"role": "system", "content": "s"}, {"role": "user", "content": "write"}]
    assert retry_messages(base, "  darker ending ") == [
        *base,
        {"role": "user", "content": "darker ending"},
    ]
    assert retry_messages(base, "   ") == base
    assert retry_messages("write") == [{"role": "user", "content": "write"}]


async def test_retry_of_an_ok_version_is_stored_as_a_linked_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "runs.sqlite3"
    llm = fast()
    run = await generate_versions(
        "Write", settings=WriterSettings(version_count=3), llm=llm, store=path
    )
    before = [v.content for v in run.versions]
    new = await retry_version(run, 2, "Write", instruction="more rain", llm=llm, store=path)
    # In memory the new version takes the old one's place.
    assert run.versions[1] is new and new.ok and new.index == 2
    assert new.content != before[1]
    assert [run.versions[0].content, run.versions[2].content] == [before[0], before[2]]
    request = llm.calls[-1]
    retry_id = request.run_id
    assert re.fullmatch(rf"{run.run_id}-retry-[0-9a-f]{{12}}", retry_id)
    assert request.version_index == 2
    retried_messages = [
        {"role": "user", "content": "Write"},
        {"role": "user", "content": "more rain"},
    ]
    assert request.messages == retried_messages
    # In the store both texts are kept: the original run is untouched...
    assert [v.content for v in load_run(run.run_id, store=path).versions] == before
    # ...and the retry is its own run, with its own messages, linked to what it retried.
    (row,) = retries_of(run.run_id, store=path).to_dict("records")
    assert (row["run_id"], row["parent_run_id"], row["parent_index"]) == (retry_id, run.run_id, 2)
    assert retries_of(run.run_id, 1, store=path).empty
    assert set(list_runs(store=path)["run_id"]) == {run.run_id, retry_id}
    stored = load_run(retry_id, store=path)
    assert [(v.index, v.content) for v in stored.versions] == [(2, new.content)]
    with RunStore(path) as store:
        record = store.get_run(retry_id)
    assert record is not None and record.messages == retried_messages
    assert record.status == "complete"
    assert f"retry of run {run.run_id}, version 2" in export_run(retry_id, "md", store=path)
    # The id works wherever a run id does, the CLI included.
    assert main(["runs", "--store", str(path), "show", retry_id]) == 0
    assert new.content in capsys.readouterr().out


async def test_retry_with_the_store_off_stores_nothing(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    run = await generate_versions("Write", settings=WriterSettings(2), llm=fast(), store=path)
    new = await retry_version(run, 1, "Write", llm=fast(), store=False)
    assert run.versions[0] is new and new.ok
    assert list(list_runs(store=path)["run_id"]) == [run.run_id]


async def test_retry_version_refuses_an_unknown_index() -> None:
    with pytest.raises(ConfigError, match="version 7 is not in run r1"):
        await retry_version(ok_run("a", "b"), 7, "p", llm=fast())


# -- edit -------------------------------------------------------------------------------
def test_edit_version_replaces_content_of_ok_versions_only() -> None:
    run = ok_run("old")
    assert not run.versions[0].edited
    assert edit_version(run.versions[0], "new text").content == "new text"
    assert run.versions[0].edited
    assert run.to_frame()["edited"].tolist()[0] is True
    with pytest.raises(ConfigError, match="must not be empty"):
        edit_version(run.versions[0], "  ")
    failed = Version(index=2, status="failed", error="boom")
    with pytest.raises(StateError, match="version 2 is failed: only a done version can be edited"):
        edit_version(failed, "x")


async def test_an_edit_is_saved_and_the_generated_text_kept(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    run = await generate_versions("Write", settings=WriterSettings(2), llm=fast(), store=path)
    generated = run.versions[0].content
    edit_version(run.versions[0], "Edited once.", run=run, store=path)
    edit_version(run.versions[0], "Edited <b>twice</b>.", run=run, store=path)
    assert run.versions[0].original_content == generated

    back = load_run(run.run_id, store=path).versions
    assert (back[0].content, back[0].edited) == ("Edited <b>twice</b>.", True)
    assert back[0].original_content == generated
    assert back[0] == run.versions[0]  # every field, as in memory
    assert (back[1].content, back[1].edited, back[1].original_content) == (
        run.versions[1].content,
        False,
        None,
    )

    markdown = export_run(run.run_id, "md", store=path)
    assert "## Version 1 (ok, edited)" in markdown and "Edited <b>twice</b>." in markdown
    assert "## Version 2 (ok)" in markdown
    document = json.loads(export_run(run.run_id, "json", store=path))
    first = document["versions"][0]
    assert (first["content"], first["edited"], first["original_content"]) == (
        "Edited <b>twice</b>.",
        True,
        generated,
    )
    csv_text = export_run(run.run_id, "csv", store=path)
    assert "Edited <b>twice</b>." in csv_text and generated not in csv_text
    exported = export_markdown(run.versions[0], tmp_path / "ch.md", run=run)
    assert f"<!-- arboris run {run.run_id}, version 1, edited -->" in exported.read_text()


async def test_an_edit_after_a_retry_goes_to_the_retry_run(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    run = await generate_versions("Write", settings=WriterSettings(2), llm=fast(), store=path)
    original = run.versions[1].content
    await retry_version(run, 2, "Write", instruction="again", llm=fast(), store=path)
    edit_version(run.versions[1], "Edited retry.", run=run, store=path)
    retry_id = retries_of(run.run_id, store=path)["run_id"][0]
    assert load_run(retry_id, store=path).versions[0].content == "Edited retry."
    parent = load_run(run.run_id, store=path).versions[1]
    assert (parent.content, parent.edited) == (original, False)


@pytest.mark.looptime  # the failing version's retry backoff passes on the fake clock
async def test_edits_that_cannot_be_saved_are_refused_and_change_nothing(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    run = await generate_versions(
        "Write", settings=WriterSettings(2), llm=fast(fail_versions=[2]), store=path
    )
    with pytest.raises(StateError, match="version 2 is failed"):
        edit_version(run.versions[1], "x", run=run, store=path)
    with RunStore(path) as store:
        with pytest.raises(ConfigError, match="version 2 is failed in the run store"):
            store.save_edit(run.run_id, 2, "x")
        with pytest.raises(ConfigError, match="version 3 is not stored"):
            store.save_edit(run.run_id, 3, "x")
    unsaved = await generate_versions("Write", settings=WriterSettings(1), llm=fast(), store=False)
    text = unsaved.versions[0].content
    with pytest.raises(ConfigError, match=r"not in the run store .* store=False"):
        edit_version(unsaved.versions[0], "lost?", run=unsaved, store=path)
    assert (unsaved.versions[0].content, unsaved.versions[0].edited) == (text, False)


async def test_store_false_edits_in_memory_only(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    run = await generate_versions("Write", settings=WriterSettings(1), llm=fast(), store=path)
    generated = run.versions[0].content
    edit_version(run.versions[0], "Only here.", run=run, store=False)
    assert (run.versions[0].content, run.versions[0].edited) == ("Only here.", True)
    back = load_run(run.run_id, store=path).versions[0]
    assert (back.content, back.edited) == (generated, False)


# -- diff -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("The rain fell on the old city.", "The rain fell softly on the city!"),
        ("她走进了雨中", "他走进了夜色中"),
        ("", "all new"),
        ("line one\nline two", "line one\nline 2\n"),
    ],
)
def test_word_diff_rebuilds_both_texts(a: str, b: str) -> None:
    ops = word_diff(a, b)
    assert "".join(t for op, t in ops if op != "insert") == a
    assert "".join(t for op, t in ops if op != "delete") == b


def test_word_diff_groups_a_rewritten_phrase() -> None:
    ops = word_diff("he walked slowly home", "he ran very fast home")
    assert ops == [
        ("equal", "he "),
        ("delete", "walked slowly"),
        ("insert", "ran very fast"),
        ("equal", " home"),
    ]


def test_diff_html_marks_changes_and_escapes_model_text() -> None:
    new = "safe " + XSS
    out = diff_html("safe <b>old</b> text", new)
    assert "<del>" in out and "<ins>" in out
    assert "<script" not in out and "<img" not in out and "<b>" not in out
    # Without the deletions and the markup, the reader sees exactly the new text.
    assert html.unescape(re.sub(r"<del>.*?</del>|<[^>]+>", "", out)) == new


# -- evaluate ---------------------------------------------------------------------------
ARBORIS_REPLY = """<think>compare them</think>
```json
{"best_choice": 2, "reason_for_choice": "tighter pacing",
 "evaluation": {"version1": {"pros": ["vivid"], "cons": ["slow"], "overall_review": "ok"},
                "version2": {"pros": ["tight", "clear"], "cons": []}}}
```"""


def test_parse_evaluation_reads_arboris_shape_through_fences_and_think() -> None:
    ev = parse_evaluation(ARBORIS_REPLY)
    assert ev.best_choice == 2 and ev.reason == "tighter pacing"
    assert ev.versions == {
        1: {"pros": ["vivid"], "cons": ["slow"]},
        2: {"pros": ["tight", "clear"], "cons": []},
    }


def test_parse_evaluation_accepts_plain_keys() -> None:
    ev = parse_evaluation(
        '{"best_version": "version 3", "reason": "r", "versions": {"3": {"pros": "one"}}}'
    )
    assert (ev.best_choice, ev.reason, ev.versions) == (3, "r", {3: {"pros": ["one"], "cons": []}})


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ("Version 2 is better.", "not a JSON object"),
        ('{"best_choice": 1', "not a JSON object"),
        ('{"reason": "no choice"}', "no best_choice"),
    ],
)
def test_parse_evaluation_errors_are_clear_and_keep_the_reply(reply: str, message: str) -> None:
    with pytest.raises(EvaluationError, match=message) as info:
        parse_evaluation(reply)
    assert info.value.reply == reply


async def test_evaluate_with_the_simulated_judge_picks_the_most_varied_version() -> None:
    run = ok_run("a a a a a a", "rain falls on the old stone gate", "b b c c b b")
    ev = await evaluate(run, llm=simulated_judge(ttft_s=0.0, tokens_per_s=10_000.0))
    assert ev.best_choice == 2
    assert set(ev.versions) == {1, 2, 3}
    assert ev.versions[1]["cons"] and not ev.versions[2]["cons"]


async def test_a_plain_simulated_model_evaluates_offline_as_the_simulated_judge() -> None:
    run = ok_run("a a a a a a", "rain falls on the old stone gate")
    llm = fast()  # writes prose; evaluate() judges with its simulated_judge twin
    ev = await evaluate(run, llm=llm, goal="the gate")
    assert (ev.best_choice, set(ev.versions)) == (2, {1, 2})
    assert llm.reply is None  # the caller's model is left as it was...
    (request,) = llm.calls  # ...and still records the request it was sent
    assert request.run_id == "r1-eval" and "[Version 2]" in request.prompt


@pytest.mark.looptime  # the failing judge's retry backoff passes on the fake clock
async def test_evaluate_refuses_unparseable_or_impossible_verdicts() -> None:
    run = ok_run("one text", "two text")
    with pytest.raises(EvaluationError, match="not a JSON object") as info:
        await evaluate(run, llm=fast(reply="Version 2 is better."))  # prose, not a verdict
    assert info.value.reply == "Version 2 is better."
    with pytest.raises(EvaluationError, match="version 9, which is not an ok version"):
        await evaluate(run, llm=fast(reply='{"best_choice": 9, "reason_for_choice": "x"}'))
    with pytest.raises(EvaluationError, match=r"no reply \(failed: .*simulated failure"):
        await evaluate(run, llm=fast(fail_versions=[1]))  # the judge's request fails
    with pytest.raises(StateError, match="at least 2 done versions; the run has 1"):
        await evaluate(ok_run("alone"), llm=fast())
    with pytest.raises(StateError, match="the run has 0"):
        evaluation_candidates(Run(run_id="r", versions=[Version(index=1, status="failed")]))


def test_simulated_judge_still_writes_chapters_and_refuses_reply() -> None:
    with pytest.raises(ConfigError, match="reply"):
        simulated_judge(reply="x")


def test_evaluation_html_is_escaped() -> None:
    ev = Evaluation(best_choice=1, reason=XSS, versions={1: {"pros": [XSS], "cons": [XSS]}})
    out = ev.to_html()
    assert "<script" not in out and "<img" not in out
    assert out.count("&lt;script&gt;") == 3


# -- export -----------------------------------------------------------------------------
def test_export_markdown_writes_heading_and_text(tmp_path: pytest.TempPathFactory) -> None:
    run = ok_run("First.", "Second text.\n")
    run.chapter = 3
    path = export_markdown(run.versions[1], tmp_path / "out" / "ch3.md", run=run)  # type: ignore[operator]
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Chapter 3 — Version 2\n")
    assert text.endswith("Second text.\n") and "run r1, version 2" in text


def test_export_markdown_refuses_failed_versions_and_directories(tmp_path: object) -> None:
    with pytest.raises(StateError, match="only a done version can be exported"):
        export_markdown(Version(index=1, status="failed"), "x.md")
    with pytest.raises(ConfigError, match="is a directory"):
        export_markdown(ok_run("t").versions[0], tmp_path)  # type: ignore[arg-type]
