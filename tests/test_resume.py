"""Reading runs back and resuming them — including after the process was killed."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from arboris_nb import (
    AllVersionsFailed,
    ChatRequest,
    SimulatedLLM,
    WriterSettings,
    generate_versions,
    start_versions,
)
from arboris_nb.editor import edit_version
from arboris_nb.events import Event, VersionFinished
from arboris_nb.prompts import parse_reply
from arboris_nb.runs import (
    RunNotFound,
    export_run,
    list_runs,
    load_run,
    missing_versions,
    resume,
)
from arboris_nb.store import RunStore


def reply(request: ChatRequest) -> str:
    """Version i: 40·i distinct words, so versions finish at clearly different times."""
    i = request.version_index
    return " ".join(f"v{i}w{k}" for k in range(40 * i))


def expected_content(index: int) -> str:
    return parse_reply(reply(ChatRequest(messages=[], version_index=index))).content


def ok_indices(path: Path) -> set[int]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT idx FROM versions WHERE status = 'ok'")}
    except sqlite3.OperationalError:  # the child has not created the schema yet
        return set()
    finally:
        conn.close()


@pytest.mark.looptime
async def test_load_run_rebuilds_the_run(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    run = await generate_versions(
        "p",
        settings=WriterSettings(3, max_parallel_requests=2),
        llm=SimulatedLLM(fail_versions=[3], reply=reply, tokens_per_s=100.0),
        project="saga",
        chapter=2,
        store=path,
    )
    loaded = load_run(run.run_id, store=path)
    assert (loaded.run_id, loaded.project, loaded.chapter, loaded.model) == (
        run.run_id,
        "saga",
        2,
        "simulated",
    )
    assert (loaded.parallel, loaded.max_parallel_requests) == (True, 2)
    assert loaded.elapsed_s == pytest.approx(run.elapsed_s)
    for original, back in zip(run.versions, loaded.versions, strict=True):
        assert back == original  # every field, the attempt log included
    assert loaded.summary() == pytest.approx(run.summary())


async def test_unknown_run_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RunNotFound, match="no run 'nope'"):
        load_run("nope", store=tmp_path / "runs.sqlite3")
    with pytest.raises(RunNotFound):
        await resume("nope", llm=SimulatedLLM(), store=tmp_path / "runs.sqlite3")


@pytest.mark.looptime
async def test_resume_generates_only_what_is_not_ok(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    first = await generate_versions(
        [{"role": "system", "content": "sys"}, {"role": "user", "content": "ch"}],
        settings=WriterSettings(4, max_parallel_requests=2),
        llm=SimulatedLLM(fail_versions=[2, 4], reply=reply, tokens_per_s=100.0),
        store=path,
    )
    before = load_run(first.run_id, store=path)
    assert missing_versions(first.run_id, store=path) == [2, 4]

    llm = SimulatedLLM(reply=reply, tokens_per_s=100.0)
    merged = await resume(first.run_id, llm=llm, store=path)

    assert sorted(c.version_index for c in llm.calls) == [2, 4]
    assert all(c.run_id == first.run_id for c in llm.calls)
    assert llm.calls[0].messages == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "ch"},
    ]
    assert [v.status for v in merged.versions] == ["ok"] * 4
    for i in (1, 3):  # untouched: same object fields as stored before the resume
        assert merged.versions[i - 1] == before.versions[i - 1]
    # Sessions add up: the resumed one lasted as long as its longest version, 4
    # (0.05 s to the first token + 159 more tokens at 100/s).
    assert merged.elapsed_s == pytest.approx(first.elapsed_s + 0.05 + 1.59, abs=1e-3)
    assert missing_versions(first.run_id, store=path) == []
    with RunStore(path) as store:
        (record,) = store.list_runs()
    assert (record.status, record.sessions, record.ok) == ("complete", 2, 4)
    assert record.elapsed_s == pytest.approx(merged.elapsed_s)


@pytest.mark.looptime
async def test_resume_keeps_an_edited_version_as_edited(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    first = await generate_versions(
        "ch",
        settings=WriterSettings(2),
        llm=SimulatedLLM(fail_versions=[2], reply=reply),
        store=path,
    )
    edit_version(first.versions[0], "The editor's text.", run=first, store=path)
    llm = SimulatedLLM(reply=reply)
    merged = await resume(first.run_id, llm=llm, store=path)
    assert [c.version_index for c in llm.calls] == [2]
    kept = merged.versions[0]
    assert (kept.content, kept.edited, kept.original_content) == (
        "The editor's text.",
        True,
        expected_content(1),
    )
    assert merged.versions[1].content == expected_content(2)


@pytest.mark.looptime
async def test_resume_of_a_complete_run_requests_nothing(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    run = await generate_versions("p", settings=WriterSettings(2), llm=SimulatedLLM(), store=path)
    llm = SimulatedLLM()
    merged = await resume(run.run_id, llm=llm, store=path)
    assert llm.calls == []
    assert [v.content for v in merged.versions] == [v.content for v in run.versions]


@pytest.mark.looptime
async def test_resume_keeps_mode_and_limit_and_can_still_fail(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    with pytest.raises(AllVersionsFailed):
        await generate_versions(
            "p",
            settings=WriterSettings(3, parallel=False),
            llm=SimulatedLLM(fail_versions=[1, 2, 3]),
            store=path,
        )
    with RunStore(path) as store:
        (record,) = store.list_runs()
    assert record.status == "failed"
    with pytest.raises(AllVersionsFailed) as caught:
        await resume(record.run_id, llm=SimulatedLLM(fail_versions=[1, 2, 3]), store=path)
    assert caught.value.run.parallel is False
    merged = await resume(record.run_id, llm=SimulatedLLM(), store=path)
    assert [v.status for v in merged.versions] == ["ok"] * 3
    assert merged.parallel is False


@pytest.mark.looptime
async def test_cancelled_versions_are_resumed(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"

    def cancel_after_first(event: Event) -> None:
        if isinstance(event, VersionFinished):
            handle.cancel()

    handle = start_versions(
        "p",
        settings=WriterSettings(3),
        llm=SimulatedLLM(reply=reply, tokens_per_s=100.0),
        on_event=cancel_after_first,
        store=path,
    )
    run = await handle
    assert [v.status for v in run.versions] == ["ok", "cancelled", "cancelled"]
    llm = SimulatedLLM(reply=reply, tokens_per_s=100.0)
    merged = await resume(run.run_id, llm=llm, store=path)
    assert sorted(c.version_index for c in llm.calls) == [2, 3]
    assert [v.content for v in merged.versions] == [expected_content(i) for i in (1, 2, 3)]


@pytest.mark.looptime
async def test_list_and_export(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    a = await generate_versions(
        "p", settings=WriterSettings(2), llm=SimulatedLLM(), project="a", store=path
    )
    b = await generate_versions(
        "p", settings=WriterSettings(2), llm=SimulatedLLM(fail_versions=[1]), project="b",
        store=path,
    )  # fmt: skip
    frame = list_runs(store=path)
    assert list(frame["run_id"]) == [b.run_id, a.run_id]  # newest first
    assert list(frame["status"]) == ["partial", "complete"]
    assert list(frame["ok"]) == [1, 2]
    assert list(list_runs(project="a", store=path)["run_id"]) == [a.run_id]
    assert len(list_runs(limit=1, store=path)) == 1

    document = json.loads(export_run(b.run_id, "json", store=path))
    assert document["run"]["run_id"] == b.run_id
    assert [v["status"] for v in document["versions"]] == ["failed", "ok"]
    assert len(document["versions"][0]["attempts"]) == 3

    out = tmp_path / "b.csv"
    text = export_run(b.run_id, "csv", out, store=path)
    assert out.read_text(encoding="utf-8") == text
    header = text.splitlines()[0]
    assert '"content"' in header
    assert '"cached"' in header

    markdown = export_run(a.run_id, "md", store=path)
    assert markdown.startswith(f"# Run {a.run_id}")
    assert a.versions[1].content in markdown
    with pytest.raises(Exception, match="format must be one of"):
        export_run(a.run_id, "xml", store=path)  # type: ignore[arg-type]


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from arboris_nb import SimulatedLLM, WriterSettings, generate_versions
    from arboris_nb.events import VersionFinished
    from tests.test_resume import reply

    def say(event):
        if isinstance(event, VersionFinished):
            print("finished", event.version.index, flush=True)

    asyncio.run(generate_versions(
        "a chapter worth paying for",
        settings=WriterSettings(5, max_parallel_requests=5),
        llm=SimulatedLLM(ttft_s=0.05, tokens_per_s=100.0, reply=reply),
        run_id="killed-run", store=sys.argv[1], on_event=say,
    ))
    print("completed", flush=True)
    """
)


