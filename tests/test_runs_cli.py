"""``arboris-nb runs`` as a user runs it: real subprocesses against a real store file."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def cli(*args: str, store: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "WRITER_"))}
    env["ARBORIS_STORE"] = str(store)
    return subprocess.run(
        [sys.executable, "-m", "arboris_nb", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding two complete runs, projects "saga" then "b" (shared: read-only)."""
    path = tmp_path_factory.mktemp("cli-store") / "runs.sqlite3"
    for project in ("saga", "b"):
        done = cli(
            "generate", "--prompt", "Write", "--versions", "3", "--simulated",
            "--project", project, "--chapter", "4", store=path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    return path


def run_ids(store: Path, *extra: str) -> list[str]:
    listed = cli("runs", "list", "--json", *extra, store=store)
    assert listed.returncode == 0, listed.stderr
    return [row["run_id"] for row in json.loads(listed.stdout)]


def test_list_json_has_the_columns(store: Path) -> None:
    listed = cli("runs", "list", "--json", store=store)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["project"] for r in rows] == ["b", "saga"]  # newest first
    assert set(rows[0]) >= {"run_id", "created_at", "status", "ok", "version_count", "model"}
    assert rows[0]["status"] == "complete"
    assert rows[0]["ok"] == 3
    assert rows[0]["chapter"] == 4


def test_list_filters_and_limits(store: Path) -> None:
    assert len(run_ids(store, "--project", "saga")) == 1
    assert len(run_ids(store, "--limit", "1")) == 1
    table = cli("runs", "list", store=store)
    assert "saga" in table.stdout
    assert "complete" in table.stdout


def test_list_refuses_a_bad_limit(store: Path) -> None:
    result = cli("runs", "list", "--limit", "0", store=store)
    assert result.returncode == 2
    assert "--limit must be a whole number of 1 or more" in result.stderr


def test_show_and_export(store: Path, tmp_path: Path) -> None:
    run_id = run_ids(store, "--project", "saga")[0]
    shown = cli("runs", "show", run_id, store=store)
    assert shown.returncode == 0, shown.stderr
    assert "--- version 3 (ok, 1 attempt(s)) ---" in shown.stdout
    assert f"run {run_id}" in shown.stdout

    full = json.loads(cli("runs", "show", run_id, "--json", store=store).stdout)
    assert full["run"]["project"] == "saga"
    assert [v["index"] for v in full["versions"]] == [1, 2, 3]

    out = tmp_path / "run.csv"
    exported = cli("runs", "export", run_id, "--format", "csv", "--out", str(out), store=store)
    assert exported.returncode == 0, exported.stderr
    table = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert [row["version"] for row in table] == ["1", "2", "3"]
    assert all(row["content"].startswith(f"Version {row['version']}.") for row in table)

    markdown = cli("runs", "export", run_id, "--format", "md", store=store).stdout
    assert markdown.startswith(f"# Run {run_id}")


def test_unknown_run_exits_2(store: Path) -> None:
    result = cli("runs", "show", "no-such-run", store=store)
    assert result.returncode == 2
    assert "no run 'no-such-run'" in result.stderr


def test_resume_from_the_shell(tmp_path: Path) -> None:
    import asyncio

    from arboris_nb import SimulatedLLM, WriterSettings, generate_versions

    path = tmp_path / "runs.sqlite3"
    run = asyncio.run(
        generate_versions(
            "p",
            settings=WriterSettings(3),
            llm=SimulatedLLM(fail_versions=[2], ttft_s=0.0, tokens_per_s=1e4),
            store=path,
        )
    )
    resumed = cli("runs", "resume", run.run_id, "--simulated", "--json", store=path)
    assert resumed.returncode == 0, resumed.stderr
    assert "versions to generate: [2]" in resumed.stderr
    merged = json.loads(resumed.stdout)
    assert [v["status"] for v in merged["versions"]] == ["ok", "ok", "ok"]
    assert merged["versions"][0]["content"] == run.versions[0].content
    again = cli("runs", "resume", run.run_id, "--simulated", store=path)
    assert "versions to generate: none" in again.stderr


def test_store_off_is_a_clear_error() -> None:
    result = cli("runs", "list", store=Path("off"))
    assert result.returncode == 2
    assert "ARBORIS_STORE=off" in result.stderr


def test_a_reader_that_leaves_early_is_not_an_error(store: Path) -> None:
    """`arboris-nb runs list | head -1`: the pipe closes before the listing is written;
    the command ends quietly (exit 0, no traceback) as Unix tools do."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "WRITER_"))}
    env["ARBORIS_STORE"] = str(store)
    proc = subprocess.Popen(
        [sys.executable, "-m", "arboris_nb", "runs", "list"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the child has written anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
