"""The editor's desk, data layer (#13): decisions, scene notes, linked retries, reopening a
run from the store, the Markdown export of the selected text, the CLI, and store schemas.
Real SQLite files in tmp_path; versions from the offline SimulatedLLM."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from arboris_nb import (
    ConfigError,
    Decision,
    Evaluation,
    LLMConfig,
    SimulatedLLM,
    StateError,
    StoreTooNew,
    WriterSettings,
    chapter_messages,
    edit_version,
    evaluate,
    export_run,
    generate_versions,
    load_run,
    record_evaluation,
    record_notes,
    record_selection,
    resume,
    retry_version,
)
from arboris_nb._schema import SCHEMA_VERSION
from arboris_nb.cli import main
from arboris_nb.editor import retry_messages
from arboris_nb.mockserver import MockServer
from arboris_nb.mockserver._text import prompt_digest
from arboris_nb.results import Run
from arboris_nb.store import RunNotFound, RunStore


def fast(**kwargs: object) -> SimulatedLLM:
    return SimulatedLLM(ttft_s=0.0, tokens_per_s=10_000.0, output_tokens=20, **kwargs)  # type: ignore[arg-type]


async def stored_run(path: Path, n: int = 3, **kwargs: object) -> Run:
    return await generate_versions(
        "Write chapter 3", settings=WriterSettings(n), llm=fast(**kwargs), store=path
    )


def files(folder: Path, prefix: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(prefix))


def decision_rows(path: Path, run_id: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT seq, kind, idx, version_run_id, data FROM decisions WHERE run_id = ? "
            "ORDER BY seq",
            (run_id,),
        ).fetchall()
    finally:
        conn.close()
    return [tuple(r) for r in rows]


# -- decisions --------------------------------------------------------------------------
def test_a_decision_round_trips_through_json() -> None:
    decision = Decision("select", 12.5, 2, "r1-retry-abc", {})
    assert Decision.from_dict(json.loads(json.dumps(decision.to_dict()))) == decision
    with pytest.raises(ConfigError, match="decision kind must be one of select, edit"):
        Decision("choose", 1.0)  # type: ignore[arg-type]


async def test_reselecting_keeps_the_history_and_the_last_choice_counts(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    run = await stored_run(path)
    first = record_selection(run, 1, store=path)
    second = record_selection(run, 2, store=path)
    assert run.decisions == [first, second]
    assert run.selection == (run.run_id, 2) and run.selected_version is run.versions[1]
    rows = decision_rows(path, run.run_id)
    assert [(seq, kind, idx) for seq, kind, idx, _, _ in rows] == [
        (1, "select", 1),
        (2, "select", 2),
    ]
    back = load_run(run.run_id, store=path)
    assert back.decisions == [first, second] and back.selection == (run.run_id, 2)
    # A stored run's id works as well as the Run.
    record_selection(run.run_id, 3, store=path)
    assert load_run(run.run_id, store=path).selection == (run.run_id, 3)


@pytest.mark.looptime  # the failing version's retry backoff passes on the fake clock
async def test_a_version_that_is_not_ok_cannot_be_selected(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    run = await stored_run(path, 2, fail_versions=[2])
    with pytest.raises(StateError, match=r"version 2 of run .* is failed: only an ok version"):
        record_selection(run, 2, store=path)
    with pytest.raises(StateError, match="is failed"):
        record_selection(run.run_id, 2, store=path)
    with pytest.raises(ConfigError, match="there is no version 9"):
        record_selection(run, 9, store=path)
    assert run.decisions == [] and decision_rows(path, run.run_id) == []


async def test_unknown_run_ids_are_a_clear_error_and_store_nothing(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    run = await stored_run(path, 2)
    with pytest.raises(RunNotFound, match="no run 'nope' in the run store"):
        record_selection("nope", 1, store=path)
    with pytest.raises(RunNotFound, match="no run 'nope'"):
        load_run("nope", store=path)
    with pytest.raises(RunNotFound, match="no run 'nope'"):
        record_notes(run.run_id, 1, "n", version_run_id="nope", store=path)
    with pytest.raises(ConfigError, match="there is no version 1 in run nope"):
        record_notes(run, 1, "n", version_run_id="nope", store=path)
    assert decision_rows(path, run.run_id) == []


async def test_store_false_records_in_memory_only(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    run = await stored_run(path, 2)
    record_selection(run, 1, store=False)
    record_notes(run, 2, "slower", store=False)
    assert [d.kind for d in run.decisions] == ["select", "notes"]
    assert run.versions[1].notes == "slower"
    assert decision_rows(path, run.run_id) == []
    assert load_run(run.run_id, store=path).versions[1].notes is None


async def test_every_edit_stays_in_the_history(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    run = await stored_run(path, 2)
    edit_version(run.versions[0], "First edit.", run=run, store=path)
    edit_version(run.versions[0], "Second edit.", run=run, store=path)
    texts = [json.loads(str(r[4]))["text"] for r in decision_rows(path, run.run_id)]
    assert texts == ["First edit.", "Second edit."]
    assert [d.data["text"] for d in run.decisions] == texts
    back = load_run(run.run_id, store=path)
    assert back.decisions == run.decisions
    assert (back.versions[0].content, back.versions[0].edited) == ("Second edit.", True)


async def test_an_evaluation_is_recorded_and_restored(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    run = await stored_run(path)
    context = {"goal": "The heist fails.", "previous_summaries": ["One.", "Two."]}
    verdict = await evaluate(run, llm=fast(), context=context, mode="pairwise")
    record_evaluation(run, verdict, store=path)
    assert run.evaluation == verdict
    back = load_run(run.run_id, store=path).evaluation
    assert back == verdict and back is not None
    assert back.context is not None and back.context.previous_summaries == ("One.", "Two.")
    assert back.mode == "pairwise" and len(back.calls) == 6


# -- notes and linked retries -----------------------------------------------------------
def test_notes_go_into_the_writing_notes_section() -> None:
    built = chapter_messages(chapter=3, goal="The heist.", notes="Keep it short.")
    sent = retry_messages(built, "darker", "She hesitates at the door.")
    assert sent[1]["content"] == built[1]["content"] + "\nShe hesitates at the door."
    assert sent[2] == {"role": "user", "content": "darker"}
    plain = retry_messages("Write chapter 3", notes="Rain all night.")
    assert plain == [
        {"role": "user", "content": "Write chapter 3\n\n[Writing notes]\nRain all night."}
    ]


async def test_notes_are_kept_and_sent_with_a_retry_that_adds_a_linked_version(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.sqlite3"
    run = await stored_run(path)
    original = run.versions[1]
    before = [v.content for v in run.versions]
    record_notes(run, 2, "She hesitates at the door.", store=path)
    assert original.notes == "She hesitates at the door."
    llm = fast()
    new = await retry_version(run, 2, "Write chapter 3", llm=llm, store=path)
    # The original stays; the retry is a linked version.
    assert [v.content for v in run.versions] == before and run.versions[1] is original
    (retry,) = run.retries
    assert retry.versions == [new] and (retry.parent_run_id, retry.parent_index) == (
        run.run_id,
        2,
    )
    # The notes (the version's, by default) went with the request and are stored with it.
    assert "She hesitates at the door." in llm.calls[-1].messages[-1]["content"]
    with RunStore(path) as store:
        record = store.get_run(retry.run_id)
    assert record is not None
    assert "[Writing notes]\nShe hesitates at the door." in record.messages[-1]["content"]
    # Choosing the retry version: the selection names the retry run.
    record_selection(run, 2, version_run_id=retry.run_id, store=path)
    assert run.selection == (retry.run_id, 2) and run.selected_version is new
    edit_version(new, "The retry, edited.", run=run, store=path)
    assert run.decisions[-1].version_run_id == retry.run_id


@pytest.mark.looptime  # the failing version's retry backoff passes on the fake clock
async def test_notes_on_a_failed_version_survive_its_resume(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    run = await stored_run(path, 2, fail_versions=[2])
    record_notes(run, 2, "Try the rooftop.", store=path)
    merged = await resume(run.run_id, llm=fast(), store=path)
    assert merged.versions[1].ok and merged.versions[1].notes == "Try the rooftop."
    assert [d.kind for d in merged.decisions] == ["notes"]
    assert load_run(run.run_id, store=path).versions[1].notes == "Try the rooftop."


async def test_over_http_the_server_gets_the_notes_the_store_shows(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    messages = chapter_messages(chapter=5, goal="The sisters read the letter.", notes="Short.")
    server = MockServer(ttft_s=0.01, tokens_per_s=2000.0, output_tokens=30)
    with server as url:
        llm = LLMConfig(base_url=url, model="mock-model")
        run = await generate_versions(messages, settings=WriterSettings(2), llm=llm, store=path)
        record_notes(run, 1, "Rain on the window; the younger one reads aloud.", store=path)
        new = await retry_version(run, 1, messages, instruction="darker", llm=llm, store=path)
        log = server.stats()["log"]
    assert new.ok and [v.ok for v in run.versions] == [True, True]
    with RunStore(path) as store:
        record = store.get_run(run.run_id)
        retry = store.get_run(run.retries[0].run_id)
    assert record is not None and retry is not None
    assert "Rain on the window" not in json.dumps(record.messages)
    assert retry.messages[1]["content"].endswith(
        "Short.\nRain on the window; the younger one reads aloud."
    )
    assert retry.messages[2] == {"role": "user", "content": "darker"}
    # The request the server received is exactly the stored one (same digest).
    retried = [e for e in log if e["run"] == retry.run_id]
    assert [e["prompt_sha"] for e in retried] == [prompt_digest(retry.messages)[:12]]


async def test_load_run_restores_the_desk_after_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    run = await stored_run(path)
    record_notes(run, 1, "Open on the roof.", store=path)
    new = await retry_version(run, 1, "Write chapter 3", instruction="rain", llm=fast(), store=path)
    retry_id = run.retries[0].run_id
    record_notes(run, 1, "Retry notes.", version_run_id=retry_id, store=path)
    record_selection(run, 1, version_run_id=retry_id, store=path)
    edit_version(new, "Chosen and edited.", run=run, store=path)
    verdict = Evaluation(best_choice=1, reason="tight", ranking=(1, 3, 2))
    record_evaluation(run, verdict, store=path)
    shutil.copy(path, tmp_path / "copy.sqlite3")  # as another machine would open it

    back = load_run(run.run_id, store=tmp_path / "copy.sqlite3")
    assert back.decisions == run.decisions
    assert [d.kind for d in back.decisions] == ["notes", "notes", "select", "edit", "evaluate"]
    assert back.versions[0].notes == "Open on the roof."
    assert back.versions[0].content == run.versions[0].content
    assert [r.run_id for r in back.retries] == [retry_id]
    chosen = back.selected_version
    assert chosen is not None and chosen.content == "Chosen and edited." and chosen.edited
    assert chosen.notes == "Retry notes."
    assert back.evaluation == verdict
    assert Run.from_dict(json.loads(json.dumps(back.to_dict()))) == back


# -- export -----------------------------------------------------------------------------
async def test_markdown_export_holds_the_selected_edited_text(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    run = await stored_run(path)
    texts = [v.content or "" for v in run.versions]
    nothing = export_run(run.run_id, "md", store=path)
    assert "No version selected" in nothing and all(t in nothing for t in texts)

    edit_version(run.versions[2], "The editor's final text.", run=run, store=path)
    record_selection(run, 3, store=path)
    chosen = export_run(run.run_id, "md", store=path)
    assert "Selected: version 3, edited." in chosen
    assert "The editor's final text." in chosen
    assert texts[0] not in chosen and texts[1] not in chosen and texts[2] not in chosen
    everything = export_run(run.run_id, "md", all_versions=True, store=path)
    assert texts[0] in everything and "The editor's final text." in everything
    document = json.loads(export_run(run.run_id, "json", store=path))
    assert document["selection"] == {"run_id": run.run_id, "index": 3, "edited": True}
    assert [d["kind"] for d in document["decisions"]] == ["edit", "select"]
    assert document["retries"] == []


async def test_csv_export_has_notes_and_each_retry_after_its_version(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    run = await stored_run(path)
    record_notes(run, 2, "She hesitates, then knocks.", store=path)
    await retry_version(run, 2, "Write chapter 3", llm=fast(), store=path)
    await retry_version(run, 1, "Write chapter 3", llm=fast(), store=path)
    edit_version(run.retries[0].versions[0], "Edited retry.", run=run, store=path)
    rows = list(csv.DictReader(io.StringIO(export_run(run.run_id, "csv", store=path))))
    order = [(r["run_id"], r["version"], r["retry_of"]) for r in rows]
    first, second = (r.run_id for r in run.retries)
    assert order == [
        (run.run_id, "1", ""),
        (second, "1", "1"),
        (run.run_id, "2", ""),
        (first, "2", "2"),
        (run.run_id, "3", ""),
    ]
    assert [r["notes"] for r in rows] == ["", "", "She hesitates, then knocks.", "", ""]
    assert rows[3]["content"] == "Edited retry." and rows[3]["edited"] == "True"
    assert rows[2]["content"] == run.versions[1].content


def table_counts(path: Path, run_ids: list[str]) -> dict[str, int]:
    conn = sqlite3.connect(path)
    marks = ", ".join("?" * len(run_ids))
    try:
        return {
            table: conn.execute(
                f"SELECT COUNT(*) FROM {table} WHERE run_id IN ({marks})", run_ids
            ).fetchone()[0]
            for table in ("runs", "versions", "decisions")
        }
    finally:
        conn.close()


async def test_deleting_a_run_takes_its_retries_and_decisions_along(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    run, other = await stored_run(path), await stored_run(path)
    await retry_version(run, 2, "Write chapter 3", llm=fast(), store=path)
    await retry_version(run, 1, "Write chapter 3", llm=fast(), store=path)
    await retry_version(other, 1, "Write chapter 3", llm=fast(), store=path)
    record_selection(run, 2, version_run_id=run.retries[0].run_id, store=path)
    edit_version(run.retries[1].versions[0], "Mine.", run=run, store=path)
    mine = [run.run_id, *(r.run_id for r in run.retries)]
    assert table_counts(path, mine) == {"runs": 3, "versions": 5, "decisions": 2}
    theirs = table_counts(path, [other.run_id, other.retries[0].run_id])

    with RunStore(path) as store:
        assert store.delete_run(run.run_id) == 3  # the run and its two retry runs
        assert store.delete_run(run.run_id) == 0  # gone: nothing more to delete
        assert store.retries_of(run.run_id) == []
    assert table_counts(path, mine) == {"runs": 0, "versions": 0, "decisions": 0}
    assert table_counts(path, [other.run_id, other.retries[0].run_id]) == theirs
    assert load_run(other.run_id, store=path).retries[0].run_id == other.retries[0].run_id


async def test_the_cli_shows_the_desk_and_exports_the_choice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "runs.sqlite3"
    run = await stored_run(path)
    await retry_version(run, 2, "Write chapter 3", llm=fast(), store=path)
    retry_id = run.retries[0].run_id
    record_selection(run, 2, version_run_id=retry_id, store=path)
    edit_version(run.retries[0].versions[0], "Edited retry text.", run=run, store=path)
    verdict = await evaluate(run, llm=fast(), mode="pairwise")
    record_evaluation(run, verdict, store=path)

    assert main(["runs", "--store", str(path), "show", run.run_id]) == 0
    out = capsys.readouterr().out
    assert f"selection: version 2 of retry run {retry_id}, edited" in out
    assert set(verdict.wins) == {1, 2, (2, 1), 3}  # the retry is judged too
    best = "version 2 · retry 1" if verdict.best_choice == (2, 1) else "version "
    assert f"evaluation: best {best}" in out and " · mode pairwise · wins v1 " in out
    assert "v2r1 " in out and "agreement " in out
    assert f"retries: 1\n  {retry_id}: retry of version 2: ok (edited)" in out
    retry_block = f"--- version 2 · retry 1, run {retry_id} (ok, 1 attempt(s), edited) ---"
    # the retry is printed right after the version it retries
    assert out.index("--- version 2 (") < out.index(retry_block) < out.index("--- version 3 (")

    assert main(["runs", "--store", str(path), "export", run.run_id, "--format", "md"]) == 0
    chosen = capsys.readouterr().out
    assert f"Selected: version 2 (retry run {retry_id}), edited." in chosen
    assert "Edited retry text." in chosen and (run.versions[0].content or "") not in chosen
    argv = ["runs", "--store", str(path), "export", run.run_id, "--format", "md", "--all"]
    assert main(argv) == 0
    assert (run.versions[0].content or "") in capsys.readouterr().out

    assert main(["runs", "--store", str(path), "show", "nope"]) == 2
    assert "no run 'nope' in the run store" in capsys.readouterr().err


# -- store schemas ----------------------------------------------------------------------
async def test_a_store_from_a_newer_schema_is_refused_and_left_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "runs.sqlite3"
    run = await stored_run(path, 2)
    newer = tmp_path / "newer.sqlite3"
    shutil.copy(path, newer)
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    before = newer.read_bytes()
    with pytest.raises(StoreTooNew, match=rf"schema version 99, newer than {SCHEMA_VERSION}, .*"
                       "upgrade arboris_nb") as caught:  # fmt: skip
        RunStore(newer)
    assert (caught.value.found, caught.value.supported) == (99, SCHEMA_VERSION)
    assert str(newer) in str(caught.value)
    with pytest.raises(StoreTooNew):
        record_selection(run.run_id, 1, store=newer)
    assert main(["runs", "--store", str(newer), "show", run.run_id]) == 2
    assert "upgrade arboris_nb" in capsys.readouterr().err
    assert newer.read_bytes() == before
    assert files(tmp_path, "newer") == ["newer.sqlite3"]  # no -wal, no -shm


FIXTURES = Path(__file__).parent / "fixtures"


def test_a_schema_4_store_is_migrated_and_takes_decisions(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    old = sqlite3.connect(path)  # the file arboris_nb 56005e5 wrote (see the fixture's head)
    old.executescript((FIXTURES / "store_v4.sql").read_text(encoding="utf-8"))
    old.close()
    with RunStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        run = load_run("oldrun", store=store)
        assert [v.status for v in run.versions] == ["ok", "ok", "failed"]
        assert (run.versions[0].content, run.versions[0].edited) == ("An edited text.", True)
        assert run.decisions == [] and [v.notes for v in run.versions] == [None] * 3
        # The retry stored before linked versions existed is one now.
        (retry,) = run.retries
        assert (retry.run_id, retry.parent_index) == ("oldrun-retry-31cadd516355", 2)
        assert retry.versions[0].ok and retry.versions[0].content != run.versions[1].content
        record_notes("oldrun", 3, "Keep the storm.", store=store)
        record_selection("oldrun", 2, version_run_id=retry.run_id, store=store)
        again = load_run("oldrun", store=store)
    assert again.versions[2].notes == "Keep the storm."
    assert again.selected_version == retry.versions[0]