def _run_and_kill(path: Path) -> set[int]:
    """Start a generation in a child, SIGKILL it after its first stored version.

    Returns the versions the child announced as finished before it died.
    """
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + 60
    try:
        while not ok_indices(path) and time.monotonic() < deadline:
            assert child.poll() is None, "the child ended before any version finished"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
        out, _ = child.communicate(timeout=10)
    finally:
        if child.poll() is None:  # pragma: no cover - only when an assertion fired
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    assert "completed" not in out
    return {int(line.split()[1]) for line in out.splitlines() if line.startswith("finished")}


async def test_kill_minus_9_loses_nothing_that_finished_and_resume_completes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.sqlite3"
    announced = _run_and_kill(path)

    stored = load_run("killed-run", store=path)
    ok = {v.index for v in stored.versions if v.ok}
    assert ok  # at least one version had finished
    assert announced <= ok  # everything the child saw finish is on disk
    assert len(ok) < 5  # and it really was killed mid-run
    for v in stored.versions:
        if v.ok:
            assert v.content == expected_content(v.index)  # content intact
        else:
            assert v.status == "queued"  # never finished: no row
    with RunStore(path) as store:
        interrupted = store.get_run("killed-run")
    assert interrupted is not None
    assert interrupted.status == "running"  # nobody was left to say otherwise

    llm = SimulatedLLM(ttft_s=0.01, tokens_per_s=5000.0, reply=reply)
    merged = await resume("killed-run", llm=llm, store=path)

    assert sorted(c.version_index for c in llm.calls) == sorted(set(range(1, 6)) - ok)
    assert [v.status for v in merged.versions] == ["ok"] * 5
    assert [v.content for v in merged.versions] == [expected_content(i) for i in range(1, 6)]
    for i in ok:  # the versions paid for before the kill are the stored ones, untouched
        assert merged.versions[i - 1] == stored.versions[i - 1]
    with RunStore(path) as store:
        record = store.get_run("killed-run")
    assert record is not None
    assert (record.status, record.sessions) == ("complete", 2)
