"""BookJob on Celery: real redis-server, real worker processes, the real mock server.

Two workers (2 pool processes each) share a global limit of 2; one is SIGKILLed mid-job
and a new one started. The job must complete with every version stored once, the mock
never seeing more than 2 requests at once, and no finished version paid for again —
with workers writing the notebook's store file, and with workers that cannot reach it
(``ARBORIS_STORE=off`` or a store of their own, as on other machines), whose results
reach the notebook's store through Redis only.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
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

import redis

from arboris_nb import BookProgress, LLMConfig, mask_key
from arboris_nb.mockserver import MockServer
from arboris_nb.queue import BookJob
from arboris_nb.queue.board import UnitReport, board_keys, read_units
from arboris_nb.queue.celery_app import execute_unit, make_app
from arboris_nb.queue.collector import with_slots
from arboris_nb.queue.redis_limit import live_holders
from arboris_nb.retry import RetryPolicy
from arboris_nb.store import RunStore

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

    def start(self, name: str, **env: str) -> None:
        log = (self.logs / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "arboris_nb", "worker", "--concurrency", "2",
             "--hostname", f"{name}@test", "--loglevel", "INFO"],
            env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
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


def _celery_job(base_url: str, redis_url: str, **options: Any) -> BookJob:
    """The tests' book: 3 chapters × 3 versions, global limit 2, the notebook's own key."""
    settings: dict[str, Any] = {"chapters": [1, 2, 3], "versions_per_chapter": 3, "limit": 2}
    settings.update(options)
    return BookJob(
        "novel",
        prompts="Write chapter {chapter}.",
        llm=LLMConfig(api_key=NOTEBOOK_KEY, base_url=base_url),
        backend="celery",
        broker=redis_url,
        **settings,
    )


def test_two_workers_one_killed_job_completes(redis_url: str, workers: Workers) -> None:
    app = make_app(redis_url)
    mock = MockServer(ttft_s=0.1, tokens_per_s=60, output_tokens=30)
    base_url = mock.start()
    try:
        workers.start("a")
        workers.start("b")
        _wait(_ping(app, ["a", "b"]), 30, "workers a and b to answer ping")
        job = _celery_job(base_url, redis_url)
        widget = BookProgress(job, min_interval_s=0)
        job.submit()
        seen: list[tuple[dict[str, Any], tuple[int, int]]] = []

        def a_is_busy() -> bool:
            job.collect()
            units = job.records.units(job.job_id)
            ok = sum(u["state"] == "ok" for u in units)
            busy = any(u["state"] == "running" and u["worker"].startswith("a@") for u in units)
            return ok >= 2 and busy

        def finished() -> bool:  # watching as a notebook does: the status and the widget
            widget.refresh()
            seen.append((job.status(), _shown(widget)))
            return job.finished()

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
        _wait(finished, 45, "the job to finish after worker a was killed")
        stats = mock.stats()
    finally:
        mock.stop()
        app.close()

    status = job.status()
    assert status["ok"] == 9, status
    # 4 pool processes (b and c) on a limit of 2: never more than 2 shown running, the
    # killed worker's unit included; the others wait for a slot.
    assert max(s["running"] for s, _ in seen) <= 2
    assert all(shown == (s["running"], s["queued"]) for s, shown in seen)
    assert _shown(widget) == (0, 0) and "versions 9/9 ok" in widget.line.value
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


# -- workers that cannot reach the notebook's store (other machines) ----------------------


def _board(redis_url: str, job_id: str) -> list[UnitReport]:
    """What the workers recorded in Redis, running read from the limit's leases (read
    directly: the job is not asked)."""
    client = redis.Redis.from_url(redis_url)
    try:
        return with_slots(read_units(client, job_id), job_id, set(live_holders(client, "default")))
    finally:
        client.close()


def _shown(widget: BookProgress) -> tuple[int, int]:
    """(running, waiting) as the widget's line reads them."""
    found = re.search(r"(\d+) running \(limit \d+\) · (\d+) waiting for a slot", widget.line.value)
    assert found, widget.line.value
    return int(found[1]), int(found[2])


