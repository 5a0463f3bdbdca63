"""Book units as Celery tasks on a Redis broker, for jobs spread over many workers.

``celery -A arboris_nb.queue.celery_app worker`` (or ``arboris-nb worker``) runs them.
Settings come from the environment of each process:

* ``ARBORIS_CELERY_BROKER`` (else ``ARBORIS_REDIS_URL``, else ``redis://127.0.0.1:6379/0``)
  — broker and result backend; ``ARBORIS_REDIS_URL`` (else the broker) — the global limit;
* ``ARBORIS_STORE`` — optional: a run store on the worker's machine that it also writes
  (``off`` for none); the submitter's store is filled from Redis (:mod:`.board`);
* ``ARBORIS_BOOK_TTL_S`` — how long a job's keys in Redis live after their last write;
* ``ARBORIS_LEASE_S`` — seconds a dead worker keeps a concurrency slot (default 30);
* ``ARBORIS_CELERY_VISIBILITY_S`` — seconds before a task taken by a worker that died is
  handed to another (default 7200: longer than any unit, or live units get a twin).

Delivery is at least once (``acks_late``, ``task_reject_on_worker_lost``): a task may run
again after a crash or a visibility timeout. Each run is idempotent: a per-unit claim (a
Redis lease of one) makes a twin wait for the first copy to end; then the unit is skipped
if Redis (or the worker's own store) already holds its result, so a version is never paid
for twice, whichever machine the task lands on. The result is written to Redis before the
task returns, hence before it is acknowledged.

A worker records unit states in Redis only (``queued`` once taken, then the result); its
slots of the global limit name the unit (:func:`.board.slot_holder`), which is how the
submitter tells *running* from *waiting for a slot*. Its own store, if any, receives only
what the engine writes there (run and version rows), never the book's tables.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping
from typing import Any

from celery import Celery

from ..results import Version
from ..store import RunStore, open_store
from .board import Board, env_seconds, set_cancelled, slot_holder
from .redis_limit import DEFAULT_LEASE_S, RedisLimit
from .unit import BookSpec, backend_from_spec, run_unit

__all__ = [
    "DEFAULT_BROKER",
    "TASK_NAME",
    "app",
    "broker_url",
    "cancel_job",
    "clear_cancel",
    "execute_unit",
    "generate_unit",
    "make_app",
    "redis_client",
    "redis_url",
    "submit_units",
]

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
TASK_NAME = "arboris_nb.book.unit"
_DEFAULT_VISIBILITY_S = 7200.0


def broker_url(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return (
        env.get("ARBORIS_CELERY_BROKER", "").strip()
        or env.get("ARBORIS_REDIS_URL", "").strip()
        or DEFAULT_BROKER
    )


def redis_url(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get("ARBORIS_REDIS_URL", "").strip() or broker_url(env)


def make_app(broker: str | None = None, env: Mapping[str, str] | None = None) -> Celery:
    """A Celery app on ``broker`` (default: :func:`broker_url`), configured for long,
    expensive, at-least-once tasks."""
    env = os.environ if env is None else env
    url = broker or broker_url(env)
    visibility = env_seconds("ARBORIS_CELERY_VISIBILITY_S", _DEFAULT_VISIBILITY_S, env)
    celery = Celery("arboris_nb", broker=url, backend=url)
    celery.conf.update(
        task_acks_late=True,  # a unit is acknowledged only once recorded
        task_reject_on_worker_lost=True,  # a killed pool process puts its task back
        worker_prefetch_multiplier=1,  # no worker hoards units another could run
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=7 * 24 * 3600,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": visibility,
            # Sweep for tasks of dead workers often enough to matter for this timeout.
            "unacked_restore_interval": max(1, min(10, int(visibility / 4))),
            "unacked_restore_throttle": 1,
        },
    )
    return celery


app = make_app()


def _lease_s() -> float:
    return env_seconds("ARBORIS_LEASE_S", DEFAULT_LEASE_S)


@app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True)
def generate_unit(self: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """One unit in a worker: the engine runs on a fresh loop in this pool process."""
    worker = f"{self.request.hostname or socket.gethostname()}/{os.getpid()}"
    return asyncio.run(execute_unit(payload, worker=worker))


async def execute_unit(payload: dict[str, Any], *, worker: str) -> dict[str, Any]:
    """Skip if cancelled or already done; else claim the unit, generate it and record
    the result in Redis (and in this worker's store, if it has one)."""
    import redis.asyncio

    spec = BookSpec.from_dict(payload["spec"])
    chapter, version = int(payload["chapter"]), int(payload["version"])
    submission = str(payload.get("submission", ""))
    store, owned = open_store(None)  # None with ARBORIS_STORE=off: Redis alone records
    client = redis.asyncio.Redis.from_url(redis_url())
    board = Board(client, spec.job_id)
    try:
        if await board.cancelled():
            await board.mark(chapter, version, "cancelled", worker=worker, submission=submission)
            return {"status": "cancelled", "requested": False}
        lease = _lease_s()
        claim = RedisLimit(
            client, 1, name=f"claim:{spec.job_id}:{chapter}:{version}", lease_s=lease
        )
        # A twin of this task (redelivered while the first still runs) waits here.
        async with claim.slot():
            done = await _done_status(board, store, spec, chapter, version, submission, worker)
            if done is not None:
                return {"status": done, "requested": False}
            # Taken, not yet running: it runs while it holds a slot of the global limit.
            await board.mark(chapter, version, "queued", worker=worker, submission=submission)
            limiter = RedisLimit(
                client,
                spec.limit,
                name=spec.limit_name,
                lease_s=lease,
                holder=slot_holder(spec.job_id, chapter, version),
            )
            result = await _generate(
                spec, chapter, version, board, store, limiter, worker, submission
            )
            await board.record(
                chapter,
                result,
                worker=worker,
                submission=submission,
                elapsed_s=result.finished_at or 0.0,
            )
        return {"status": result.status, "requested": True, "attempt_count": result.attempt_count}
    finally:
        await client.aclose()
        if owned and store is not None:
            store.close()


async def _generate(
    spec: BookSpec,
    chapter: int,
    version: int,
    board: Board,
    store: RunStore | None,
    limiter: RedisLimit,
    worker: str,
    submission: str,
) -> Version:
    try:
        return await run_unit(
            spec,
            chapter,
            version,
            llm=backend_from_spec(spec.llm),
            limiter=limiter,
            records=None,
            worker=worker,
            store=store,
        )
    except BaseException as exc:
        # Not left under way for ever: the submitter would wait on it.
        state = "failed" if isinstance(exc, Exception) else "cancelled"
        mark = board.mark(chapter, version, state, worker=worker, submission=submission)
        await asyncio.shield(mark)
        raise


async def _done_status(
    board: Board,
    store: RunStore | None,
    spec: BookSpec,
    chapter: int,
    version: int,
    submission: str,
    worker: str,
) -> str | None:
    """The unit's status if this delivery must not call the model: ok in Redis, failed
    for good in this submission, or ok in this worker's own store. None = generate."""
    found = await board.result(chapter, version)
    if found is not None and (found["status"] == "ok" or found["submission"] == submission):
        return str(found["status"])
    stored = [] if store is None else store.get_versions(spec.run_id(chapter))
    mine = next((v for v in stored if v.index == version and v.ok), None)
    if mine is None:
        return None
    # Done on this machine but not in Redis (its keys expired): publish it again.
    await board.record(chapter, mine, worker=worker, submission=submission, elapsed_s=0.0)
    return "ok"


def submit_units(
    spec: BookSpec,
    units: list[tuple[int, int]],
    broker: str | None = None,
    *,
    submission: str = "",
) -> list[str]:
    """Queue one task per unit; returns the task ids. The payload carries the chapter's
    prompt and the model's public spec — never a key — and the ``submission`` id, so a
    unit that failed for good is not retried by a redelivery of the same submission."""
    celery = app if broker is None else make_app(broker)
    ids = []
    with celery.connection_for_write() as conn:
        for chapter, version in units:
            payload = {
                "spec": spec.for_chapter(chapter).to_dict(),
                "chapter": chapter,
                "version": version,
                "submission": submission,
            }
            result = celery.send_task(TASK_NAME, args=[payload], connection=conn)
            ids.append(result.id)
    return ids


def redis_client(broker: str | None = None) -> Any:
    """A synchronous client on ``broker`` (default: :func:`redis_url`); close it after."""
    import redis

    return redis.Redis.from_url(redis_url() if broker is None else broker)


def cancel_job(job_id: str, broker: str | None = None) -> None:
    """Tell queued tasks of this job to skip (running units finish)."""
    client = redis_client(broker)
    try:
        set_cancelled(client, job_id, True)
    finally:
        client.close()


def clear_cancel(job_id: str, broker: str | None = None) -> None:
    """Undo :func:`cancel_job` before a resume."""
    client = redis_client(broker)
    try:
        set_cancelled(client, job_id, False)
    finally:
        client.close()
