"""BookJob on Celery: real redis-server, real worker processes, the real mock server.

Two workers (2 pool processes each) share a global limit of 2; one is SIGKILLed mid-job
and a new one started. The job must complete with every version stored once, the mock
never seeing more than 2 requests at once, and no finished version paid for again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("celery")

from arboris_nb import LLMConfig, mask_key
from arboris_nb.mockserver import MockServer
from arboris_nb.queue import BookJob
from arboris_nb.queue.celery_app import make_app

ROOT = Path(__file__).resolve().parent.parent
WORKER_KEY = "sk-worker-0123456789abcd"
NOTEBOOK_KEY = "sk-notebook-9876543210zyxw"


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Workers:
    """Worker processes, each in its own process group so a kill takes its pool too."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> None:
        log = (self.logs / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "arboris_nb", "worker", "--concurrency", "2",
             "--hostname", f"{name}@test", "--loglevel", "INFO"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        for name in list(self.procs):
            proc = self.procs.pop(name)
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture
def workers(redis_url: str, tmp_path: Path) -> Iterator[Workers]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ARBORIS_CELERY_BROKER": redis_url,
        "OPENAI_API_KEY": WORKER_KEY,  # workers use their own key, never the notebook's
        "ARBORIS_LEASE_S": "2",  # a dead worker's slot and claims come back in 2 s
        "ARBORIS_CELERY_VISIBILITY_S": "3",  # its tasks are redelivered after 3 s
    }
    group = Workers(env, tmp_path)
    try:
        yield group
    finally:
        group.stop_all()


def _ping(app: Any, names: list[str]) -> Callable[[], bool]:
    def ready() -> bool:
        replies = app.control.ping(timeout=0.5) or []
        answered = {host for reply in replies for host in reply}
        return all(f"{n}@test" in answered for n in names)

    return ready


def test_two_workers_one_killed_job_completes(redis_url: str, workers: Workers) -> None:
    app = make_app(redis_url)
    mock = MockServer(ttft_s=0.1, tokens_per_s=60, output_tokens=30)
    base_url = mock.start()
    try:
        workers.start("a")
        workers.start("b")
        _wait(_ping(app, ["a", "b"]), 30, "workers a and b to answer ping")
        job = BookJob(
            "novel",
            chapters=[1, 2, 3],
            versions_per_chapter=3,
            prompts="Write chapter {chapter}.",
            llm=LLMConfig(api_key=NOTEBOOK_KEY, base_url=base_url),
            limit=2,
            backend="celery",
            broker=redis_url,
        )
        job.submit()

        def a_is_busy() -> bool:
            units = job.records.units(job.job_id)
            ok = sum(u["state"] == "ok" for u in units)
            busy = any(u["state"] == "running" and u["worker"].startswith("a@") for u in units)
            return ok >= 2 and busy

        _wait(a_is_busy, 30, "two units ok and one running on worker a")
        workers.kill("a")
        units = job.records.units(job.job_id)
        killed = {
            (u["chapter"], u["version"])
            for u in units
            if u["state"] == "running" and u["worker"].startswith("a@")
        }
        before = {
            (r.run_id, r.version): r.attempts for r in job.frame().itertuples() if r.status == "ok"
        }
        workers.start("c")
        _wait(job.finished, 45, "the job to finish after worker a was killed")
        stats = mock.stats()
    finally:
        mock.stop()
        app.close()

    status = job.status()
    assert status["ok"] == 9, status
    assert stats["max_in_flight"] <= 2
    paid = Counter((e["run"], int(e["version"])) for e in stats["log"])
    assert set(paid) == {(f"{job.job_id}-ch{c}", v) for c in (1, 2, 3) for v in (1, 2, 3)}
    for unit, attempts in before.items():
        assert paid[unit] == attempts, unit  # finished before the kill: never paid again
    frame = job.frame()
    assert list(frame["status"]) == ["ok"] * 9
    assert frame["worker"].str.startswith(("a@", "b@", "c@")).all()
    # What a was running when it died was redelivered and finished by another worker.
    finishers = {(r.chapter, r.version): r.worker for r in frame.itertuples()}
    assert killed and all(not finishers[unit].startswith("a@") for unit in killed)
    for chapter in (1, 2, 3):  # every version stored once, in its chapter's run
        stored = job.records.store.get_versions(f"{job.job_id}-ch{chapter}")
        assert sorted(v.index for v in stored if v.ok) == [1, 2, 3]
    # Workers read the key from their own environment; the notebook's never left it.
    assert {e["key_id"] for e in stats["log"]} == {mask_key(WORKER_KEY)}
