"""Cancellation over real HTTP: handle.cancel(), a cancelled task, Ctrl-C in sync code and the CLI.

Each must stop every in-flight request within a second, close its connections (the mock's
``in_flight`` drops to 0), keep finished versions, mark the rest ``cancelled`` and leave no
task or socket behind (ResourceWarning is an error here).
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from arboris_nb import LLMConfig, Run, RunHandle, WriterSettings, generate_versions, start_versions
from arboris_nb.events import Event, RunStarted, TokenDelta
from arboris_nb.mockserver import MockServer

pytestmark = pytest.mark.filterwarnings("error::ResourceWarning")

# 6 tokens at 20/s: a version takes ~0.3 s; versions 3 and 4 start when 1 and 2 finish.
SHORT: dict[str, Any] = {"ttft_s": 0.05, "tokens_per_s": 20.0, "output_tokens": 6}
REPO = Path(__file__).resolve().parents[1]


async def wait_idle(server: MockServer, within_s: float = 1.0) -> float:
    """Seconds until the mock has nothing in flight; fails after ``within_s``."""
    start = time.monotonic()
    while server.stats(log=False)["in_flight"]:
        if time.monotonic() - start > within_s:
            raise AssertionError(f"in_flight still {server.stats(log=False)['in_flight']}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def other_tasks() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


class CancelWhen:
    """An on_event subscriber that calls ``action`` once versions 3 and 4 are streaming."""

    def __init__(self, action: Any) -> None:
        self.action = action
        self.streaming: set[int] = set()
        self.fired_at: float | None = None
        self.run: Run | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.run = event.run
        if isinstance(event, TokenDelta) and event.version.index >= 3:
            self.streaming.add(event.version.index)
            if self.streaming == {3, 4} and self.fired_at is None:
                self.fired_at = time.monotonic()
                self.action()


def statuses(run: Run) -> list[str]:
    return [v.status for v in run.versions]


async def test_handle_cancel_stops_in_flight_requests_and_keeps_finished() -> None:
    server = MockServer(**{**SHORT, "output_tokens": 40})
    with server as url:
        handles: list[RunHandle] = []
        trigger = CancelWhen(lambda: handles[0].cancel())
        handles.append(
            start_versions(
                "p",
                settings=WriterSettings(version_count=4, max_parallel_requests=2),
                llm=LLMConfig(base_url=url, model="m"),
                on_event=trigger,
            )
        )
        run = await handles[0]
        returned = time.monotonic()
        assert trigger.fired_at is not None
        assert returned - trigger.fired_at < 1.0
        await wait_idle(server)
        log = server.stats()["log"]
    assert run is handles[0].run
    assert statuses(run) == ["ok", "ok", "cancelled", "cancelled"]
    assert all(v.content for v in run.versions[:2])
    assert all(v.content is None for v in run.versions[2:])
    assert sorted(e["status"] for e in log) == [200, 200, 499, 499]  # client closed request
    assert other_tasks() == set()
    gc.collect()


async def test_cancelling_the_task_cancels_requests_and_reraises() -> None:
    server = MockServer(**{**SHORT, "output_tokens": 40})
    with server as url:
        tasks: list[asyncio.Task[Run]] = []
        trigger = CancelWhen(lambda: tasks[0].cancel())
        tasks.append(
            asyncio.ensure_future(
                generate_versions(
                    "p",
                    settings=WriterSettings(version_count=4, max_parallel_requests=2),
                    llm=LLMConfig(base_url=url, model="m"),
                    on_event=trigger,
                )
            )
        )
        with pytest.raises(asyncio.CancelledError):
            await tasks[0]
        assert trigger.fired_at is not None
        assert time.monotonic() - trigger.fired_at < 1.0
        await wait_idle(server)
    assert trigger.run is not None
    assert statuses(trigger.run) == ["ok", "ok", "cancelled", "cancelled"]
    assert other_tasks() == set()
    gc.collect()


# -- Ctrl-C in a real process -------------------------------------------------------------


def spawn(argv: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "OPENAI_API_KEY": "", "OPENAI_API_KEYS": ""}
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env
    )


def interrupt_after(proc: subprocess.Popen[str], marker: str, timeout_s: float = 20.0) -> str:
    """Read stderr until ``marker`` shows, then send SIGINT; returns what was read."""
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + timeout_s
    while marker not in seen:
        line = proc.stderr.readline()
        if not line or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"never saw {marker!r}; stderr so far:\n{seen}")
        seen += line
    proc.send_signal(signal.SIGINT)
    return seen


SYNC_SCRIPT = textwrap.dedent(
    """
    import sys
    from arboris_nb import LLMConfig, WriterSettings, generate_versions_sync
    from arboris_nb.events import RunStarted, VersionFinished
    runs = []
    def on_event(e):
        if isinstance(e, RunStarted):
            runs.append(e.run)
        if isinstance(e, VersionFinished):
            print(f"finished v{e.version.index}", file=sys.stderr, flush=True)
    try:
        generate_versions_sync(
            "p",
            settings=WriterSettings(version_count=3, max_parallel_requests=1),
            llm=LLMConfig(base_url=sys.argv[1], model="m"),
            on_event=on_event,
        )
    except KeyboardInterrupt:
        print("KeyboardInterrupt", [v.status for v in runs[0].versions], flush=True)
    """
)


async def test_ctrl_c_in_generate_versions_sync() -> None:
    # C=1: version 1 finishes, version 2 is streaming (or about to) when SIGINT comes.
    server = MockServer(**{**SHORT, "output_tokens": 8})
    with server as url:
        proc = spawn([sys.executable, "-c", SYNC_SCRIPT, url])
        interrupt_after(proc, "finished v1")
        out, err = proc.communicate(timeout=10)
        await wait_idle(server)
    assert proc.returncode == 0, err
    assert "KeyboardInterrupt ['ok', 'cancelled', 'cancelled']" in out


async def test_ctrl_c_in_the_cli_prints_finished_versions_and_exits_130() -> None:
    server = MockServer(**{**SHORT, "output_tokens": 8})
    with server as url:
        argv = [sys.executable, "-m", "arboris_nb", "generate", "--prompt", "p"]
        argv += ["--versions", "3", "--max-parallel", "1", "--base-url", url, "--model", "m"]
        proc = spawn(argv)
        interrupt_after(proc, "v1/3 done")
        out, err = proc.communicate(timeout=10)
        await wait_idle(server)
    assert proc.returncode == 130, err
    assert "--- version 1 (ok) ---" in out
    assert "--- version 2 (cancelled) ---" in out
    assert "interrupted" in err
