"""BookJob on the in-process queue, against the real mock server over HTTP."""

from __future__ import annotations

import ast
import asyncio
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import arboris_nb.queue
from arboris_nb import BookProgress, LLMConfig, SimulatedLLM
from arboris_nb.errors import ConfigError, StateError
from arboris_nb.limits import FixedLimit
from arboris_nb.mockserver import MockServer
from arboris_nb.queue import BookJob, parse_chapters
from arboris_nb.queue.unit import llm_spec
from arboris_nb.retry import RetryPolicy
from arboris_nb.store import RunStore
from arboris_nb.widgets.book import format_seconds


def _paid(stats: dict[str, Any]) -> Counter[tuple[str, int]]:
    """Requests per (run, version), from the X-Arboris headers the mock logged."""
    return Counter((e["run"], int(e["version"])) for e in stats["log"])


async def _wait_for(predicate: Any, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_whole_book_under_one_limit() -> None:
    mock = MockServer(ttft_s=0.05, tokens_per_s=200, output_tokens=20)
    base_url = mock.start()
    try:
        job = BookJob(
            "novel",
            chapters=range(1, 4),
            versions_per_chapter=3,
            prompts={c: f"Write chapter {c}." for c in range(1, 4)},
            llm=LLMConfig(base_url=base_url),
            limit=2,
        )
        status = await job.run()
        stats = mock.stats()
    finally:
        mock.stop()
    assert status["ok"] == 9
    assert status["chapters_done"] == 3
    assert stats["max_in_flight"] == 2  # the limit was used, and never exceeded
    assert _paid(stats) == {(f"{job.job_id}-ch{c}", v): 1 for c in (1, 2, 3) for v in (1, 2, 3)}
    frame = job.frame()
    assert list(frame["status"]) == ["ok"] * 9
    assert (frame["chars"] > 0).all()
    # Each chapter is one store run holding its three versions.
    store = RunStore(job.records.store.path)
    record = store.get_run(f"{job.job_id}-ch2")
    assert record is not None
    assert (record.ok, record.status) == (3, "complete")
    store.close()


async def test_cancel_then_resume_requests_nothing_twice() -> None:
    mock = MockServer(ttft_s=0.05, tokens_per_s=50, output_tokens=15)
    base_url = mock.start()
    try:
        job = BookJob(
            "novel",
            chapters=[1, 2, 3],
            versions_per_chapter=3,
            prompts=lambda c: f"Write chapter {c}.",
            llm=LLMConfig(base_url=base_url),
            limit=2,
        )
        task = job.start()
        await _wait_for(lambda: job.status()["ok"] >= 3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        before = {
            (r.chapter, r.version): r.attempts for r in job.frame().itertuples() if r.status == "ok"
        }
        interrupted = job.status()
        assert 3 <= interrupted["ok"] < 9
        assert interrupted["running"] == 0  # in-flight units became cancelled

        again = BookJob.load(job.job_id, llm=LLMConfig(base_url=base_url))
        assert len(again.pending_units()) == 9 - len(before)
        status = await again.resume()
        stats = mock.stats()
    finally:
        mock.stop()
    assert status["ok"] == 9
    paid = _paid(stats)
    for (chapter, version), attempts in before.items():
        # Finished before the cancel: exactly its original attempts, nothing more.
        assert paid[(f"{job.job_id}-ch{chapter}", version)] == attempts
    assert stats["max_in_flight"] <= 2
    frame = again.frame()
    assert list(frame["status"]) == ["ok"] * 9
    # requests counts every attempt begun, cancelled ones included (one cancelled before
    # its request left the client is counted but never reached the server).
    for row in frame.itertuples():
        assert row.requests >= paid[(row.run_id, row.version)] >= 1
    # A third run finds nothing to do and asks the model for nothing.
    assert (await again.run())["requests"] == status["requests"]


async def test_a_failing_version_is_recorded_not_fatal() -> None:
    job = BookJob(
        chapters="1-2",
        versions_per_chapter=2,
        prompts="Chapter {chapter}",
        llm=SimulatedLLM(ttft_s=0.01, output_tokens=5, fail_versions=[2]),
        limit=3,
        retry=RetryPolicy(attempts=1),
    )
    assert job.status()["pending"] == 4  # planned, not run yet
    status = await job.run()
    assert (status["ok"], status["failed"], status["chapters_done"]) == (2, 2, 0)
    frame = job.frame()
    assert set(frame.loc[frame["version"] == 2, "error_type"]) == {"ServerError"}
    assert job.finished()


async def test_export_and_widget(tmp_path: Path) -> None:
    job = BookJob(
        "p",
        chapters=[1, 2],
        versions_per_chapter=2,
        prompts="Write chapter {chapter}",
        llm=SimulatedLLM(ttft_s=0.01, output_tokens=5),
        limit=2,
    )
    widget = BookProgress(job)
    assert "versions 0/4 ok" in widget.line.value
    assert "4 to do" in widget.line.value  # planned, nothing queued yet
    await job.run()
    assert "chapters 2/2" in widget.line.value
    assert widget.bar.value == widget.bar.max == 4
    paths = job.export(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in paths) == [
        "chapter-1/version-1.md",
        "chapter-1/version-2.md",
        "chapter-2/version-1.md",
        "chapter-2/version-2.md",
    ]
    redraws = widget.redraws
    widget.close()  # unsubscribes: a later run no longer draws it
    await BookJob.load(job.job_id).run()
    assert widget.redraws == redraws


def test_widget_escapes_and_throttles() -> None:
    job = BookJob(
        chapters=[1, 2], prompts="c{chapter}", llm=SimulatedLLM(), job_id="<b>x</b>", limit=3
    )
    widget = BookProgress(job, min_interval_s=60)
    assert "&lt;b&gt;x&lt;/b&gt;" in widget.line.value
    assert "0 running (limit 3) · 0 waiting for a slot · 6 to do" in widget.line.value
    status = {**job.status(), "elapsed_s": 75.2, "eta_s": 3700.0}
    widget.render(status)
    assert "elapsed 1:15" in widget.line.value and "ETA 1:01:40" in widget.line.value
    widget.poke()  # within the interval and no loop: no redraw
    assert widget.redraws == 2
    assert format_seconds(None) == "–"


def _shown(widget: BookProgress) -> tuple[int, int]:
    """(running, waiting) as the widget's line reads them."""
    found = re.search(r"(\d+) running \(limit \d+\) · (\d+) waiting for a slot", widget.line.value)
    assert found, widget.line.value
    return int(found[1]), int(found[2])


async def test_running_never_exceeds_the_limit() -> None:
    """Units waiting for a slot are shown waiting, not running (issue 11, item 6): with
    limit=3 the job runs 6 consumers, and "6 running" was shown."""
    job = BookJob(
        chapters=range(1, 7),
        versions_per_chapter=2,
        prompts="Chapter {chapter}",
        llm=SimulatedLLM(ttft_s=0.02, tokens_per_s=400, output_tokens=8),
        limit=3,
    )
    widget = BookProgress(job, min_interval_s=0)  # redraws on every change
    seen: list[tuple[dict[str, Any], tuple[int, int]]] = []
    job.subscribe(lambda now: seen.append((job.status(), _shown(widget))))
    status = await job.run()

    assert status["ok"] == 12 and status["limit"] == 3
    running = [s["running"] for s, _ in seen]
    assert max(running) == 3  # the limit was used, and never exceeded
    assert any(s["running"] == 3 and s["queued"] >= 3 for s, _ in seen)  # the rest wait
    assert all(shown == (s["running"], s["queued"]) for s, shown in seen)
    assert (status["running"], status["queued"]) == (0, 0)
    assert _shown(widget) == (0, 0)


async def test_a_retry_waits_without_counting_as_running() -> None:
    """A unit in its retry back-off holds no slot: it reads queued, then running again."""
    mock = MockServer(ttft_s=0.01, tokens_per_s=500, output_tokens=5, fail_requests={1: 503})
    base_url = mock.start()
    try:
        job = BookJob(
            chapters=[1],
            versions_per_chapter=1,
            prompts="Chapter {chapter}",
            llm=LLMConfig(base_url=base_url),
            limit=1,
            retry=RetryPolicy(attempts=2, base_delay_s=0.05, jitter=0),
        )
        seen: list[tuple[int, int]] = []

        def sample(now: bool) -> None:
            s = job.status()
            if not seen or seen[-1] != (s["running"], s["queued"]):
                seen.append((s["running"], s["queued"]))

        job.subscribe(sample)
        status = await job.run()
    finally:
        mock.stop()
    assert (status["ok"], status["requests"]) == (1, 2)
    # planned → queued → running (the 503) → waiting out the back-off → running → done
    assert seen == [(0, 0), (0, 1), (1, 0), (0, 1), (1, 0), (0, 0)]


def test_bad_input_is_refused_clearly() -> None:
    sim = SimulatedLLM()
    with pytest.raises(ConfigError, match="chapters"):
        parse_chapters("3-1")
    assert parse_chapters("1-3,5") == [1, 2, 3, 5]
    with pytest.raises(ConfigError, match="versions_per_chapter"):
        BookJob(chapters=[1], prompts="c{chapter}", versions_per_chapter=11, llm=sim)
    with pytest.raises(ConfigError, match="limit"):
        BookJob(chapters=[1], prompts="c{chapter}", limit=0, llm=sim)
    with pytest.raises(ConfigError, match="chapter"):
        BookJob(chapters=[1, 2], prompts={1: "one"}, llm=sim)
    with pytest.raises(ConfigError, match=r"\{chapter\}"):
        BookJob(chapters=[1], prompts="no placeholder", llm=sim)
    with pytest.raises(ConfigError, match="backend"):
        BookJob(chapters=[1], prompts="c{chapter}", llm=sim, backend="threads")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="limiter= is for"):
        BookJob(
            chapters=[1], prompts="c{chapter}", llm=sim, backend="celery", limiter=FixedLimit(2)
        )
    with pytest.raises(ConfigError, match="broker= is for"):
        BookJob(chapters=[1], prompts="c{chapter}", llm=sim, broker="redis://127.0.0.1:1/0")
    with pytest.raises(ConfigError, match="poll_s"):
        BookJob(chapters=[1], prompts="c{chapter}", llm=sim, backend="celery", poll_s=0)
    with pytest.raises(ConfigError, match="submit"):
        BookJob(chapters=[1], prompts="c{chapter}", llm=sim).submit()
    with pytest.raises(ConfigError, match="workers rebuild"):
        BookJob(
            chapters=[1],
            prompts="c{chapter}",
            llm=SimulatedLLM(reply=lambda r: "x"),
            backend="celery",
        )
    job = BookJob(chapters=[1], prompts="c{chapter}", llm=sim, job_id="dup")
    with pytest.raises(StateError, match="already exists"):
        BookJob(chapters=[1], prompts="c{chapter}", llm=sim, job_id=job.job_id)
    with pytest.raises(ConfigError, match="no book job"):
        BookJob.load("nope")


def test_the_key_is_never_stored() -> None:
    secret = "sk-test-0123456789abcdef"
    job = BookJob(
        chapters=[1],
        prompts="c{chapter}",
        llm=LLMConfig(api_key=secret, base_url="http://127.0.0.1:9/v1"),
    )
    spec = llm_spec(LLMConfig(api_key=secret))
    assert secret not in json.dumps(spec)
    assert spec["api_key_env"] == "OPENAI_API_KEY"
    raw = Path(job.records.store.path).read_bytes()
    assert secret.encode() not in raw


def test_cli_submit_status_resume_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from arboris_nb.cli import main

    argv = ["book", "submit", "--chapters", "1-2", "--versions", "2", "--limit", "2"]
    assert main([*argv, "--simulated", "--job-id", "cli-job"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cli-job\n") and "versions 4/4 ok" in out
    assert main(["book", "status", "cli-job", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["ok"], status["chapters_done"], status["requests"]) == (4, 2, 4)
    assert main(["book", "resume", "cli-job"]) == 0  # nothing left: no new request
    assert "4 requests" in capsys.readouterr().out
    assert main(["book", "export", "cli-job", "--out", str(tmp_path)]) == 0
    assert len(list(tmp_path.rglob("*.md"))) == 4
    assert main(["book", "status", "missing"]) == 2
    capsys.readouterr()
    assert main([*argv, "--simulated", "--job-id", "cli-job"]) == 1  # a state, not a config
    assert "arboris-nb: book job 'cli-job' already exists: resume it" in capsys.readouterr().err
    assert main([*argv, "--simulated", "--limit", "0"]) == 2


def test_the_queue_layer_imports_no_widget() -> None:
    """Views subscribe to the job; the job never reaches for a view (not even lazily)."""
    imports = []
    for path in Path(arboris_nb.queue.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                imports.append((path.name, "." * node.level + (node.module or "")))
            elif isinstance(node, ast.Import):
                imports += [(path.name, alias.name) for alias in node.names]
    assert len(imports) > 50  # the scan sees the package's imports
    assert [(f, m) for f, m in imports if "widgets" in m or "ipywidgets" in m] == []
