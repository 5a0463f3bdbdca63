"""The SQLite run store: what is written when, and what never is."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from arboris_nb import LLMConfig, SimulatedLLM, WriterSettings, generate_versions, start_versions
from arboris_nb.errors import ConfigError
from arboris_nb.events import Event, VersionFinished
from arboris_nb.mockserver import MockServer
from arboris_nb.results import Version
from arboris_nb.store import SCHEMA_VERSION, RunStore, open_store

SENTINEL = "sk-SENTINEL-store-0123456789wxyz"


def by_length(request: object) -> str:
    """Version i gets 10·i words, so versions finish one after another."""
    index = request.version_index  # type: ignore[attr-defined]
    return " ".join(f"w{index}" for _ in range(10 * index))


def rows(path: Path, sql: str, *params: object) -> list[sqlite3.Row]:
    """Read with a separate connection: what another process would see."""
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def bytes_of_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


class CountingStore(RunStore):
    """A RunStore that counts its write transactions."""

    commits = 0

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with super().transaction() as conn:
            yield conn
        self.commits += 1


def test_new_store_has_schema_version_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "runs.sqlite3"
    with RunStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert {"runs", "versions", "cache"} <= tables


def test_a_store_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(ConfigError, match="schema version"):
        RunStore(path)


def columns(path: Path, table: str) -> set[str]:
    return {r["name"] for r in rows(path, f"PRAGMA table_info({table})")}


def test_a_version_1_store_is_migrated_without_losing_rows(
    tmp_path: Path,
) -> None:
    from arboris_nb._schema import MIGRATIONS

    path = tmp_path / "runs.sqlite3"
    v1 = sqlite3.connect(path)  # what an arboris_nb that knew only schema 1 wrote
    v1.executescript(MIGRATIONS[0])
    v1.execute(
        "INSERT INTO runs (run_id, created_at, updated_at, mode, version_count, indices, "
        "max_parallel_requests, messages, status) "
        "VALUES ('old', 0, 0, 'parallel', 2, '[1, 2]', '3', '[]', 'partial')"
    )
    v1.executemany(
        "INSERT INTO versions (run_id, idx, status, content, error, written_at) "
        "VALUES ('old', ?, ?, ?, ?, 0)",
        [(1, "ok", "paid for", None), (2, "failed", None, "boom")],
    )
    v1.execute("PRAGMA user_version = 1")
    v1.commit()
    v1.close()
    assert rows(path, "PRAGMA user_version")[0][0] == 1
    assert "edited_content" not in columns(path, "versions")

    with RunStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        record = store.get_run("old")
        assert record is not None
        assert (record.version_count, record.ok, record.failed) == (2, 1, 1)
        assert (record.parent_run_id, record.parent_index) == (None, None)
        first, second = store.get_versions("old")
        assert (first.content, first.edited, first.original_content) == ("paid for", False, None)
        assert (second.status, second.error) == ("failed", "boom")
        store.save_edit("old", 1, "edited after the upgrade")
    assert {"parent_run_id", "parent_index"} <= columns(path, "runs")
    (row,) = rows(path, "SELECT content, edited_content FROM versions WHERE idx = 1")
    assert tuple(row) == ("paid for", "edited after the upgrade")
    with RunStore(path) as again:  # opening a migrated file again changes nothing
        assert again.schema_version == SCHEMA_VERSION
        assert again.get_versions("old")[0].content == "edited after the upgrade"


FIXTURES = Path(__file__).parent / "fixtures"


def test_a_version_2_store_written_by_the_old_code_is_migrated(tmp_path: Path) -> None:
    from arboris_nb.queue.job import BookJob
    from arboris_nb.runs import load_run, retries_of

    path = tmp_path / "runs.sqlite3"
    old = sqlite3.connect(path)  # the file arboris_nb e7cfc95 wrote (see the fixture's head)
    old.executescript((FIXTURES / "store_v2.sql").read_text(encoding="utf-8"))
    old.close()
    assert rows(path, "PRAGMA user_version")[0][0] == 2
    with RunStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        run = load_run("oldrun", store=store)
        assert [v.status for v in run.versions] == ["ok", "ok", "failed"]
        first = run.versions[0]
        assert (first.content, first.edited) == ("An edited text.", True)
        assert first.original_content and first.original_content.startswith("Version 1.")
        assert [v.key_id for v in run.versions] == ["simulated"] * 3
        assert [v.attempt_count for v in run.versions] == [1, 1, 3]
        # The key id "cache" became the field of its own.
        cached = load_run("oldcached", store=store).versions
        assert [(v.cached, v.key_id, v.attempt_count) for v in cached] == [(True, None, 0)] * 2
        assert not any(v.cached for v in run.versions)
        assert retries_of("oldrun", 2, store=store)["parent_index"].tolist() == [2]
        # The book job written before its tables were migrations reads and resumes.
        job = BookJob.load("book-old", store=store)
        assert (job.status()["ok"], job.pending_units()) == (2, [])
        (raw,) = rows(path, "SELECT cached, key_id FROM versions WHERE run_id = 'oldcached' "
                      "AND idx = 1")  # fmt: skip
        assert tuple(raw) == (1, None)


def test_a_version_4_store_reads_its_attempts_from_the_old_columns(tmp_path: Path) -> None:
    # Schema 4 kept the count in an INTEGER "attempts" and the list in "attempt_log".
    from arboris_nb._schema import MIGRATIONS

    path = tmp_path / "runs.sqlite3"
    old = sqlite3.connect(path)
    for script in MIGRATIONS[:4]:  # the DDL of schema 4 (migrations never change)
        old.executescript(script)
    old.execute(
        "INSERT INTO runs (run_id, created_at, updated_at, mode, version_count, indices, "
        "max_parallel_requests, messages, status) "
        "VALUES ('r4', 0, 0, 'parallel', 2, '[1, 2]', '3', '[]', 'complete')"
    )
    retried = [
        {"number": 1, "started_at": 0.0, "finished_at": 0.5, "error_type": "ServerError"},
        {"number": 2, "started_at": 1.0, "finished_at": 2.0},
        {"number": 2, "started_at": 1.4, "finished_at": 2.0, "hedge": True, "lost": True},
    ]
    old.executemany(
        "INSERT INTO versions (run_id, idx, status, content, attempts, attempt_log, "
        "written_at) VALUES ('r4', ?, 'ok', 'text', ?, ?, 0)",
        [(1, 2, json.dumps(retried)), (2, 0, "[]")],
    )
    old.execute("PRAGMA user_version = 4")
    old.commit()
    old.close()

    with RunStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        first, cached = store.get_versions("r4")
    assert [(a.number, a.hedge) for a in first.attempts] == [(1, False), (2, False), (2, True)]
    assert (first.attempt_count, first.retry_wait_s, first.hedged) == (2, 0.0, False)
    assert (cached.attempts, cached.attempt_count) == ([], 0)
    assert "attempt_log" not in columns(path, "versions")
    (row,) = rows(path, "SELECT attempts FROM versions WHERE idx = 1")
    assert len(json.loads(row["attempts"])) == 3


def test_a_field_without_a_column_gets_one_when_the_store_opens(tmp_path: Path) -> None:
    # A file from before a Version field existed: here, "cached" dropped again.
    path = tmp_path / "runs.sqlite3"
    RunStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE versions DROP COLUMN cached")
    conn.close()
    assert "cached" not in columns(path, "versions")
    from arboris_nb.results import Run

    with RunStore(path) as store:
        store.begin_run(Run(run_id="r", versions=[Version(1)]), [])
        store.save_version("r", Version(index=1, status="ok", content="c", cached=True))
        assert store.get_versions("r")[0].cached is True
    assert "cached" in columns(path, "versions")


def test_every_version_field_is_stored_and_read_back(tmp_path: Path) -> None:
    from arboris_nb.results import Run
    from tests.test_results import full_version

    version = full_version()
    version.edited, version.original_content = False, None  # an editor's, stored apart
    with RunStore(tmp_path / "runs.sqlite3") as store:
        store.begin_run(Run(run_id="r", versions=[Version(2)]), [])
        store.save_version("r", version)
        assert store.get_versions("r") == [version]


def test_an_edit_is_one_commit_and_keeps_the_generated_text(tmp_path: Path) -> None:
    from arboris_nb.results import Run

    path = tmp_path / "runs.sqlite3"
    with CountingStore(path) as store:
        store.begin_run(Run(run_id="r1", versions=[Version(index=1)]), [])
        store.save_version("r1", Version(index=1, status="ok", content="generated"))
        before = store.commits
        store.save_edit("r1", 1, "edited")
        assert store.commits == before + 1
        (version,) = store.get_versions("r1")
    assert (version.content, version.edited, version.original_content) == (
        "edited",
        True,
        "generated",
    )
    (row,) = rows(path, "SELECT content, edited_content FROM versions")
    assert tuple(row) == ("generated", "edited")


def test_an_unwritable_store_path_names_the_setting(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="ARBORIS_STORE"):
        RunStore(blocker / "runs.sqlite3")


@pytest.mark.looptime
async def test_each_version_is_committed_before_anyone_sees_it_finish(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    seen: dict[int, list[int]] = {}

    def check(event: Event) -> None:
        if isinstance(event, VersionFinished):
            found = rows(path, "SELECT idx FROM versions WHERE status = 'ok' ORDER BY idx")
            seen[event.version.index] = [r["idx"] for r in found]

    store = CountingStore(path)
    store.commits = 0  # creating the schema was one
    run = await generate_versions(
        "chapter",
        settings=WriterSettings(3),
        llm=SimulatedLLM(reply=by_length, tokens_per_s=20.0),
        on_event=check,
        store=store,
    )
    # Version 1 is on disk (alone) when it finishes, then 2, then 3.
    assert seen == {1: [1], 2: [1, 2], 3: [1, 2, 3]}
    # One commit at start, one per version, one at the end — none per token.
    assert store.commits == 1 + 3 + 1
    assert sum(v.output_tokens for v in run.versions) == 60
    store.close()


@pytest.mark.looptime
async def test_run_row_records_the_request_and_the_outcome(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    llm = SimulatedLLM(fail_versions=[2], output_tokens=12)
    run = await generate_versions(
        [{"role": "system", "content": "You write."}, {"role": "user", "content": "Ch. 7"}],
        settings=WriterSettings(3, max_parallel_requests=2),
        llm=llm,
        project="saga",
        chapter=7,
        store=path,
    )
    (row,) = rows(path, "SELECT * FROM runs")
    assert row["run_id"] == run.run_id
    assert (row["project"], row["chapter"], row["mode"]) == ("saga", 7, "parallel")
    assert (row["version_count"], row["max_parallel_requests"]) == (3, "2")
    assert json.loads(row["indices"]) == [1, 2, 3]
    assert row["model"] == "simulated"
    assert json.loads(row["messages"])[1] == {"role": "user", "content": "Ch. 7"}
    assert row["temperature"] == 0.75
    assert row["status"] == "partial"
    assert row["elapsed_s"] == pytest.approx(run.elapsed_s)
    assert row["created_at"] == pytest.approx(run.created_at)

    failed = rows(path, "SELECT * FROM versions WHERE idx = 2")[0]
    assert failed["status"] == "failed"
    assert failed["content"] is None
    assert failed["error_type"] == "ServerError"
    log = json.loads(failed["attempts"])
    assert [a["number"] for a in log] == [1, 2, 3]
    assert all(a["error_type"] == "ServerError" for a in log)

    ok = rows(path, "SELECT * FROM versions WHERE idx = 1")[0]
    assert ok["content"] == run.versions[0].content
    assert ok["key_id"] == "simulated"
    assert len(json.loads(ok["attempts"])) == 1
    assert ok["finished_at"] == pytest.approx(run.versions[0].finished_at)


@pytest.mark.looptime
async def test_cancelled_versions_are_stored_with_the_finished_ones(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"

    def cancel_after_first(event: Event) -> None:
        if isinstance(event, VersionFinished):
            handle.cancel()

    handle = start_versions(
        "p",
        settings=WriterSettings(3),
        llm=SimulatedLLM(reply=by_length, tokens_per_s=20.0),
        on_event=cancel_after_first,
        store=path,
    )
    await handle
    statuses = {r["idx"]: r["status"] for r in rows(path, "SELECT idx, status FROM versions")}
    assert statuses == {1: "ok", 2: "cancelled", 3: "cancelled"}
    assert rows(path, "SELECT status FROM runs")[0]["status"] == "partial"


async def test_default_store_follows_arboris_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "env" / "runs.sqlite3"
    monkeypatch.setenv("ARBORIS_STORE", str(path))
    run = await generate_versions("p", settings=WriterSettings(1), llm=SimulatedLLM(ttft_s=0))
    assert [r["run_id"] for r in rows(path, "SELECT run_id FROM runs")] == [run.run_id]


@pytest.mark.parametrize("off", ["off", "none", "OFF"])
async def test_arboris_store_off_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, off: str
) -> None:
    monkeypatch.setenv("ARBORIS_STORE", off)
    monkeypatch.chdir(tmp_path)
    assert open_store() == (None, False)
    await generate_versions("p", settings=WriterSettings(1), llm=SimulatedLLM(ttft_s=0))
    assert names(tmp_path) == []


async def test_store_false_writes_nothing() -> None:
    default = Path(os.environ["ARBORIS_STORE"])  # the autouse fixture's fresh path
    await generate_versions(
        "p", settings=WriterSettings(1), llm=SimulatedLLM(ttft_s=0), store=False
    )
    assert names(default.parent) == []


def test_a_bad_store_argument_is_refused() -> None:
    with pytest.raises(ConfigError, match="store must be"):
        open_store(42)  # type: ignore[arg-type]


def test_an_ok_version_is_never_overwritten(tmp_path: Path) -> None:
    from arboris_nb.results import Run

    with RunStore(tmp_path / "runs.sqlite3") as store:
        run = Run(run_id="r1", versions=[Version(index=1)])
        store.begin_run(run, [{"role": "user", "content": "p"}])
        first = Version(index=1, status="ok", content="paid for", finished_at=1.0)
        assert store.save_version("r1", first)
        again = Version(index=1, status="failed", error="late duplicate", finished_at=2.0)
        assert not store.save_version("r1", again)
        (kept,) = store.get_versions("r1")
    assert (kept.status, kept.content, kept.error) == ("ok", "paid for", None)


async def test_the_api_key_never_reaches_the_store(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    # Request 2 is refused with 401, so an error message is stored too.
    mock = MockServer(
        ttft_s=0.01, tokens_per_s=500.0, output_tokens=8, require_key=SENTINEL,
        fail_requests={2: 401},
    )  # fmt: skip
    with mock as base_url:
        run = await generate_versions(
            "p",
            settings=WriterSettings(3, max_parallel_requests=1),
            llm=LLMConfig(api_key=SENTINEL, base_url=base_url, model="mock-model"),
            store=path,
        )
    assert sorted(v.status for v in run.versions) == ["failed", "ok", "ok"]
    stored_key_ids = {r["key_id"] for r in rows(path, "SELECT key_id FROM versions")}
    assert stored_key_ids == {LLMConfig(api_key=SENTINEL).key_id}
    files = bytes_of_files(tmp_path)  # the database, its WAL and shared-memory files
    assert "runs.sqlite3" in files
    for name, data in files.items():
        assert SENTINEL.encode() not in data, name
        assert SENTINEL[-12:].encode() not in data, name


def test_several_processes_write_one_store(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    script = textwrap.dedent(
        """
        import asyncio, sys
        from arboris_nb import SimulatedLLM, WriterSettings, generate_versions
        asyncio.run(generate_versions(
            "p", settings=WriterSettings(4), llm=SimulatedLLM(ttft_s=0.01, output_tokens=30),
            project=sys.argv[1], store=sys.argv[2]))
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, f"proc{i}", str(path)]) for i in range(4)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    runs = rows(path, "SELECT project, status FROM runs ORDER BY project")
    assert [(r["project"], r["status"]) for r in runs] == [
        (f"proc{i}", "complete") for i in range(4)
    ]
    assert rows(path, "SELECT COUNT(*) AS n FROM versions WHERE status = 'ok'")[0]["n"] == 16