def _on(unit: UnitReport, worker: str) -> bool:
    return (unit.worker or "").startswith(f"{worker}@")


def _redis_dump(redis_url: str) -> bytes:
    """Every key and value in the database (broker queues, results, job records)."""
    client = redis.Redis.from_url(redis_url)
    chunks: list[bytes] = []
    try:
        for key in client.scan_iter():
            kind = client.type(key)
            chunks.append(key)
            if kind == b"string":
                chunks.append(client.get(key) or b"")
            elif kind == b"hash":
                chunks += [k + b"=" + v for k, v in client.hgetall(key).items()]
            elif kind == b"list":
                chunks += client.lrange(key, 0, -1)
            elif kind == b"set":
                chunks += list(client.smembers(key))
            elif kind == b"zset":
                chunks += client.zrange(key, 0, -1)
    finally:
        client.close()
    return b"\n".join(chunks)


def _book_cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``arboris-nb book …`` in a fresh process, on the notebook's store and Redis."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ARBORIS_REDIS_URL": redis_url}
    return subprocess.run(
        [sys.executable, "-m", "arboris_nb", "book", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_workers_without_the_notebooks_store(
    redis_url: str, workers: Workers, tmp_path: Path
) -> None:
    """Worker a has no store, b a store of its own; a is SIGKILLed mid-job and c (no
    store) joins. Results reach the notebook's store through Redis alone, collected by
    ``arboris-nb book status`` run from the notebook's side."""
    app = make_app(redis_url)
    mock = MockServer(ttft_s=0.1, tokens_per_s=60, output_tokens=30)
    base_url = mock.start()
    b_store = tmp_path / "machine-b.sqlite3"
    ttl = {"ARBORIS_BOOK_TTL_S": "3600"}
    try:
        workers.start("a", ARBORIS_STORE="off", **ttl)
        workers.start("b", ARBORIS_STORE=str(b_store), **ttl)
        _wait(_ping(app, ["a", "b"]), 30, "workers a and b to answer ping")
        job = _celery_job(base_url, redis_url)
        job.submit()

        def a_is_busy() -> bool:
            units = _board(redis_url, job.job_id)
            ok = sum(u.state == "ok" for u in units)
            return ok >= 2 and any(u.state == "running" and _on(u, "a") for u in units)

        _wait(a_is_busy, 30, "two units ok and one running on worker a")
        workers.kill("a")
        units = _board(redis_url, job.job_id)
        killed = {(u.chapter, u.version) for u in units if u.state == "running" and _on(u, "a")}
        workers.start("c", ARBORIS_STORE="off", **ttl)

        def all_ok_in_redis() -> bool:
            return sum(u.state == "ok" for u in _board(redis_url, job.job_id)) == 9

        _wait(all_ok_in_redis, 45, "every unit ok in Redis after worker a was killed")
        stats = mock.stats()
        dump = _redis_dump(redis_url)
        client = redis.Redis.from_url(redis_url)
        ttls = {part: client.ttl(key) for part, key in board_keys(job.job_id).items()}
        client.close()
    finally:
        mock.stop()
        app.close()

    chapters = (1, 2, 3)
    # No worker could write the notebook's store: nothing is there until it collects.
    assert job.records.ok_units(job.job_id, chapters) == set()
    shown = _book_cli(redis_url, "status", job.job_id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["ok"] == 9
    stored = {c: job.records.store.get_versions(f"{job.job_id}-ch{c}") for c in chapters}
    for chapter, versions in stored.items():  # every version stored once, with its text
        assert [(v.index, v.status) for v in versions] == [(1, "ok"), (2, "ok"), (3, "ok")]
        assert all(v.content and v.key_id == mask_key(WORKER_KEY) for v in versions)
        record = job.records.store.get_run(f"{job.job_id}-ch{chapter}")
        assert record is not None and record.status == "complete"

    assert stats["max_in_flight"] <= 2
    paid = Counter((e["run"], int(e["version"])) for e in stats["log"])
    assert set(paid) == {(f"{job.job_id}-ch{c}", v) for c in chapters for v in (1, 2, 3)}
    for chapter, versions in stored.items():
        for v in versions:
            unit = (f"{job.job_id}-ch{chapter}", v.index)
            if (chapter, v.index) in killed:  # cut short by the kill, then done once more
                assert v.attempt_count <= paid[unit] <= v.attempt_count + 1, unit
            else:  # paid for exactly the attempts its result shows
                assert paid[unit] == v.attempt_count, unit

    frame = job.frame()
    assert list(frame["status"]) == ["ok"] * 9
    assert (frame["requests"] >= frame["attempts"]).all()
    finishers = {(r.chapter, r.version): r.worker for r in frame.itertuples()}
    assert killed and all(not finishers[unit].startswith("a@") for unit in killed)
    # b also kept what it generated in its own store; a and c had none.
    with RunStore(b_store) as b:
        on_b = {(c, v.index) for c in chapters for v in b.get_versions(f"{job.job_id}-ch{c}")}
    assert on_b == {unit for unit, worker in finishers.items() if worker.startswith("b@")}

    assert 0 < min(ttls[p] for p in ("units", "results", "requests")) <= 3600
    assert WORKER_KEY.encode() not in dump and NOTEBOOK_KEY.encode() not in dump
    exported = _book_cli(redis_url, "export", job.job_id, "--out", str(tmp_path / "book"))
    assert exported.returncode == 0, exported.stderr
    files = sorted((tmp_path / "book").rglob("*.md"))
    assert len(files) == 9
    assert files[0].read_text(encoding="utf-8") == stored[1][0].content


def test_run_collects_and_resume_redoes_only_the_failed_unit(
    redis_url: str, workers: Workers
) -> None:
    """``job.run()`` fills the notebook's store from Redis while a store-less worker
    works; a unit that failed for good is stored as failed, and a resume from a freshly
    loaded job requests it — and only it — again."""
    app = make_app(redis_url)
    mock = MockServer(ttft_s=0.05, tokens_per_s=200, output_tokens=10, fail_requests={1: 400})
    base_url = mock.start()
    try:
        workers.start("solo", ARBORIS_STORE="off")
        _wait(_ping(app, ["solo"]), 30, "the worker to answer ping")
        job = _celery_job(
            base_url,
            redis_url,
            chapters=[1, 2],
            versions_per_chapter=2,
            retry=RetryPolicy(attempts=1),
            poll_s=0.1,
        )
        first = asyncio.run(job.run())
        again = BookJob.load(job.job_id, broker=redis_url, poll_s=0.1)
        second = asyncio.run(again.resume())
        stats = mock.stats()
    finally:
        mock.stop()
        app.close()

    assert (first["ok"], first["failed"]) == (3, 1)
    assert (second["ok"], second["failed"]) == (4, 0)
    runs = Counter((e["run"], int(e["version"])) for e in stats["log"])
    failed_first = [(e["run"], int(e["version"])) for e in stats["log"] if e["status"] == 400]
    assert len(failed_first) == 1 and runs[failed_first[0]] == 2  # asked again on resume
    assert sum(runs.values()) == 5  # every other unit once
    frame = again.frame()
    assert list(frame["status"]) == ["ok"] * 4
    assert sorted(frame["requests"]) == [1, 1, 1, 2]
    assert (frame["chars"] > 0).all() and frame["worker"].str.startswith("solo@").all()
    for chapter in (1, 2):
        record = again.records.store.get_run(f"{job.job_id}-ch{chapter}")
        assert record is not None and record.status == "complete"


async def test_a_redelivered_unit_is_skipped_on_any_machine(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's task body, called directly as two machines would run it: a unit
    done on machine 1 is not requested again on machine 2 (no store); a unit that
    failed for good is not retried by a redelivery, only by a new submission."""
    mock = MockServer(ttft_s=0.01, tokens_per_s=500, output_tokens=5, fail_requests={2: 400})
    base_url = mock.start()
    try:
        job = _celery_job(
            base_url, redis_url, chapters=[1], versions_per_chapter=2, retry=RetryPolicy(attempts=1)
        )
        spec = job.spec.for_chapter(1).to_dict()

        def task(version: int, submission: str) -> dict[str, Any]:
            return {"spec": spec, "chapter": 1, "version": version, "submission": submission}

        monkeypatch.setenv("ARBORIS_REDIS_URL", redis_url)
        monkeypatch.setenv("OPENAI_API_KEY", WORKER_KEY)
        monkeypatch.setenv("ARBORIS_STORE", str(tmp_path / "machine-1.sqlite3"))
        done = await execute_unit(task(1, "s1"), worker="m1")
        monkeypatch.setenv("ARBORIS_STORE", "off")  # machine 2 has no store
        redelivered = await execute_unit(task(1, "s1"), worker="m2")
        failed = await execute_unit(task(2, "s1"), worker="m2")  # request 2 gets a 400
        failed_again = await execute_unit(task(2, "s1"), worker="m2")
        resumed = await execute_unit(task(2, "s2"), worker="m2")
        requests = mock.stats()["requests"]
    finally:
        mock.stop()

    assert (done["status"], done["requested"]) == ("ok", True)
    assert (redelivered["status"], redelivered["requested"]) == ("ok", False)
    assert (failed["status"], failed["requested"]) == ("failed", True)
    assert (failed_again["status"], failed_again["requested"]) == ("failed", False)
    assert (resumed["status"], resumed["requested"]) == ("ok", True)
    assert requests == 3
    with RunStore(tmp_path / "machine-1.sqlite3") as machine_1:
        assert [v.index for v in machine_1.get_versions(f"{job.job_id}-ch1")] == [1]
    assert job.records.ok_units(job.job_id, [1]) == set()  # the notebook's store: not yet
    assert job.collect() == 2
    assert job.collect() == 0  # collecting again writes nothing
    frame = job.frame()
    assert list(frame["status"]) == ["ok", "ok"]
    assert list(frame["requests"]) == [1, 2]
    assert list(frame["worker"]) == ["m1", "m2"]


async def test_running_and_waiting_come_from_the_leases(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three deliveries at once on a limit of 1 (as three pool processes would run them):
    Redis shows one unit running — the one holding the slot — and two waiting, in the
    job's status and in its widget; none is ever shown running without a slot."""
    mock = MockServer(ttft_s=0.05, tokens_per_s=40, output_tokens=12)
    base_url = mock.start()
    try:
        job = _celery_job(base_url, redis_url, chapters=[1], limit=1)
        monkeypatch.setenv("ARBORIS_REDIS_URL", redis_url)
        monkeypatch.setenv("OPENAI_API_KEY", WORKER_KEY)
        monkeypatch.setenv("ARBORIS_STORE", "off")  # the "workers" have no store
        widget = BookProgress(job, min_interval_s=0)
        spec = job.spec.for_chapter(1).to_dict()
        tasks = [
            asyncio.ensure_future(
                execute_unit({"spec": spec, "chapter": 1, "version": v}, worker=f"p{v}")
            )
            for v in (1, 2, 3)
        ]
        seen: list[tuple[int, int]] = []
        while not all(t.done() for t in tasks):
            await asyncio.to_thread(job.collect)
            widget.refresh()
            status = job.status()
            seen.append((status["running"], status["queued"]))
            assert _shown(widget) == seen[-1]
            await asyncio.sleep(0.05)
        results = await asyncio.gather(*tasks)
        stats = mock.stats()
    finally:
        mock.stop()
    assert [r["status"] for r in results] == ["ok"] * 3
    assert stats["max_in_flight"] == 1
    assert max(running for running, _ in seen) == 1
    assert (1, 2) in seen  # one holds the slot while two wait for it
    job.collect()
    assert (job.status()["ok"], job.status()["running"]) == (3, 0)
