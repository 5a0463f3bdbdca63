"""A sentinel API key never reaches a saved notebook (outputs and widget state) nor an
exported file. The notebooks run for real in a fresh kernel of this venv with the key in
the kernel's environment; the exports come from runs made with the key against the mock
server on 127.0.0.1. Logs, CLI output, errors, frames and the store: tests/test_secrets.py.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from arboris_nb import BookJob, LLMConfig, RetryPolicy, WriterSettings, editor, generate_versions
from arboris_nb.mockserver import MockServer
from arboris_nb.runs import export_run

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
# Random per session, so no saved file can hold it by accident.
SENTINEL = f"sk-SENTINEL-nb-{secrets.token_hex(12)}"
SENTINEL_2 = f"sk-SENTINEL-nb-{secrets.token_hex(12)}"
KERNEL = "arboris-secrets-venv"
FAST: dict[str, Any] = {"ttft_s": 0.01, "tokens_per_s": 2000.0, "output_tokens": 8}


def assert_no_key(path: Path) -> None:
    """Neither sentinel, nor its last 12 characters, anywhere in the file's bytes."""
    data = path.read_bytes()
    assert data, f"{path.name} is empty: nothing was searched"
    for key in (SENTINEL, SENTINEL_2):
        for piece in (key, key[-12:]):
            assert piece.encode() not in data, f"{piece!r} leaked into {path.name}"


def store_files(store: Path) -> list[Path]:
    """The SQLite store and its WAL/journal, whatever exists."""
    return [p for p in store.parent.glob(store.name + "*") if p.is_file()]


@pytest.fixture
def store(_private_run_store: Path) -> Path:
    """The run store file conftest gives this test (the kernels inherit it too)."""
    return _private_run_store


@pytest.fixture
def venv_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernelspec running this interpreter (not whatever ``python`` is on PATH)."""
    spec = tmp_path / "jupyter-path" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "arboris venv", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel), encoding="utf-8")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter-path"))
    return KERNEL


async def _execute(source: Path, target: Path, kernel: str, cwd: Path) -> None:
    book = nbformat.read(source, as_version=4)
    client = NotebookClient(
        book,
        kernel_name=kernel,
        timeout=120,
        store_widget_state=True,
        resources={"metadata": {"path": str(cwd)}},
    )
    await client.async_execute()
    nbformat.write(book, target)


async def test_saved_notebooks_hold_no_key(
    venv_kernel: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    store: Path,
) -> None:
    """Notebooks 01 and 02, executed with the key set, saved with widget state."""
    names = ["01_quickstart.ipynb", "02_editor_compare.ipynb"]
    # Any request the notebooks made with the key would land here, on 127.0.0.1.
    mock = MockServer(**FAST)
    with mock as base_url:
        monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
        monkeypatch.setenv("OPENAI_API_KEYS", f"{SENTINEL},{SENTINEL_2}")
        monkeypatch.setenv("OPENAI_API_BASE_URL", base_url)
        cwd = tmp_path / "cwd"  # no .env of the repo is read
        cwd.mkdir()
        saved = [tmp_path / name for name in names]
        await asyncio.gather(
            *(
                _execute(NOTEBOOKS / n, s, venv_kernel, cwd)
                for n, s in zip(names, saved, strict=True)
            )
        )
        stats = mock.stats(log=False)
    # The key in the environment does not switch the notebooks to an API: they stay offline.
    assert stats["requests"] == 0
    for path in saved:
        assert_no_key(path)
        state = nbformat.read(path, as_version=4).metadata.get("widgets", {})
        assert state["application/vnd.jupyter.widget-state+json"]["state"], path.name
    quickstart = saved[0].read_text(encoding="utf-8")
    # The kernel did see a key (so the search above means something), shown masked.
    assert "API configured: True" in quickstart
    assert "sk-…" in quickstart
    assert store_files(store), "the notebooks' runs were saved to the test's store"
    for path in store_files(store):
        assert_no_key(path)


async def test_exported_files_hold_no_key(tmp_path: Path, store: Path) -> None:
    """export_run (json, csv, md), editor.export_markdown and BookJob.export, from runs
    made with the key (one version failing, so error text is exported too)."""
    out = tmp_path / "out"
    mock = MockServer(require_key=SENTINEL, fail_requests={3: 500}, **FAST)
    with mock as base_url:
        config = LLMConfig(api_key=SENTINEL, base_url=base_url, model="m")
        run = await generate_versions(
            "Write chapter 1.",
            settings=WriterSettings(version_count=3),
            llm=config,
            chapter=1,
            retry=RetryPolicy(attempts=1),
        )
        job = BookJob(
            chapters=[1, 2],
            versions_per_chapter=2,
            prompts="Write chapter {chapter}.",
            llm=config,
            limit=2,
        )
        status = await job.run()
    # The key reached the server (require_key), so the runs are real.
    assert sorted(v.status for v in run.versions) == ["failed", "ok", "ok"]
    assert status["ok"] == 4

    out.mkdir()
    files = []
    for fmt in ("json", "csv", "md"):
        export_run(run.run_id, fmt, out / f"run.{fmt}")
        files.append(out / f"run.{fmt}")
    ok = next(v for v in run.versions if v.ok)
    files.append(editor.export_markdown(ok, out / "chosen.md", run=run))
    files += job.export(out / "book")
    assert len(files) == 8
    for path in files[:4]:
        assert run.run_id in path.read_text(encoding="utf-8")  # the run's own export
    assert "failed" in (out / "run.csv").read_text(encoding="utf-8")
    for path in [*files, *store_files(store)]:
        assert_no_key(path)
