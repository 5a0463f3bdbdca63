"""Editor actions as plain functions: retry, edit, diff, export (no widgets).
Evaluate has its own tests in test_judge.py."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from arboris_nb import (
    ConfigError,
    SimulatedLLM,
    StateError,
    WriterSettings,
    diff_html,
    edit_version,
    export_markdown,
    generate_versions,
    retry_version,
    word_diff,
)
from arboris_nb.cli import main
from arboris_nb.editor import retry_messages
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
    # In memory the new version is a linked one: the original keeps its place.
    assert new.ok and new.index == 2 and new.content != before[1]
    assert [v.content for v in run.versions] == before
    assert [r.versions for r in run.retries] == [[new]]
    assert run.retries[0].parent_run_id == run.run_id and run.retries[0].parent_index == 2
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
    assert run.retries[0].versions == [new] and new.ok and run.versions[0] is not new
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
    new = await retry_version(run, 2, "Write", instruction="again", llm=fast(), store=path)
    edit_version(new, "Edited retry.", run=run, store=path)
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
